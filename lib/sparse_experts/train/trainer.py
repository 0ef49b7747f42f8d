"""Training: optax optimisers and schedules, jitted train and eval steps, a loop, a learning-rate sweep.

Shape letters: B batch, L layers, Y classes, R learning rates in a sweep. A batch is a dict with "image"
float32 [B, height, width, channels] in [-1, 1] and "label" int32 [B] (what ``datasets.batches`` yields).

- :class:`TrainConfig`: the optimiser (AdamW), schedule ("cosine" with linear warmup, "rsqrt" as in
  ViT-22B, or "constant"), weight decay (on matrices only, not on biases, norm scales or embeddings' 1-d
  leaves; ``head_weight_decay`` apart for the classifier head), global-norm clipping, the weights of the MoE
  auxiliary losses and what to do with a non-finite loss or gradient.
- :class:`Trainer` (what notebooks and the artifact cache use): functional jitted steps sharded over a mesh,
  compiled once per (architecture, settings, mesh) and shared by trainers (e.g. seeds); MoE aux losses in
  the objective; per-step and evaluation metrics; :class:`Checkpoints` (orbax) with exact resume; router
  noise of step t drawn from (seed, t).
- :func:`train_step` / :func:`eval_step`: one ``nnx.jit``-compiled step each (a model and nnx.Optimizer).
- :func:`train`: the simple loop over a batch iterator with a tqdm progress bar (terminal and notebook). A
  non-finite loss or gradient norm either stops the loop with :class:`NonFiniteError` naming the step and the
  quantity (``on_nonfinite="stop"``) or is recorded and the run marked diverged (``"record"``).
- :func:`lr_sweep`: R copies of one model trained side by side with R learning rates, vmapped so the step
  compiles once; per step it logs the loss and, per layer, the max attention logit and the attention entropy.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from sparse_experts import parallel
from sparse_experts.routing import router_entropy

P = jax.sharding.PartitionSpec
SCHEDULES = ("cosine", "rsqrt", "constant")
ON_NONFINITE = ("stop", "record")
AUX_WEIGHTS = {
    "importance": "importance_weight",
    "load": "load_weight",
    "switch": "switch_weight",
    "z_loss": "z_loss_weight",
}
"""MoE auxiliary loss (a key of the routing record's "aux") -> the TrainConfig field holding its weight."""
TIMING_METRICS = ("images_per_second",)
"""Per-step metrics that depend on the machine's speed (left out when comparing runs)."""


class NonFiniteError(FloatingPointError):
    """The loss or the gradient became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and loop settings. ``total_steps`` sets the length of the cosine decay."""

    learning_rate: float = 1e-3
    total_steps: int = 100
    warmup_steps: int = 10
    schedule: str = "cosine"
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    grad_clip_norm: float | None = 1.0
    label_smoothing: float = 0.0
    on_nonfinite: str = "stop"
    head_weight_decay: float | None = None
    importance_weight: float = 0.005
    load_weight: float = 0.005
    switch_weight: float = 0.0
    z_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(
                f"TrainConfig.{name}={getattr(self, name)!r} is not allowed; expected {allowed}"
            )

        if not (isinstance(self.learning_rate, int | float) and self.learning_rate > 0):
            raise bad("learning_rate", "a number > 0")
        if not (isinstance(self.total_steps, int) and self.total_steps >= 1):
            raise bad("total_steps", "an integer >= 1")
        if not (isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps <= self.total_steps):
            raise bad("warmup_steps", f"an integer in [0, total_steps={self.total_steps}]")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {SCHEDULES}")
        if self.weight_decay < 0:
            raise bad("weight_decay", "a number >= 0")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise bad("grad_clip_norm", "a number > 0 or None")
        if not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", "a number in [0, 1)")
        if self.on_nonfinite not in ON_NONFINITE:
            raise bad("on_nonfinite", f"one of {ON_NONFINITE}")
        if self.head_weight_decay is not None and not self.head_weight_decay >= 0:
            raise bad("head_weight_decay", "a number >= 0, or None for the body's weight_decay")
        for name in AUX_WEIGHTS.values():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise bad(name, "a number >= 0")

    @property
    def aux_weights(self) -> dict[str, float]:
        """MoE auxiliary loss name -> its weight in the objective (summed over MoE layers)."""
        return {aux: getattr(self, name) for aux, name in AUX_WEIGHTS.items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def schedule_multiplier(config: TrainConfig) -> optax.Schedule:
    """The schedule's shape, peaking at 1: linear warmup, then cosine to 0, 1/sqrt(step), or constant."""
    warmup = max(config.warmup_steps, 1)

    def fn(step):
        step = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum(1.0, (step + 1) / warmup) if config.warmup_steps else 1.0
        if config.schedule == "cosine":
            decay_steps = max(config.total_steps - config.warmup_steps, 1)
            progress = jnp.clip((step - config.warmup_steps) / decay_steps, 0.0, 1.0)
            after = 0.5 * (1 + jnp.cos(jnp.pi * progress))
        elif config.schedule == "rsqrt":
            after = jnp.sqrt(warmup / jnp.maximum(step + 1, warmup))
        else:
            after = 1.0
        return ramp * after

    return fn


def _decay_mask(params):
    """Weight decay on matrices and higher-rank kernels only."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def _is_head(path) -> bool:
    first = path[0] if path else None
    return getattr(first, "key", getattr(first, "name", None)) == "head"


def _body_decay_mask(params):
    return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim >= 2 and not _is_head(path), params)


def _head_decay_mask(params):
    return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim >= 2 and _is_head(path), params)


def make_tx(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping (optional), then AdamW: Adam moments, decoupled weight decay on matrices
    (``weight_decay`` for the body, ``head_weight_decay`` for the classifier head ``head``), and the learning
    rate times the schedule. The same update as ``optax.adamw`` when the two decays are equal."""
    shape = schedule_multiplier(config)
    head_decay = config.weight_decay if config.head_weight_decay is None else config.head_weight_decay
    parts = [] if config.grad_clip_norm is None else [optax.clip_by_global_norm(config.grad_clip_norm)]
    parts += [
        optax.scale_by_adam(b1=config.b1, b2=config.b2),
        optax.add_decayed_weights(config.weight_decay, mask=_body_decay_mask),
        optax.add_decayed_weights(head_decay, mask=_head_decay_mask),
        optax.scale_by_learning_rate(lambda step: config.learning_rate * shape(step)),
    ]
    return optax.chain(*parts)


def create_optimizer(model: nnx.Module, config: TrainConfig) -> nnx.Optimizer:
    return nnx.Optimizer(model, make_tx(config), wrt=nnx.Param)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy of logits [B, Y] against int labels [B]."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()


def _loss(model, batch, label_smoothing: float):
    logits = model(batch["image"], train=True)
    loss = cross_entropy(logits, batch["label"], label_smoothing)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, accuracy


@nnx.jit(static_argnames=("label_smoothing",))
def train_step(model, optimizer: nnx.Optimizer, batch: dict, label_smoothing: float = 0.0) -> dict:
    """One optimiser step; returns {"loss", "accuracy", "grad_norm"} as scalars (before the update)."""
    (loss, accuracy), grads = nnx.value_and_grad(_loss, has_aux=True)(model, batch, label_smoothing)
    optimizer.update(model, grads)
    return {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}


@nnx.jit
def eval_step(model, batch: dict) -> dict:
    """Sums over one batch: {"loss_sum", "correct", "count"} (sum, so batches of any size combine)."""
    logits = model(batch["image"], train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["label"])
    correct = jnp.sum(jnp.argmax(logits, -1) == batch["label"])
    return {"loss_sum": jnp.sum(losses), "correct": correct, "count": batch["label"].shape[0]}


def evaluate(model, batches: Iterable[dict]) -> dict[str, float]:
    """Mean loss and accuracy over every batch of an iterable (e.g. one pass over a test split)."""
    loss_sum = correct = count = 0.0
    for batch in batches:
        out = eval_step(model, batch)
        loss_sum += float(out["loss_sum"])
        correct += float(out["correct"])
        count += float(out["count"])
    if count == 0:
        raise ValueError("evaluate: the batches are empty")
    return {"loss": loss_sum / count, "accuracy": correct / count, "count": int(count)}


def _steps(batches: Iterable[dict], num_steps: int) -> Iterator[tuple[int, dict]]:
    """(step, batch) for ``num_steps`` steps; an iterator that runs out early is an error, not a short run."""
    iterator = iter(batches)
    for step in range(num_steps):
        try:
            yield step, next(iterator)
        except StopIteration:
            raise ValueError(f"the batch iterator ran out after {step} of {num_steps} steps") from None


@dataclass
class History:
    """What a training run did: per-step metrics (floats), timing, and whether and where it diverged."""

    metrics: list[dict[str, float]] = field(default_factory=list)
    diverged: bool = False
    diverged_at: int | None = None
    message: str = ""
    seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)

    def series(self, name: str) -> np.ndarray:
        return np.array([m[name] for m in self.metrics], dtype=np.float64)

    def eval_series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one evaluation metric, e.g. "accuracy"."""
        steps = np.array([e["step"] for e in self.evals], dtype=np.int64)
        return steps, np.array([e[name] for e in self.evals], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls(**{f: data[f] for f in cls.__dataclass_fields__ if f in data})


def train(
    model,
    optimizer: nnx.Optimizer,
    batches: Iterable[dict],
    num_steps: int,
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    description: str = "train",
    step_fn: Callable | None = None,
) -> History:
    """Run ``num_steps`` train steps over ``batches``; return the :class:`History`.

    On a non-finite loss or gradient norm: ``config.on_nonfinite="stop"`` raises :class:`NonFiniteError`
    naming the step and the quantity (the model keeps the update of that step; :class:`Trainer` checkpoints
    and keeps the last good state); ``"record"`` marks the history diverged and stops.
    """

    config = config or TrainConfig()
    if not (isinstance(num_steps, int) and num_steps >= 0):
        raise ValueError(f"num_steps={num_steps!r} must be a non-negative integer")
    step_fn = step_fn or train_step
    history = History()
    started = time.perf_counter()
    bar = tqdm(total=num_steps, desc=description, disable=not progress, leave=False)
    try:
        for step, batch in _steps(batches, num_steps):
            t0 = time.perf_counter()
            out = step_fn(model, optimizer, batch, config.label_smoothing)
            metrics = {k: float(v) for k, v in out.items()}
            history.step_seconds.append(time.perf_counter() - t0)
            history.metrics.append(metrics)
            bad = [k for k in ("loss", "grad_norm") if k in metrics and not math.isfinite(metrics[k])]
            if bad:
                history.diverged, history.diverged_at = True, step
                history.message = f"non-finite {bad[0]}={metrics[bad[0]]} at step {step}"
                if config.on_nonfinite == "stop":
                    raise NonFiniteError(history.message + " (on_nonfinite='stop')")
                break
            bar.update(1)
            if step % 10 == 0 or step == num_steps - 1:
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics.get('accuracy', 0):.3f}")
    finally:
        bar.close()
        history.seconds = time.perf_counter() - started
    return history


# ---------------------------------------------------------------------------------------------------------
# A learning-rate sweep that compiles once: R models, vmapped.
# ---------------------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """Per learning rate r and step t: loss[R, T], attention max logit and entropy [R, T, L]."""

    learning_rates: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    attn_max_logit: np.ndarray
    attn_entropy: np.ndarray
    seconds: float

    def diverged(self) -> np.ndarray:
        """[R] bool: the loss went non-finite at some step."""
        return ~np.all(np.isfinite(self.loss), axis=1)

    def final_loss(self, last: int = 10) -> np.ndarray:
        """[R] mean loss over the last ``last`` steps (inf where the run diverged)."""
        tail = self.loss[:, -last:].mean(axis=1)
        return np.where(self.diverged(), np.inf, tail)

    def lr_sensitivity(self, initial_loss: float, last: int = 10) -> float:
        """Wortsman et al. (2023): the mean over rates of min(final loss, initial loss) - best final loss.

        0 when every rate does as well as the best; a diverged rate counts as the initial loss. Lower means
        a wider range of learning rates trains well.
        """
        final = np.minimum(self.final_loss(last), initial_loss)
        return float(np.mean(final - final.min()))

    def max_logit(self) -> np.ndarray:
        """[R] the largest attention logit seen in any layer at any step (finite steps only)."""
        values = np.where(np.isfinite(self.attn_max_logit), self.attn_max_logit, -np.inf)
        return values.max(axis=(1, 2))


def lr_sweep(
    model: nnx.Module,
    learning_rates: Sequence[float],
    batches: Iterable[dict],
    num_steps: int,
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    description: str = "lr sweep",
) -> SweepResult:
    """Train R copies of ``model`` (same initial weights), one per learning rate, on the same batches.

    The update is AdamW written out (Adam moments from ``optax.scale_by_adam``, then
    ``-lr * schedule(step) * (update + weight_decay * param)``) so the learning rate is a vmapped input and
    the step compiles once for all R rates. Global-norm clipping applies per copy. The model must accept
    ``return_stats=True`` and return per-layer "attn_max_logit" [L] and "attn_entropy" [L].
    A copy whose loss goes non-finite keeps running (its numbers stay NaN): the sweep records divergence.
    """

    config = config or TrainConfig()
    rates = np.asarray(learning_rates, dtype=np.float32)
    if rates.ndim != 1 or len(rates) == 0 or not np.all(rates > 0):
        raise ValueError(f"learning_rates={list(learning_rates)!r} must be a non-empty list of numbers > 0")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    adam = optax.scale_by_adam(b1=config.b1, b2=config.b2)
    shape = schedule_multiplier(config)
    mask = _decay_mask(params)

    def loss_fn(p, batch):
        logits, stats = nnx.merge(graphdef, p, rest)(batch["image"], train=True, return_stats=True)
        loss = cross_entropy(logits, batch["label"], config.label_smoothing)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, (accuracy, stats["attn_max_logit"], stats["attn_entropy"])

    def one(p, opt_state, lr, step, batch):
        (loss, (acc, max_logit, entropy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, batch)
        if config.grad_clip_norm is not None:
            norm = optax.tree.norm(grads)
            scale = jnp.minimum(1.0, config.grad_clip_norm / (norm + 1e-12))
            grads = jax.tree.map(lambda g: g * scale, grads)
        updates, opt_state = adam.update(grads, opt_state, p)
        step_size = lr * shape(step)
        p = jax.tree.map(
            lambda w, u, m: w - step_size * (u + (config.weight_decay * w if m else 0.0)), p, updates, mask
        )
        return p, opt_state, (loss, acc, max_logit, entropy)

    @jax.jit
    def step_all(ps, opt_states, step, batch):
        return jax.vmap(one, in_axes=(0, 0, 0, None, None))(ps, opt_states, jnp.asarray(rates), step, batch)

    R = len(rates)
    ps = jax.tree.map(lambda x: jnp.broadcast_to(x, (R, *x.shape)), params)
    opt_states = jax.vmap(adam.init)(ps)
    logs = []
    started = time.perf_counter()
    bar = tqdm(total=num_steps, desc=description, disable=not progress, leave=False)
    try:
        for step, batch in _steps(batches, num_steps):
            ps, opt_states, out = step_all(ps, opt_states, step, batch)
            logs.append(out)  # stays on device: no sync per step, fetched once below
            bar.update(1)
    finally:
        bar.close()
    logs = jax.device_get(logs)
    loss, acc, max_logit, entropy = (np.stack([log[i] for log in logs], axis=1) for i in range(4))
    return SweepResult(
        learning_rates=rates.astype(np.float64),
        loss=loss,
        accuracy=acc,
        attn_max_logit=max_logit,
        attn_entropy=entropy,
        seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------------------------------------
# The trusted loop: functional, sharded, checkpointed, resumable (notebook 02 and the artifact cache).
# ---------------------------------------------------------------------------------------------------------
def _moe_summary(records: dict) -> dict[str, jax.Array]:
    """Per-step MoE metrics from the records of every MoE layer: each aux loss summed over layers, the mean
    fraction of dropped choices and the mean router entropy (nats, per token, averaged over layers)."""
    layers = list(records.values())
    if not layers:
        return {}
    out = {f"aux_{name}": sum(r["aux"][name] for r in layers) for name in AUX_WEIGHTS}
    out["dropped_fraction"] = sum(r["dropped_fraction"] for r in layers) / len(layers)
    out["router_entropy"] = sum(jnp.mean(router_entropy(r["gates"])) for r in layers) / len(layers)
    return out


def _is_int_at_least(value: Any, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= minimum


@functools.cache
def _programs(graphdef, params_treedef, config: TrainConfig, mesh, has_moe: bool, state_shardings):
    """The jitted train and eval steps of one (architecture, training config, mesh, placement). Cached, so
    trainers of the same model and settings (e.g. several seeds) share one compiled program."""
    expert_parallel = dict(mesh.shape).get("expert", 1) > 1
    shape = schedule_multiplier(config)
    tx = make_tx(config)

    def forward(pure_params, rest, images, *, train: bool, rng=None):
        model = nnx.merge(graphdef, jax.tree.unflatten(params_treedef, jax.tree.leaves(pure_params)), rest)
        if not has_moe:
            return model(images, train=train), {}
        overrides = {"rng": rng} if rng is not None else {}
        if expert_parallel:
            overrides["mesh"] = mesh
        logits, stats = model(images, train=train, return_stats="moe", moe_overrides=overrides or None)
        return logits, _moe_summary(stats["moe"])

    def objective(pure_params, rest, batch, rng):
        logits, moe = forward(pure_params, rest, batch["image"], train=True, rng=rng)
        loss = cross_entropy(logits, batch["label"], config.label_smoothing)
        total = loss
        for name, weight in config.aux_weights.items():
            if weight and f"aux_{name}" in moe:
                total = total + weight * moe[f"aux_{name}"]
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return total, {"loss": loss, "objective": total, "accuracy": accuracy, **moe}

    def train_step(state, rest, batch, key_data):
        rng = jax.random.fold_in(jax.random.wrap_key_data(key_data), state["step"])
        grads, metrics = jax.grad(objective, has_aux=True)(state["params"], rest, batch, rng)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["learning_rate"] = config.learning_rate * shape(state["step"])
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    def eval_step(pure_params, rest, batch):
        logits, moe = forward(pure_params, rest, batch["image"], train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        count = batch["label"].shape[0]
        sums = {"loss": jnp.sum(losses), "accuracy": jnp.sum(jnp.argmax(logits, -1) == batch["label"])}
        sums.update({name: value * count for name, value in moe.items()})
        return sums, logits

    replicated = jax.sharding.NamedSharding(mesh, P())
    shardings = jax.tree.unflatten(*state_shardings)
    step = jax.jit(
        train_step,
        in_shardings=(shardings, None, None, None),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    return step, jax.jit(eval_step)


class Trainer:
    """Train one ViT or V-MoE functionally: jitted, sharded over a mesh, checkpointed, resumable.

    The trainable state is a plain pytree ``{"params": nested dict of arrays, "opt_state": optax state,
    "step": int32 scalar}`` (orbax saves it as it is). The batch is split over the mesh's data axes
    (``parallel.shard_batch``); parameters are placed by the logical-axis rules (experts over ``"expert"``,
    and an MoE layer runs expert-parallel when that axis has more than one device).

    Determinism: the batch of step t is ``batch_fn(t)`` (a function of the seed and t, e.g.
    ``datasets.batch_at``); the router noise of step t is drawn from ``fold_in(key(seed), t)`` (and the
    layer index), so the RNG state is (seed, step), both in the checkpoint. A resumed run therefore computes
    exactly what the uninterrupted run computes.

    Metrics per step: "loss" (cross-entropy), "objective" (loss + weighted aux losses, what is minimised),
    "accuracy", "grad_norm", "learning_rate", "images_per_second" (wall clock, host side) and, for models
    with MoE layers, "aux_importance", "aux_load", "aux_switch", "aux_z_loss" (summed over layers),
    "dropped_fraction" and "router_entropy" (means over layers). Evaluations report the same quantities
    (loss, accuracy and the MoE ones) on the batches given, at the model's evaluation capacity factor.
    """

    def __init__(self, model: nnx.Module, config: TrainConfig, *, seed: int = 0, mesh=None, rules=None):

        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed={seed!r} must be a non-negative integer")
        self.model, self.config, self.seed = model, config, int(seed)
        self.mesh = parallel.make_mesh() if mesh is None else mesh
        rules = parallel.TP_RULES if rules is None else rules
        self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
        self._params_treedef = jax.tree.structure(params)
        self.has_moe = getattr(getattr(model, "config", None), "moe", None) is not None
        self.tx = make_tx(config)
        shardings = nnx.to_pure_dict(parallel.param_shardings(params, self.mesh, rules))
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.rest = jax.device_put(self.rest, replicated)
        self._param_shardings = shardings
        self._key = jax.device_put(jax.random.key_data(jax.random.key(self.seed)), replicated)
        self.state = self.initial_state(model)
        leaves, treedef = jax.tree.flatten(jax.tree.map(lambda x: x.sharding, self.state))
        self._state_shardings = (treedef, tuple(leaves))
        self._step, self._eval = _programs(
            self.graphdef, self._params_treedef, config, self.mesh, self.has_moe, self._state_shardings
        )

    # -- state ---------------------------------------------------------------------------------------------
    def initial_state(self, model: nnx.Module) -> dict:
        """``model``'s current parameters, a fresh optimizer state and step 0, placed on the mesh."""
        params = jax.device_put(nnx.to_pure_dict(nnx.state(model, nnx.Param)), self._param_shardings)
        replicated = jax.sharding.NamedSharding(self.mesh, P())
        devices = set(self.mesh.devices.flat)
        opt_state = jax.tree.map(  # moments follow the params; scalars (counts) are replicated on the mesh
            lambda x: x if x.sharding.device_set == devices else jax.device_put(x, replicated),
            jax.jit(self.tx.init)(params),
        )
        step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
        return {"params": params, "opt_state": opt_state, "step": step}

    def _as_state(self, pure_params) -> nnx.State:
        return jax.tree.unflatten(self._params_treedef, jax.tree.leaves(pure_params))

    def write_back(self) -> nnx.Module:
        """Copy the trained parameters into the model given at construction (and return it)."""
        nnx.update(self.model, self._as_state(self.state["params"]))
        return self.model

    @property
    def step(self) -> int:
        return int(self.state["step"])

    # -- public ---------------------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict[str, float]:
        """One step on ``batch`` (placed on the mesh here); returns the step's metrics as floats."""

        placed = parallel.shard_batch({"image": batch["image"], "label": batch["label"]}, self.mesh)
        self.state, metrics = self._step(self.state, self.rest, placed, self._key)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}

    def evaluate(self, batches: Iterable[dict], *, return_logits: bool = False):
        """Means over every example of ``batches`` (fixed order and batch size: with capacity and BPR a
        token's routing depends on the other images of its group): {"loss", "accuracy", "count", and the MoE
        metrics}. With ``return_logits``: (metrics, logits [examples, Y])."""

        totals: dict[str, float] = {}
        count, all_logits = 0, []
        for batch in batches:
            placed = parallel.shard_batch({"image": batch["image"], "label": batch["label"]}, self.mesh)
            sums, logits = jax.device_get(self._eval(self.state["params"], self.rest, placed))
            for name, value in sums.items():
                totals[name] = totals.get(name, 0.0) + float(value)
            count += int(batch["label"].shape[0])
            if return_logits:
                all_logits.append(np.asarray(logits))
        if count == 0:
            raise ValueError("evaluate: the batches are empty")
        metrics = {name: value / count for name, value in totals.items()} | {"count": count}
        return (metrics, np.concatenate(all_logits)) if return_logits else metrics

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
        history: History | None = None,
    ) -> History:
        """Train until the state's step reaches ``num_steps``; return the :class:`History`.

        ``batch_fn(step)`` gives the batch of a step. With ``checkpoint_dir``, an orbax checkpoint (state and
        history) is written every ``checkpoint_every`` steps and at the end, and a run finding checkpoints
        there resumes from the latest one (same final parameters and non-timing metrics as an uninterrupted
        run). ``eval_fn()`` gives evaluation batches, evaluated every ``eval_every`` steps and at the end.

        A non-finite loss, objective or gradient norm: with ``config.on_nonfinite="stop"``
        :class:`NonFiniteError` names the step and the quantity and nothing more is saved (the latest
        checkpoint is the last good state); with ``"record"`` the history is marked diverged and returned.
        """

        for name, value, minimum in [("num_steps", num_steps, 0), ("checkpoint_every", checkpoint_every, 1),
                                     ("eval_every", eval_every, 1)]:  # fmt: skip
            if value is not None and not _is_int_at_least(value, minimum):
                raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
        if checkpoint_every is not None and checkpoint_dir is None:
            raise ValueError(f"checkpoint_every={checkpoint_every} given without a checkpoint_dir")
        if eval_every is not None and eval_fn is None:
            raise ValueError(f"eval_every={eval_every} given without an eval_fn")
        manager = Checkpoints(checkpoint_dir) if checkpoint_dir is not None else None
        history = history or History()
        if manager is not None and manager.latest_step() is not None:
            self.state, history = manager.restore(self, manager.latest_step())
        start = self.step
        if start > num_steps:
            raise ValueError(f"the state is at step {start}, past num_steps={num_steps}")
        bar = tqdm(total=num_steps, initial=start, desc=description, disable=not progress, leave=False)
        started = time.perf_counter()

        def evaluate_now(step: int) -> None:
            if eval_fn is not None and not any(e["step"] == step for e in history.evals):
                history.evals.append({"step": step, **self.evaluate(eval_fn())})

        try:
            for step in range(start, num_steps):
                batch = batch_fn(step)
                t0 = time.perf_counter()
                metrics = self.train_step(batch)
                seconds = time.perf_counter() - t0
                metrics["images_per_second"] = len(batch["label"]) / seconds
                history.step_seconds.append(seconds)
                history.metrics.append(metrics)
                bad = [k for k in ("loss", "objective", "grad_norm") if not math.isfinite(metrics[k])]
                if bad:
                    history.diverged, history.diverged_at = True, step
                    last = manager.latest_step() if manager is not None else None
                    kept = f"; the last good checkpoint is step {last} in {checkpoint_dir}" if last else ""
                    history.message = f"non-finite {bad[0]}={metrics[bad[0]]} at step {step}{kept}"
                    if self.config.on_nonfinite == "stop":
                        raise NonFiniteError(history.message + " (on_nonfinite='stop')")
                    break
                done = step + 1
                if eval_every is not None and done % eval_every == 0:
                    evaluate_now(done)
                if manager is not None and checkpoint_every is not None and done % checkpoint_every == 0:
                    manager.save(self, history)
                bar.update(1)
                if step % 10 == 0 or done == num_steps:
                    postfix = {"loss": f"{metrics['loss']:.3f}", "acc": f"{metrics['accuracy']:.3f}"}
                    if history.evals:
                        postfix["val_acc"] = f"{history.evals[-1]['accuracy']:.3f}"
                    bar.set_postfix(postfix, img_s=f"{metrics['images_per_second']:.0f}")
            else:
                evaluate_now(num_steps)
                if manager is not None and manager.latest_step() != num_steps:
                    manager.save(self, history)
        finally:
            bar.close()
            history.seconds += time.perf_counter() - started
        self.write_back()
        return history


class Checkpoints:
    """Orbax checkpoints of a :class:`Trainer`'s state and its :class:`History`, one folder per step
    (``<directory>/<step>/``), the two latest kept. Saving is synchronous and atomic (orbax writes to a
    temporary folder and renames it), so an interrupted save never shows up as a step.

    Restoring places every array by the *restoring* trainer's shardings: a checkpoint written on 8 devices
    restores on 1, and the reverse.
    """

    def __init__(self, directory, max_to_keep: int = 2):

        self.directory = Path(directory).absolute()
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        self.manager.reload()
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        self.manager.reload()
        return list(self.manager.all_steps())

    def save(self, trainer: Trainer, history: History) -> None:
        ocp = self._ocp
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(trainer.state), history=ocp.args.JsonSave(history.to_dict())
        )
        self.manager.save(trainer.step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, trainer: Trainer, step: int) -> tuple[dict, History]:
        """The state at ``step`` placed like ``trainer.state``, and the history up to that step."""
        ocp = self._ocp
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), trainer.state
        )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore()),
        )
        history = History.from_dict(restored["history"])
        return restored["state"], history
