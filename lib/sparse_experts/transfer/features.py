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
def _encoder(graphdef):
    """The jitted ``(state, images [B, S, S, C]) -> pooled features [B, D]`` of one architecture."""

    @jax.jit
    def encode(state, images):
        return nnx.merge(graphdef, state).encode(images, train=False)

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
    batch_size = check_int("batch_size", batch_size)
    graphdef, state = nnx.split(model)
    encode = _encoder(graphdef)
    stream = datasets.batches(
        dataset, split, batch_size, shuffle=False, epochs=1, drop_remainder=False,
        image_size=image_size, data_dir=data_dir,
    )  # fmt: skip
    feats, labels = [], []
    for batch in stream:
        images, n = batch["image"], len(batch["label"])
        if n < batch_size:
            images = np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]), images.dtype)])
        feats.append(np.asarray(encode(state, images), dtype=np.float32)[:n])
        labels.append(np.asarray(batch["label"], dtype=np.int32))
    if not feats:
        raise ValueError(f"split={split!r} of dataset={dataset!r} holds no images: nothing to encode")
    return np.concatenate(feats), np.concatenate(labels)
