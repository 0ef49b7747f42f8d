"""Fine-tuning a pre-trained ViT on a small downstream task: a fresh head, every weight trained, a small
sweep run as one vmapped program, the copy chosen on the validation split.

The pre-trained model keeps its backbone (patch embedding, blocks, pooling); its head is replaced by a
zero-initialised one over the task's classes, so every copy starts from the same function of the image
(uniform predictions). Copy r of the sweep trains with learning rate ``learning_rates[r]`` and data seed
``seeds[r]``: batch t of copy r is drawn with ``np.random.default_rng([seeds[r], t])`` from the task's
training examples (with replacement), so a copy computes what a run of its own would. Each copy is then
evaluated on the named evaluation sets (the validation split first, for choosing).

Shapes: R copies, N examples of a set, S image side, Ch channels, Y the task's classes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from sparse_experts import models, train
from sparse_experts.routing import check_int


@dataclass(frozen=True)
class LabelledSet:
    """``images`` float32 [N, S, S, Ch] (the model's input scale), ``labels`` int [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or len(self.images) != len(self.labels) or len(self.labels) < 1:
            raise ValueError(
                f"LabelledSet: images {self.images.shape} and labels {np.shape(self.labels)} must be "
                "[N, S, S, Ch] and [N] with the same N >= 1"
            )


@dataclass(frozen=True)
class Sweep:
    """What a fine-tuning sweep produced: per copy its learning rate, data seed, and on every evaluation
    set its accuracy and mean negative log-likelihood, and ``probs[name]`` float32 [R, N, Y] (softmax of
    each copy); ``seconds`` of wall time for the whole sweep (compiles included)."""

    learning_rates: tuple[float, ...]
    seeds: tuple[int, ...]
    accuracy: dict[str, tuple[float, ...]]
    nll: dict[str, tuple[float, ...]]
    probs: dict[str, np.ndarray]
    seconds: float

    def best(self, on: str = "validation") -> int:
        """The copy with the highest accuracy on set ``on``; ties to the lower NLL there, then the lower
        index."""
        if on not in self.accuracy:
            raise ValueError(f"on={on!r} is not an evaluation set of this sweep; sets: {list(self.accuracy)}")
        acc, nll = self.accuracy[on], self.nll[on]
        return min(range(len(acc)), key=lambda r: (-acc[r], nll[r], r))


def with_new_head(model: models.ViT, num_classes: int, *, seed: int = 0) -> models.ViT:
    """A copy of ``model`` whose head is a fresh zero-initialised classifier over ``num_classes``: every
    other parameter is ``model``'s (the model itself is not changed)."""
    check_int("num_classes", num_classes)
    config = model.config.replace(num_classes=num_classes, head_zero_init=True)
    return models.transplant(model, config, seed=seed)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def fine_tune(
    model: models.ViT,
    train_set: LabelledSet,
    eval_sets: Mapping[str, LabelledSet],
    *,
    num_classes: int,
    learning_rates: Sequence[float],
    seeds: Sequence[int] | None = None,
    steps: int,
    batch_size: int,
    warmup_steps: int = 0,
    weight_decay: float = 1e-4,
    eval_batch_size: int = 500,
    progress: bool = False,
    description: str = "fine-tune",
) -> Sweep:
    """Fine-tune ``model`` (pre-trained; not changed) on ``train_set`` with R = len(learning_rates) copies
    side by side (``seeds``: one data seed per copy, default all 0), AdamW with linear warmup and cosine
    decay for ``steps`` steps of ``batch_size`` examples; evaluate every copy on each of ``eval_sets``.
    Raises ValueError before any work when labels fall outside ``num_classes`` or sizes disagree."""
    (sweep,) = fine_tune_many(
        [model], train_set, eval_sets, num_classes=num_classes, learning_rates=learning_rates, seeds=seeds,
        steps=steps, batch_size=batch_size, warmup_steps=warmup_steps, weight_decay=weight_decay,
        eval_batch_size=eval_batch_size, progress=progress, description=description,
    )  # fmt: skip
    return sweep


def fine_tune_many(
    pretrained: Sequence[models.ViT],
    train_set: LabelledSet,
    eval_sets: Mapping[str, LabelledSet],
    *,
    num_classes: int,
    learning_rates: Sequence[float],
    seeds: Sequence[int] | None = None,
    steps: int,
    batch_size: int,
    warmup_steps: int = 0,
    weight_decay: float = 1e-4,
    eval_batch_size: int = 500,
    progress: bool = False,
    description: str = "fine-tune",
) -> list[Sweep]:
    """:func:`fine_tune` of M pre-trained models of one architecture (heads aside) at once: M x R copies in
    one vmapped program, copy (m, r) computing what model m's copy r computes alone (to float rounding).
    Returns one :class:`Sweep` per model; each one's ``seconds`` is its share (1/M) of the program's wall
    time."""
    rates = [float(r) for r in learning_rates]
    if not rates:
        raise ValueError("learning_rates is empty; give at least one learning rate")
    seeds = [0] * len(rates) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(rates):
        raise ValueError(f"seeds has {len(seeds)} values and learning_rates {len(rates)}: one seed per copy")
    if not pretrained:
        raise ValueError("pretrained is empty; give at least one model")
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    check_int("eval_batch_size", eval_batch_size)
    for name, data in {"train_set": train_set, **eval_sets}.items():
        labels = np.asarray(data.labels)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"{name} has labels in [{labels.min()}, {labels.max()}]; "
                f"expected [0, num_classes={num_classes})"
            )
    group = pretrained[0].config.moe.group_size if pretrained[0].config.moe is not None else 1
    for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if value % group:
            raise ValueError(f"{name}={value} is not a multiple of the model's routing group_size={group}")
    started = time.perf_counter()
    nets = [with_new_head(m, num_classes) for m in pretrained]
    config = train.TrainConfig(
        learning_rate=rates[0], total_steps=steps, warmup_steps=warmup_steps, weight_decay=weight_decay
    )
    R, M = len(rates), len(nets)
    copies = train.Copies(learning_rate=rates * M, seed=seeds * M)
    trainer = train.Trainer([net for net in nets for _ in range(R)], copies=copies, config=config)
    images, labels = np.asarray(train_set.images, np.float32), np.asarray(train_set.labels, np.int32)

    def batch_fn(step: int) -> dict:
        picks = [np.random.default_rng([s, step]).integers(0, len(labels), batch_size) for s in seeds] * M
        return {"image": np.stack([images[i] for i in picks]), "label": np.stack([labels[i] for i in picks])}

    trainer.fit(batch_fn, steps, progress=progress, description=description)
    accuracy, nll, probs = {}, {}, {}
    for name, data in eval_sets.items():
        x, y = np.asarray(data.images, np.float32), np.asarray(data.labels, np.int32)
        n = len(y)
        size = min(eval_batch_size, -(-n // group) * group)
        padded = -(-n // size) * size
        if padded > n:  # pad with copies of the last image: whole batches, one compile
            x = np.concatenate([x, np.repeat(x[-1:], padded - n, axis=0)])
            y = np.concatenate([y, np.repeat(y[-1:], padded - n)])
        batches = [{"image": x[i : i + size], "label": y[i : i + size]} for i in range(0, padded, size)]
        _, logits = trainer.evaluate(batches, return_logits=True)
        p = _softmax(np.asarray(jax.device_get(logits), np.float64)[:, :n])
        truth = np.asarray(data.labels)
        picked = np.take_along_axis(p, truth[None, :, None], axis=-1)[..., 0]
        accuracy[name] = [float(v) for v in (p.argmax(-1) == truth).mean(-1)]
        nll[name] = [float(v) for v in -np.log(np.maximum(picked, 1e-12)).mean(-1)]
        probs[name] = p
    share = (time.perf_counter() - started) / M
    part = lambda values, m: values[m * R : (m + 1) * R]  # noqa: E731  model m's R copies
    sweeps = []
    for m in range(M):
        acc = {k: tuple(part(v, m)) for k, v in accuracy.items()}
        losses = {k: tuple(part(v, m)) for k, v in nll.items()}
        sweeps.append(
            Sweep(tuple(rates), tuple(seeds), acc, losses, {k: part(v, m) for k, v in probs.items()}, share)
        )
    return sweeps
