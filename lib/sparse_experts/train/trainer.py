"""The training loop: :class:`Trainer`, one run sharded over a mesh, or R copies side by side as one
vmapped program (:class:`Copies`).

Shape letters: B batch, L layers, Y classes, R copies. A batch is a dict with "image" float32
[B, height, width, channels] in [-1, 1] and "label" int32 [B] (what ``datasets.batch_at`` returns); for R
copies with their own data, [R, B, ...] and [R, B] (:func:`stack_batches`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from sparse_experts import parallel
from sparse_experts.routing import check_int, fail, router_entropy
from sparse_experts.train.checkpoints import Checkpoints
from sparse_experts.train.history import History, SweepResult
from sparse_experts.train.optim import (
    AUX_WEIGHTS,
    HYPERPARAMS,
    TrainConfig,
    cross_entropy,
    hyperparams,
    make_tx,
    schedule_multiplier,
)

P = jax.sharding.PartitionSpec
TIMING_METRICS = ("images_per_second",)  # per-step metrics that depend on the machine's speed
WATCHED = ("loss", "objective", "grad_norm")  # a non-finite value means the run (or copy) diverged
ATTENTION_METRICS = ("attn_max_logit", "attn_entropy")  # [L] per step with record_attention=True


class NonFiniteError(FloatingPointError):
    """The loss or the gradient became NaN or infinite."""


@dataclass(frozen=True)
class Copies:
    """R copies of a run trained side by side. Each field is None (every copy takes the
    :class:`TrainConfig`'s value, or the trainer's ``seed``) or a sequence of R values:

    - ``learning_rate``: peak learning rates (> 0), e.g. a learning-rate sweep;
    - ``weight_decay``: body weight decays (>= 0; the head follows unless ``head_weight_decay`` is set);
    - ``seed``: per-copy seeds of the router noise (give the models' initial weights and the data order
      per seed as well: a list of models, and per-copy batches).
    """

    learning_rate: Sequence[float] | None = None
    weight_decay: Sequence[float] | None = None
    seed: Sequence[int] | None = None

    def __post_init__(self) -> None:
        checks = {
            "learning_rate": (lambda v: _is_number(v) and math.isfinite(v) and v > 0, "finite numbers > 0"),
            "weight_decay": (lambda v: _is_number(v) and math.isfinite(v) and v >= 0, "finite numbers >= 0"),
            "seed": (lambda v: _is_int_at_least(v, 0), "non-negative integers"),
        }
        for name, (ok, valid) in checks.items():
            values = getattr(self, name)
            if values is None:
                continue
            if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
                fail(f"Copies.{name}", values, f"a sequence of {valid}")
            values = tuple(v.item() if isinstance(v, np.generic) else v for v in values)
            if not values or not all(ok(v) for v in values):
                fail(f"Copies.{name}", list(values), f"a non-empty sequence of {valid}")
            object.__setattr__(self, name, values)
        if len(set(self._sizes().values())) > 1:
            raise ValueError(
                f"Copies fields have different lengths {self._sizes()}; expected one value per copy each"
            )

    def _sizes(self) -> dict[str, int]:
        fields = ("learning_rate", "weight_decay", "seed")
        return {name: len(getattr(self, name)) for name in fields if getattr(self, name) is not None}

    def count(self, models: int | None = None) -> int:
        """R: the length of the given fields (and of the list of ``models``, when one is given)."""
        sizes = self._sizes() | ({} if models is None else {"models": models})
        if not sizes:
            raise ValueError("Copies() gives no per-copy values; pass learning_rate, weight_decay or seed "
                             "sequences, or a list of models")  # fmt: skip
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"the copies disagree on their number: {sizes}; expected one value per copy each"
            )
        return next(iter(sizes.values()))


def stack_batches(batches: Sequence[dict]) -> dict[str, np.ndarray]:
    """R batches (one per copy, e.g. ``datasets.batch_at`` with each copy's seed) -> one batch [R, B, ...]."""
    if not batches:
        raise ValueError("stack_batches: no batches given; expected one per copy")
    return {name: np.stack([b[name] for b in batches]) for name in ("image", "label")}


def _is_int_at_least(value: Any, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= minimum


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)


def _moe_summary(records: dict) -> dict[str, jax.Array]:
    """Per-step MoE metrics: each aux loss summed over layers, the dropped fraction and the router entropy
    (nats, per token) averaged over layers."""
    layers = list(records.values())
    if not layers:
        return {}
    out = {f"aux_{name}": sum(r["aux"][name] for r in layers) for name in AUX_WEIGHTS}
    out["dropped_fraction"] = sum(r["dropped_fraction"] for r in layers) / len(layers)
    out["router_entropy"] = sum(jnp.mean(router_entropy(r["gates"])) for r in layers) / len(layers)
    return out


def _step_functions(
    graphdef, params_treedef, config: TrainConfig, has_moe: bool, mesh, record_attention: bool
):
    """The plain (not yet jitted) train and eval steps of one copy. ``mesh``: the mesh of expert
    parallelism, or None."""
    shape = schedule_multiplier(config)
    tx = make_tx(config)

    def forward(pure_params, rest, images, *, train: bool, rng=None):
        model = nnx.merge(graphdef, jax.tree.unflatten(params_treedef, jax.tree.leaves(pure_params)), rest)
        stats = True if (record_attention and train) else ("moe" if has_moe else False)
        if not stats:
            return model(images, train=train), {}
        overrides = {"rng": rng} if (has_moe and rng is not None) else {}
        if has_moe and mesh is not None:
            overrides["mesh"] = mesh
        logits, records = model(images, train=train, return_stats=stats, moe_overrides=overrides or None)
        out = _moe_summary(records["moe"]) if has_moe else {}
        return logits, out | ({name: records[name] for name in ATTENTION_METRICS} if stats is True else {})

    def objective(pure_params, rest, batch, rng):
        logits, extra = forward(pure_params, rest, batch["image"], train=True, rng=rng)
        loss = cross_entropy(logits, batch["label"], config.label_smoothing)
        total = loss
        for name, weight in config.aux_weights.items():
            if weight and f"aux_{name}" in extra:
                total = total + weight * extra[f"aux_{name}"]
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return total, {"loss": loss, "objective": total, "accuracy": accuracy, **extra}

    def train_step(state, rest, batch, key_data):
        rng = jax.random.fold_in(jax.random.wrap_key_data(key_data), state["step"])
        grads, metrics = jax.grad(objective, has_aux=True)(state["params"], rest, batch, rng)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["learning_rate"] = state["opt_state"].hyperparams["learning_rate"] * shape(state["step"])
        return {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    def eval_step(pure_params, rest, batch):
        logits, moe = forward(pure_params, rest, batch["image"], train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        count = batch["label"].shape[0]
        sums = {"loss": jnp.sum(losses), "accuracy": jnp.sum(jnp.argmax(logits, -1) == batch["label"])}
        sums.update({name: value * count for name, value in moe.items()})
        return sums, logits

    return train_step, eval_step


@functools.cache
def _programs(graphdef, params_treedef, config, mesh, has_moe, state_shardings, record_attention=False):
    """The jitted train and eval steps of one run of an (architecture, training config, mesh, placement).
    Cached, so trainers of the same model and settings (e.g. several seeds) share one compiled program."""
    expert_mesh = mesh if dict(mesh.shape).get("expert", 1) > 1 else None
    train_step, eval_step = _step_functions(
        graphdef, params_treedef, config, has_moe, expert_mesh, record_attention
    )
    replicated = jax.sharding.NamedSharding(mesh, P())
    shardings = jax.tree.unflatten(*state_shardings)
    step = jax.jit(
        train_step,
        in_shardings=(shardings, None, None, None),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    return step, jax.jit(eval_step)


@functools.cache
def _copies_programs(graphdef, params_treedef, config, has_moe, record_attention):
    """The jitted train and eval steps of R copies: one copy's steps vmapped over the copies' parameters,
    optimiser states (hyper-parameters included) and keys, and over the batch when it is [R, B, ...].
    A copy whose loss, objective or gradient norm is non-finite keeps its state (frozen) from then on, its
    ``diverged_at`` is set to the step, and its later metrics are NaN."""
    train_step, eval_step = _step_functions(graphdef, params_treedef, config, has_moe, None, record_attention)

    def step(state, rest, batch, key_data):
        def one(params, opt_state, key, batch):
            new, metrics = train_step({"params": params, "opt_state": opt_state, "step": state["step"]},
                                      rest, batch, key)  # fmt: skip
            return new["params"], new["opt_state"], metrics

        batch_axis = 0 if batch["label"].ndim == 2 else None
        params, opt_state, metrics = jax.vmap(one, in_axes=(0, 0, 0, batch_axis))(
            state["params"], state["opt_state"], key_data, batch
        )
        live = state["diverged_at"] < 0
        finite = functools.reduce(jnp.logical_and, [jnp.isfinite(metrics[name]) for name in WATCHED])

        def where(mask, new, old):
            return jnp.where(mask.reshape(mask.shape + (1,) * (jnp.ndim(new) - 1)), new, old)

        keep = live & finite
        return {
            "params": jax.tree.map(functools.partial(where, keep), params, state["params"]),
            "opt_state": jax.tree.map(functools.partial(where, keep), opt_state, state["opt_state"]),
            "step": state["step"] + 1,
            "diverged_at": jnp.where(live & ~finite, state["step"], state["diverged_at"]),
        }, {name: where(live, value, jnp.nan) for name, value in metrics.items()}

    def evaluate(params, rest, batch):
        return jax.vmap(eval_step, in_axes=(0, None, 0 if batch["label"].ndim == 2 else None))(
            params, rest, batch
        )

    return jax.jit(step, donate_argnums=0), jax.jit(evaluate)


class Trainer:
    """Train a ViT or V-MoE functionally: jitted, sharded over a mesh, checkpointed, resumable; or R copies
    of it side by side as one vmapped program.

    The trainable state is a plain pytree ``{"params": nested dict of arrays, "opt_state": optax state,
    "step": int32 scalar}`` (orbax saves it as it is). The batch is split over the mesh's data axes;
    parameters are placed by the logical-axis rules (an MoE layer runs expert-parallel when the
    ``"expert"`` axis has more than one device). Programs are compiled once per (architecture, settings,
    mesh) and shared by trainers (e.g. seeds).

    Determinism: the batch of step t is ``batch_fn(t)`` (e.g. ``datasets.batch_at``); the router noise of
    step t is drawn from ``fold_in(key(seed), t)``, so the RNG state is (seed, step), both in the
    checkpoint, and a resumed run computes exactly what the uninterrupted run computes.

    Metrics per step: "loss" (cross-entropy), "objective" (loss + weighted aux losses, what is minimised),
    "accuracy", "grad_norm", "learning_rate", "images_per_second" and, with MoE layers, "aux_importance",
    "aux_load", "aux_switch", "aux_z_loss" (summed over layers), "dropped_fraction" and "router_entropy"
    (means over layers); with ``record_attention=True`` also "attn_max_logit" and "attn_entropy" [L].
    Evaluations report loss, accuracy and the MoE metrics at the model's evaluation capacity factor.

    R copies (``copies=Copies(...)``, and/or ``model`` a list of R models of one architecture: the copies'
    initial weights): every array gets a leading axis R, ``state["diverged_at"]`` [R] holds the step each
    copy diverged at (-1: not), metrics come as R values and ``fit`` returns a :class:`SweepResult`. A
    batch is shared ([B, ...]) or one per copy ([R, B, ...]). Copy r computes what a single run with its
    learning rate, weight decay, seed, initial weights and batches computes (to float rounding). Copies run
    replicated on the default mesh (``mesh`` and ``rules`` must be unset); ``fit`` leaves ``model`` as it
    was (``write_back(copy=r)``); non-parameter state (e.g. an MoE layer's noise key) is the first model's.

    ``trainable``: an nnx filter of the parameters that train (default every ``nnx.Param``); the others stay
    frozen (e.g. a backbone under adapters), passed to the step as constants and, with copies, shared by
    them (the first model's).
    """

    def __init__(
        self,
        model: nnx.Module | Sequence[nnx.Module],
        config: TrainConfig,
        *,
        seed: int = 0,
        mesh=None,
        rules=None,
        copies: Copies | None = None,
        record_attention: bool = False,
        trainable: Any = nnx.Param,
    ):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        check_int("seed", seed, 0)
        if copies is not None and not isinstance(copies, Copies):
            raise TypeError(f"copies must be a Copies or None, got {type(copies).__name__}")
        many = list(model) if isinstance(model, list | tuple) else None
        if many is not None and copies is None:
            copies = Copies()
        if copies is not None and jax.process_count() > 1:
            raise ValueError(f"copies={copies!r} with {jax.process_count()} processes: R copies run on one "
                             "process only; train one copy at a time across processes")  # fmt: skip
        if copies is not None and (mesh is not None or rules is not None):
            raise ValueError(
                f"mesh={mesh!r} and rules={rules!r} given with copies={copies!r}: R copies run on the "
                "default mesh, replicated (copies are not sharded); leave mesh and rules unset, or train one "
                "copy at a time"
            )
        self.copies, self.record_attention = copies, bool(record_attention)
        self.num_copies = None if copies is None else copies.count(None if many is None else len(many))
        self.model, self.config, self.seed = (many[0] if many else model), config, int(seed)
        self.mesh = parallel.make_mesh() if mesh is None else mesh
        self.trainable = trainable
        self.graphdef, params, self.rest = nnx.split(self.model, trainable, ...)
        if not jax.tree.leaves(params):
            raise ValueError(f"trainable={trainable!r} selects no parameter of the model; expected an nnx "
                             "filter of some of its nnx.Param variables (default: all of them)")  # fmt: skip
        self._params_treedef = jax.tree.structure(params)
        self.has_moe = getattr(getattr(self.model, "config", None), "moe", None) is not None
        self.tx = make_tx(config)
        replicated = jax.sharding.NamedSharding(self.mesh, P())
        self.rest = parallel.put(self.rest, replicated)
        if copies is None:
            rules = parallel.TP_RULES if rules is None else rules
            self._param_shardings = nnx.to_pure_dict(parallel.param_shardings(params, self.mesh, rules))
            self._key = parallel.put(jax.random.key_data(jax.random.key(self.seed)), replicated)
            self.state = self.initial_state(self.model)
            leaves, treedef = jax.tree.flatten(jax.tree.map(lambda x: x.sharding, self.state))
            placement = (treedef, tuple(leaves))
            self._step, self._eval = _programs(self.graphdef, self._params_treedef, config, self.mesh,
                                               self.has_moe, placement, self.record_attention)  # fmt: skip
            return
        R = self.num_copies
        for other in many or []:
            if nnx.split(other, trainable, ...)[0] != self.graphdef:
                raise ValueError("the models given as copies differ in architecture; expected R models built "
                                 "from one config (e.g. one per seed)")  # fmt: skip
        values = hyperparams(config) | {"seed": self.seed}
        names = ("learning_rate", "weight_decay", "seed")
        self.per_copy = {name: np.asarray(getattr(copies, name) or [values[name]] * R) for name in names}
        head = config.head_weight_decay  # None: the head's decay follows each copy's body decay
        self.per_copy["head_weight_decay"] = (
            self.per_copy["weight_decay"] if head is None else np.full(R, head)
        )
        keys = [jax.random.key_data(jax.random.key(int(s))) for s in self.per_copy["seed"]]
        self._key = jax.device_put(jnp.stack(keys), replicated)
        self.state = self.initial_state(many or self.model)
        self._step, self._eval = _copies_programs(
            self.graphdef, self._params_treedef, config, self.has_moe, self.record_attention
        )

    # -- state ---------------------------------------------------------------------------------------------
    def initial_state(self, model: nnx.Module | Sequence[nnx.Module]) -> dict:
        """``model``'s current parameters, a fresh optimizer state and step 0, placed on the mesh. With R
        copies: one model (every copy starts from its weights) or a list of R models, and "diverged_at"."""
        replicated = jax.sharding.NamedSharding(self.mesh, P())
        step = parallel.put(jnp.zeros((), jnp.int32), replicated)
        if self.copies is None:
            params = parallel.put(nnx.to_pure_dict(nnx.state(model, self.trainable)), self._param_shardings)
            devices = set(self.mesh.devices.flat)
            # moments follow the params; scalars (counts) are replicated on the mesh
            opt_state = jax.tree.map(
                lambda x: x if x.sharding.device_set == devices else parallel.put(x, replicated),
                jax.jit(self.tx.init)(params),
            )
            return {"params": params, "opt_state": opt_state, "step": step}
        R = self.num_copies
        models = model if isinstance(model, list | tuple) else [model] * R
        pure = [nnx.to_pure_dict(nnx.state(m, self.trainable)) for m in models]
        params = jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *pure), replicated)
        opt_state = jax.jit(jax.vmap(self.tx.init))(params)
        rates = {name: jnp.asarray(self.per_copy[name], jnp.float32) for name in HYPERPARAMS}
        opt_state = jax.device_put(opt_state._replace(hyperparams=rates), replicated)
        diverged_at = jax.device_put(jnp.full((R,), -1, jnp.int32), replicated)
        return {"params": params, "opt_state": opt_state, "step": step, "diverged_at": diverged_at}

    def _as_state(self, pure_params) -> nnx.State:
        return jax.tree.unflatten(self._params_treedef, jax.tree.leaves(pure_params))

    def write_back(self, copy: int | None = None) -> nnx.Module:
        """Copy the trained parameters into the model given at construction (and return it); with R copies,
        those of copy ``copy``."""
        params = self.state["params"]
        if self.copies is not None:
            if not (_is_int_at_least(copy, 0) and copy < self.num_copies):
                raise ValueError(
                    f"copy={copy!r}: with R={self.num_copies} copies, name one in [0, {self.num_copies})"
                )
            params = jax.tree.map(lambda x: x[copy], params)
        elif copy is not None:
            raise ValueError(f"copy={copy!r} given, but this trainer runs one copy; leave it unset")
        nnx.update(self.model, self._as_state(params))
        return self.model

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def history_type(self) -> type:
        """What :meth:`fit` returns: :class:`History`, or :class:`SweepResult` for R copies."""
        return History if self.copies is None else SweepResult

    def new_history(self) -> History | SweepResult:
        if self.copies is None:
            return History()
        return SweepResult(*(self.per_copy[name] for name in ("learning_rate", "weight_decay", "seed")))

    def _place(self, batch: dict) -> dict:
        batch = {"image": batch["image"], "label": batch["label"]}
        if self.copies is None:
            return parallel.shard_batch(batch, self.mesh)
        labels = np.shape(batch["label"])
        if not (len(labels) == 1 or (len(labels) == 2 and labels[0] == self.num_copies)):
            raise ValueError(f"batch['label'] has shape {labels}; expected [B] (shared by the copies) or "
                             f"[R={self.num_copies}, B] (one batch per copy)")  # fmt: skip
        return jax.device_put(batch, jax.sharding.NamedSharding(self.mesh, P()))

    # -- public ---------------------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict[str, Any]:
        """One step on ``batch`` (placed on the mesh here); returns the step's metrics as floats (lists of L
        floats for the attention statistics); with R copies, numpy arrays [R] (or [R, L])."""
        placed = self._place(batch)
        self.batch_size = int(placed["label"].shape[-1])  # global: with several processes, all their shares
        self.state, metrics = self._step(self.state, self.rest, placed, self._key)
        metrics = parallel.to_host(metrics)
        if self.copies is not None:
            return {k: np.asarray(v, np.float64) for k, v in metrics.items()}
        return {
            k: (float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64).tolist())
            for k, v in metrics.items()
        }

    def lowered_step(self, batch: dict) -> str:
        """The train step's program for ``batch``'s shapes as StableHLO text (lowered, not compiled): where
        to read the collectives it runs (the all_to_all of expert parallelism)."""
        return self._step.lower(self.state, self.rest, self._place(batch), self._key).as_text()

    def evaluate(self, batches: Iterable[dict], *, return_logits: bool = False):
        """Means over every example of ``batches`` (fixed order and batch size: with capacity and BPR a
        token's routing depends on the other images of its group): {"loss", "accuracy", "count", and the MoE
        metrics}, floats (numpy arrays [R] with R copies). With ``return_logits``: (metrics, logits
        [examples, Y], or [R, examples, Y])."""
        totals: dict[str, Any] = {}
        count, all_logits = 0, []
        for batch in batches:
            placed = self._place(batch)
            sums, logits = parallel.to_host(self._eval(self.state["params"], self.rest, placed))
            for name, value in sums.items():
                totals[name] = totals.get(name, 0.0) + np.asarray(value, np.float64)
            count += int(placed["label"].shape[-1])
            if return_logits:
                all_logits.append(np.asarray(logits))
        if count == 0:
            raise ValueError("evaluate: the batches are empty")
        scalar = self.copies is None
        metrics = {name: (float(v) if scalar else v) / count for name, v in totals.items()} | {"count": count}
        return (metrics, np.concatenate(all_logits, axis=-2)) if return_logits else metrics

    def fit(
        self,
        batch_fn: Callable[[int], dict],
        num_steps: int,
        *,
        checkpoint_dir: str | None = None,
        checkpoint_every: int | None = None,
        eval_fn: Callable[[], Iterable[dict]] | None = None,
        eval_every: int | None = None,
        progress: bool = True,
        description: str = "train",
        history: History | SweepResult | None = None,
    ) -> History | SweepResult:
        """Train until the state's step reaches ``num_steps``; return the :class:`History` (a
        :class:`SweepResult` with R copies).

        With ``checkpoint_dir``, a checkpoint (state and history) is written every ``checkpoint_every``
        steps and at the end, and a run finding checkpoints there resumes from the latest one. ``eval_fn()``
        gives evaluation batches, evaluated every ``eval_every`` steps and at the end.

        A non-finite loss, objective or gradient norm: with ``config.on_nonfinite="stop"``
        :class:`NonFiniteError` names the step, the quantity (and the copy), and nothing more is saved; with
        ``"record"`` the run (copy) is marked diverged: one run returns its history, a copy is frozen while
        the others go on (the run ends early once every copy has diverged).
        """

        check_int("num_steps", num_steps, 0)
        for name, value in (("checkpoint_every", checkpoint_every), ("eval_every", eval_every)):
            if value is not None:
                check_int(name, value)
        if checkpoint_every is not None and checkpoint_dir is None:
            raise ValueError(f"checkpoint_every={checkpoint_every} given without a checkpoint_dir")
        if eval_every is not None and eval_fn is None:
            raise ValueError(f"eval_every={eval_every} given without an eval_fn")
        manager = Checkpoints(checkpoint_dir) if checkpoint_dir is not None else None
        history = history or self.new_history()
        if manager is not None and manager.latest_step() is not None:
            self.state, history = manager.restore(self, manager.latest_step())
        start = self.step
        if start > num_steps:
            raise ValueError(f"the state is at step {start}, past num_steps={num_steps}")
        bar = tqdm(total=num_steps, initial=start, desc=description, disable=not progress, leave=False)
        started = time.perf_counter()

        def evaluate_now(step: int) -> None:
            if eval_fn is not None and not any(e["step"] == step for e in history.evals):
                history.evals.append({"step": step, **_plain(self.evaluate(eval_fn()))})

        try:
            for step in range(start, num_steps):
                batch = batch_fn(step)
                t0 = time.perf_counter()
                metrics = self.train_step(batch)
                seconds = time.perf_counter() - t0
                images = self.batch_size / seconds  # per copy; the global batch with several processes
                metrics["images_per_second"] = (
                    images if self.copies is None else np.full(self.num_copies, images)
                )
                history.step_seconds.append(seconds)
                history.metrics.append(_plain(metrics))
                if self._diverged(history, metrics, step, manager):
                    break
                done = step + 1
                if eval_every is not None and done % eval_every == 0:
                    evaluate_now(done)
                if manager is not None and checkpoint_every is not None and done % checkpoint_every == 0:
                    manager.save(self, history)
                bar.update(1)
                if step % 10 == 0 or done == num_steps:
                    bar.set_postfix(self._postfix(metrics, history))
            else:
                evaluate_now(num_steps)
                if manager is not None and manager.latest_step() != num_steps:
                    manager.save(self, history)
        finally:
            bar.close()
            history.seconds += time.perf_counter() - started
        if self.copies is None:
            self.write_back()
        return history

    def _diverged(self, history, metrics: dict, step: int, manager: Checkpoints | None) -> bool:
        """Record a non-finite watched metric (raising with on_nonfinite="stop"); True when the run ends."""
        stop = self.config.on_nonfinite == "stop"
        values = [metrics[k] for k in WATCHED]
        if all(np.isfinite(v).all() for v in values):
            return False
        last = manager.latest_step() if manager is not None else None
        kept = f"; the last good checkpoint is step {last} in {manager.directory}" if last else ""
        if self.copies is None:
            bad = [k for k in WATCHED if not math.isfinite(metrics[k])]
            history.diverged, history.diverged_at = True, step
            history.message = f"non-finite {bad[0]}={metrics[bad[0]]} at step {step}{kept}"
            if stop:
                raise NonFiniteError(history.message + " (on_nonfinite='stop')")
            return True
        for r in range(self.num_copies):
            bad = [k for k in WATCHED if not math.isfinite(metrics[k][r])]
            if history.diverged_at[r] is not None or not bad:
                continue
            lr, seed = self.per_copy["learning_rate"][r], self.per_copy["seed"][r]
            history.diverged_at[r] = step
            history.messages[r] = (f"copy {r} (learning_rate={lr:g}, seed={seed}): non-finite {bad[0]}="
                                   f"{metrics[bad[0]][r]} at step {step}{kept}")  # fmt: skip
            if stop:
                raise NonFiniteError(history.messages[r] + " (on_nonfinite='stop')")
        return all(at is not None for at in history.diverged_at)

    def _postfix(self, metrics: dict, history) -> dict[str, str]:
        if self.copies is None:
            postfix = {"loss": f"{metrics['loss']:.3f}", "acc": f"{metrics['accuracy']:.3f}"}
            if history.evals:
                postfix["val_acc"] = f"{history.evals[-1]['accuracy']:.3f}"
            return postfix | {"img_s": f"{metrics['images_per_second']:.0f}"}
        live = ~history.diverged()
        loss = float(np.mean(metrics["loss"][live])) if live.any() else float("nan")
        return {"live": f"{live.sum()}/{self.num_copies}", "mean_loss": f"{loss:.3f}"}


def _plain(metrics: dict) -> dict:
    """Numpy values -> lists (JSON, as histories and checkpoints hold them)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in metrics.items()}
