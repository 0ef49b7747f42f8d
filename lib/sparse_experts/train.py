"""Training: optax optimisers and schedules, jitted train and eval steps, a loop, a learning-rate sweep.

Shape letters: B batch, L layers, Y classes, R learning rates in a sweep. A batch is a dict with "image"
float32 [B, height, width, channels] in [-1, 1] and "label" int32 [B] (what ``datasets.batches`` yields).

- :class:`TrainConfig`: the optimiser (AdamW), schedule ("cosine" with linear warmup, "rsqrt" as in
  ViT-22B, or "constant"), weight decay (on matrices only, not on biases, norm scales or embeddings' 1-d
  leaves), global-norm clipping and what to do with a non-finite loss or gradient.
- :func:`train_step` / :func:`eval_step`: one ``nnx.jit``-compiled step each.
- :func:`train`: the loop over a batch iterator with a tqdm progress bar (terminal and notebook). A
  non-finite loss or gradient norm either stops the loop with :class:`NonFiniteError` naming the step and the
  quantity (``on_nonfinite="stop"``) or is recorded and the run marked diverged (``"record"``).
- :func:`lr_sweep`: R copies of one model trained side by side with R learning rates, vmapped so the step
  compiles once; per step it logs the loss and, per layer, the max attention logit and the attention entropy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

SCHEDULES = ("cosine", "rsqrt", "constant")
ON_NONFINITE = ("stop", "record")


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


def make_tx(config: TrainConfig) -> optax.GradientTransformation:
    """AdamW with the schedule and (optional) global-norm clipping first."""
    shape = schedule_multiplier(config)
    adamw = optax.adamw(
        lambda step: config.learning_rate * shape(step),
        b1=config.b1,
        b2=config.b2,
        weight_decay=config.weight_decay,
        mask=_decay_mask,
    )
    if config.grad_clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)


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

    def series(self, name: str) -> np.ndarray:
        return np.array([m[name] for m in self.metrics], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    naming the step and the quantity (the model keeps the update of that step: checkpointing, which keeps
    the last good state, comes with the training issue); ``"record"`` marks the history diverged and stops.
    """
    from tqdm.auto import tqdm

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
    from tqdm.auto import tqdm

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
