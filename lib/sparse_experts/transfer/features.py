"""Frozen features of a ViT: the pre-logit pooled vector of every image of a dataset split, in stored order.

Shapes: B batch, N examples of the split, D features (the model's width).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from sparse_experts import datasets, models
from sparse_experts.routing import check_int


@functools.cache
def _encoder(graphdef, with_logits: bool = False):
    """The jitted ``(state, images [B, S, S, C]) -> pooled features [B, D]`` of one architecture (and the
    head's logits [B, Y] with ``with_logits``)."""

    @jax.jit
    def encode(state, images):
        model = nnx.merge(graphdef, state)
        pooled = model.encode(images, train=False)
        if not with_logits:
            return pooled
        logits = pooled @ model.head[...].astype(pooled.dtype) + model.head_bias[...].astype(pooled.dtype)
        return pooled, logits.astype(jax.numpy.float32)

    return encode


def features(
    model: models.ViT,
    dataset: str,
    split: str,
    *,
    image_size: int | None = None,
    batch_size: int = 500,
    data_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``model.encode`` (eval mode) of every image of ``split`` of ``dataset``, in the split's stored order.

    Returns ``(features float32 [N, D], labels int32 [N])``. Images are read through
    :func:`sparse_experts.datasets.batches` (float32 in [-1, 1]; ``image_size`` resizes them to the
    model's input, ``data_dir`` as there) in batches of ``batch_size``; the last batch is padded with
    zero images to the full size (their features are dropped), so the forward compiles once. A model with
    MoE layers routes within a batch, so its features can depend on ``batch_size``; a dense model's do not.
    """
    if not isinstance(model, models.ViT):
        raise TypeError(f"model={type(model).__name__} is not allowed; expected a sparse_experts.models.ViT")
    feats, labels, _ = _run(model, dataset, split, image_size, batch_size, data_dir, with_logits=False)
    return feats, labels


def outputs(
    model: models.ViT,
    dataset: str,
    split: str,
    *,
    image_size: int | None = None,
    batch_size: int = 500,
    data_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`features` together with the model's own head on the same pass: ``(features float32 [N, D],
    logits float32 [N, Y], labels int32 [N])``; ``Y`` is the model's (upstream) classes, the source
    predictions that LEEP and NCE read. The model must have a head (``num_classes`` > 0)."""
    if not isinstance(model, models.ViT):
        raise TypeError(f"model={type(model).__name__} is not allowed; expected a sparse_experts.models.ViT")
    if model.head is None:
        raise ValueError("model has no head (num_classes=0): no source logits; use features() instead")
    feats, labels, logits = _run(model, dataset, split, image_size, batch_size, data_dir, with_logits=True)
    return feats, logits, labels


def _run(model, dataset, split, image_size, batch_size, data_dir, *, with_logits: bool):
    batch_size = check_int("batch_size", batch_size)
    graphdef, state = nnx.split(model)
    encode = _encoder(graphdef, with_logits)
    stream = datasets.batches(
        dataset, split, batch_size, shuffle=False, epochs=1, drop_remainder=False,
        image_size=image_size, data_dir=data_dir,
    )  # fmt: skip
    feats, labels, logits = [], [], []
    for batch in stream:
        images, n = batch["image"], len(batch["label"])
        if n < batch_size:
            images = np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]), images.dtype)])
        out = encode(state, images)
        if with_logits:
            out, head = out
            logits.append(np.asarray(head, dtype=np.float32)[:n])
        feats.append(np.asarray(out, dtype=np.float32)[:n])
        labels.append(np.asarray(batch["label"], dtype=np.int32))
    if not feats:
        raise ValueError(f"split={split!r} of dataset={dataset!r} holds no images: nothing to encode")
    return np.concatenate(feats), np.concatenate(labels), (np.concatenate(logits) if with_logits else None)
