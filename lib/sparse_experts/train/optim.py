"""The optimiser: :class:`TrainConfig`, learning-rate schedules, :func:`make_tx` (AdamW) and the loss.

Shape letters: B batch, Y classes.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sparse_experts.routing import fail

SCHEDULES = ("cosine", "rsqrt", "constant")
ON_NONFINITE = ("stop", "record")
AUX_WEIGHTS = {aux: f"{aux}_weight" for aux in ("importance", "load", "switch", "z_loss")}
"""MoE auxiliary loss (a key of the routing record's "aux") -> the TrainConfig field holding its weight."""
HYPERPARAMS = ("learning_rate", "weight_decay", "head_weight_decay")
"""The optimiser's per-copy inputs (``opt_state.hyperparams``): the peak learning rate and both decays."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and loop settings: AdamW, the schedule ("cosine" with linear warmup, "rsqrt" as in ViT-22B,
    or "constant"; ``total_steps`` sets the length of the cosine decay), weight decay (on matrices only;
    ``head_weight_decay`` apart for the classifier head), global-norm clipping, the weights of the MoE
    auxiliary losses and what to do with a non-finite loss or gradient."""

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
        def bad(name: str, allowed: str) -> None:
            fail(f"TrainConfig.{name}", getattr(self, name), allowed)

        if not (isinstance(self.learning_rate, int | float) and self.learning_rate > 0):
            bad("learning_rate", "a number > 0")
        if not (isinstance(self.total_steps, int) and self.total_steps >= 1):
            bad("total_steps", "an integer >= 1")
        if not (isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps <= self.total_steps):
            bad("warmup_steps", f"an integer in [0, total_steps={self.total_steps}]")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"one of {SCHEDULES}")
        if self.weight_decay < 0:
            bad("weight_decay", "a number >= 0")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            bad("grad_clip_norm", "a number > 0 or None")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "a number in [0, 1)")
        if self.on_nonfinite not in ON_NONFINITE:
            bad("on_nonfinite", f"one of {ON_NONFINITE}")
        if self.head_weight_decay is not None and not self.head_weight_decay >= 0:
            bad("head_weight_decay", "a number >= 0, or None for the body's weight_decay")
        for name in AUX_WEIGHTS.values():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                bad(name, "a number >= 0")

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


def _decay_mask(params, *, head: bool):
    """Matrices (not biases, norm scales or other 1-d leaves) of the classifier ``head`` or of the body."""

    def is_head(path) -> bool:
        first = path[0] if path else None
        return getattr(first, "key", getattr(first, "name", None)) == "head"

    return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim >= 2 and is_head(path) == head, params)


def hyperparams(config: TrainConfig) -> dict[str, float]:
    """The values of :data:`HYPERPARAMS` for ``config`` (the head's decay is the body's when None)."""
    head = config.weight_decay if config.head_weight_decay is None else config.head_weight_decay
    return {
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "head_weight_decay": head,
    }


def make_tx(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping (optional), then AdamW: Adam moments, decoupled weight decay on matrices
    (``weight_decay`` for the body, ``head_weight_decay`` for the classifier head ``head``), and the learning
    rate times the schedule. The same update as ``optax.adamw`` when the two decays are equal.

    The peak learning rate and both decays are injected hyper-parameters (``optax.inject_hyperparams``):
    they live in ``opt_state.hyperparams`` (float32 scalars, or [R] for R vmapped copies) and may be set
    there, so R copies of a run each have their own (a sweep compiles once) while a single run computes
    exactly what a fixed-rate AdamW computes.
    """
    shape = schedule_multiplier(config)

    def adamw(learning_rate, weight_decay, head_weight_decay):
        parts = [] if config.grad_clip_norm is None else [optax.clip_by_global_norm(config.grad_clip_norm)]
        parts += [
            optax.scale_by_adam(b1=config.b1, b2=config.b2),
            optax.add_decayed_weights(weight_decay, mask=functools.partial(_decay_mask, head=False)),
            optax.add_decayed_weights(head_weight_decay, mask=functools.partial(_decay_mask, head=True)),
            optax.scale_by_learning_rate(lambda step: learning_rate * shape(step)),
        ]
        return optax.chain(*parts)

    return optax.inject_hyperparams(adamw)(**hyperparams(config))


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy of logits [B, Y] against int labels [B]."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
