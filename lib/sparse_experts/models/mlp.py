"""The one MLP: a ViT's dense MLP and, stacked over E by :func:`sparse_experts.models.moe.stacked_experts`,
every expert of the MoE layer. Shape letters (../../../shared/DESIGN.md): D width, H MLP hidden width."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype) -> nnx.Param:
    """A parameter drawn with ``init`` from ``rngs.params()`` in ``dtype``, carrying the logical ``axes`` as
    ``out_sharding`` metadata (``eager_sharding=False``: nothing is placed at creation)."""
    value = init(rngs.params(), shape, jnp.dtype(dtype))
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Mlp(nnx.Module):
    """Dense MLP ``wi[D, H]``, gelu, ``wo[H, D]``, biases ``bi[H]``, ``bo[D]`` iff ``bias``. ``mlp(x[..., D],
    train=..., **overrides)`` returns ``(y[..., D], {})`` like every layer MLP (the arguments meant for MoE
    layers are ignored); parameters are stored in ``param_dtype`` and cast to ``dtype`` where used."""

    def __init__(
        self,
        width: int,
        hidden: int,
        *,
        rngs: nnx.Rngs,
        bias: bool = True,
        dtype: str = "float32",
        param_dtype: str = "float32",
    ):
        D, H = width, hidden
        xavier, zeros = nnx.initializers.xavier_uniform(in_axis=0, out_axis=1), nnx.initializers.zeros
        self.dtype = dtype
        self.wi = param(rngs, xavier, (D, H), ("embed", "mlp"), param_dtype)
        self.bi = param(rngs, zeros, (H,), ("mlp",), param_dtype) if bias else None
        self.wo = param(rngs, xavier, (H, D), ("mlp", "embed"), param_dtype)
        self.bo = param(rngs, zeros, (D,), ("embed",), param_dtype) if bias else None

    @classmethod
    def from_vit_config(cls, config, *, rngs: nnx.Rngs) -> Mlp:
        """The dense MLP of a ViT config: D = width, H = mlp_dim, its bias flag and dtypes."""
        return cls(
            config.width, config.mlp_dim, rngs=rngs, bias=config.mlp_bias, dtype=config.dtype,
            param_dtype=config.param_dtype,
        )  # fmt: skip

    def __call__(self, x: jax.Array, *, train: bool = False, **moe_overrides: Any) -> tuple[jax.Array, dict]:
        h = jnp.einsum("...D,DH->...H", x, self.wi[...].astype(self.dtype))
        if self.bi is not None:
            h = h + self.bi[...].astype(self.dtype)
        y = jnp.einsum("...H,HD->...D", jax.nn.gelu(h), self.wo[...].astype(self.dtype))
        if self.bo is not None:
            y = y + self.bo[...].astype(self.dtype)
        return y, {}
