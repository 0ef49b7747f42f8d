"""Frozen features of a ViT: the pre-logit pooled vector of every image (of an array, or of a dataset split
in stored order), and the model's own head on the same pass.

Shapes: B batch, N examples, S image side, C channels, D features (the model's width), Z the model's own
(upstream) classes.
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
def _encoder(graphdef, with_logits: bool):
    """The jitted ``(state, images [B, S, S, C]) -> pooled features [B, D]`` of one architecture (and the
    head's logits [B, Z] with ``with_logits``)."""

    @jax.jit
    def encode(state, images):
        model = nnx.merge(graphdef, state)
        pooled = model.encode(images, train=False)
        if not with_logits:
            return pooled
        return pooled, model.classify(pooled).astype(jax.numpy.float32)

    return encode


def _check_model(model, with_logits: bool) -> None:
    if not isinstance(model, models.ViT):
        raise TypeError(f"model={type(model).__name__} is not allowed; expected a sparse_experts.models.ViT")
    if with_logits and model.head is None:
        raise ValueError("model has no head (num_classes=0): no source logits; use features() instead")


def encode_images(
    model: models.ViT, images, *, batch_size: int = 500, with_logits: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``model.encode`` (eval mode) of ``images`` float32 [N, S, S, C] (the model's input scale, [-1, 1])
    in batches of ``batch_size``: features float32 [N, D], and logits float32 [N, Z] with ``with_logits``.
    The last batch is padded with zero images to the full size (their outputs are dropped), so the forward
    compiles once. A model with MoE layers routes within a batch (``batch_size`` a multiple of its routing
    group), so its features can depend on ``batch_size``; a dense model's do not."""
    _check_model(model, with_logits)
    batch_size = check_int("batch_size", batch_size)
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty [N, S, S, C] array, got shape {images.shape}")
    graphdef, state = nnx.split(model)
    encode = _encoder(graphdef, with_logits)
    feats, logits = [], []
    for lo in range(0, len(images), batch_size):
        chunk = images[lo : lo + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)])
        out = encode(state, chunk)
        if with_logits:
            out, head = out
            logits.append(np.asarray(head, dtype=np.float32)[:n])
        feats.append(np.asarray(out, dtype=np.float32)[:n])
    if with_logits:
        return np.concatenate(feats), np.concatenate(logits)
    return np.concatenate(feats)


def _split(dataset: str, split: str, image_size, data_dir) -> tuple[np.ndarray, np.ndarray]:
    data = datasets.load_split(dataset, split, image_size=image_size, data_dir=data_dir)
    if len(data) == 0:
        raise ValueError(f"split={split!r} of dataset={dataset!r} holds no images: nothing to encode")
    return datasets.to_float(data.images), np.asarray(data.labels, np.int32)


def features(
    model: models.ViT,
    dataset: str,
    split: str,
    *,
    image_size: int | None = None,
    batch_size: int = 500,
    data_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`encode_images` of every image of ``split`` of ``dataset``, in the split's stored order:
    ``(features float32 [N, D], labels int32 [N])``. ``image_size`` resizes the images to the model's
    input (:func:`sparse_experts.datasets.load_split`), ``data_dir`` as there."""
    _check_model(model, False)
    batch_size = check_int("batch_size", batch_size)
    images, labels = _split(dataset, split, image_size, data_dir)
    return encode_images(model, images, batch_size=batch_size), labels


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
    logits float32 [N, Z], labels int32 [N])``; the source predictions that LEEP and NCE read."""
    _check_model(model, True)
    batch_size = check_int("batch_size", batch_size)
    images, labels = _split(dataset, split, image_size, data_dir)
    feats, logits = encode_images(model, images, batch_size=batch_size, with_logits=True)
    return feats, logits, labels
