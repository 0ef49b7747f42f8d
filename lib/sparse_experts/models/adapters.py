"""Adapter expert models: many experts as adapter sets on one frozen backbone (Puigcerver et al. 2021).

A ViT with ``adapter_dim`` R > 0 carries S adapter sets (:class:`~sparse_experts.models.vit.VitConfig`): after
every block a residual bottleneck MLP per set, zero-initialised, and one head per set. An expert model is
trained as a one-set model on its data with the backbone frozen (:data:`TRAINABLE` for the trainer);
:func:`combine` then stacks S such experts that share one backbone into a single model, and
:class:`AdapterExperts` runs the expert named at call time.

Shape letters: B images, S adapter sets, R adapter width, D width, Y classes of each expert's head.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_experts.models.vit import ViT, VitConfig

HEAD = ("head", "head_bias")
TRAINABLE = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("adapters"), *map(nnx.PathContains, HEAD)))
"""The parameters an adapter expert trains: its adapters and its head (the backbone stays frozen)."""


def _params(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _set_params(model: nnx.Module, pure: dict) -> None:
    """Set ``model``'s parameters to copies of ``pure``'s arrays (no buffer shared with another model: a
    trainer donates its model's buffers)."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda x: jnp.array(x, copy=True), pure))
    nnx.update(model, state)


def transplant(source: ViT, config: VitConfig, *, seed: int = 0) -> ViT:
    """A new ViT of ``config`` (built with ``seed``) holding ``source``'s parameters wherever ``config`` has a
    parameter of the same name and shape, except the head; the rest (head, new adapters) keeps its fresh
    initialisation (zero heads with ``head_zero_init``; adapters that change nothing). ``source`` is not
    changed, and the two share no buffer (training one, which donates its buffers, leaves the other
    intact)."""
    fresh = ViT(config, rngs=nnx.Rngs(seed))
    given = _params(source)
    target = _params(fresh)

    def take(path, value):
        keys = [getattr(k, "key", getattr(k, "idx", k)) for k in path]
        if keys[0] in HEAD:
            return value
        node = given
        for key in keys:
            if not isinstance(node, Mapping) or key not in node:
                return value
            node = node[key]
        return node if np.shape(node) == np.shape(value) else value

    _set_params(fresh, jax.tree_util.tree_map_with_path(take, target))
    return fresh


def with_adapters(model: ViT, adapter_dim: int, num_classes: int, *, seed: int = 0) -> ViT:
    """``model`` (a ViT without adapters) with one fresh adapter set of width ``adapter_dim`` and a fresh
    zero head over ``num_classes``: the same features as ``model`` until the adapters train."""
    if model.config.adapter_dim:
        raise ValueError(f"model already has adapters (adapter_dim={model.config.adapter_dim})")
    config = model.config.replace(
        adapter_dim=adapter_dim, adapter_sets=1, num_classes=num_classes, head_zero_init=True
    )
    return transplant(model, config, seed=seed)


def backbone_params(model: ViT) -> dict:
    """The parameters outside :data:`TRAINABLE` (what adapter training must leave unchanged)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.All(nnx.Param, nnx.Not(TRAINABLE))))


@dataclass(frozen=True)
class AdapterExperts:
    """S expert models in one ViT (``model``, with S adapter sets) and their ``names`` (set s is
    ``names[s]``): ``experts(images, "stars")`` -> logits [B, Y] of that expert;
    ``experts.features(images, name)`` -> its pooled features [B, D]."""

    model: ViT
    names: tuple[str, ...]

    def index(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(
                f"expert name={name!r} is not in this model; its experts: {', '.join(self.names)}"
            )
        return self.names.index(name)

    def __call__(self, images, name: str) -> jax.Array:
        return self.model(images, adapter=self.index(name))

    def features(self, images, name: str) -> jax.Array:
        return self.model.encode(images, adapter=self.index(name))

    def expert(self, name: str) -> ViT:
        """Expert ``name`` alone: a one-set ViT (e.g. to fine-tune it)."""
        index = self.index(name)
        pure = _params(self.model)
        for key in HEAD:
            pure[key] = pure[key][index : index + 1]
        adapters = pure["encoder"]["adapters"]
        pure["encoder"]["adapters"] = {layer: {0: sets[index]} for layer, sets in adapters.items()}
        out = ViT(self.model.config.replace(adapter_sets=1), rngs=nnx.Rngs(0))
        _set_params(out, pure)
        return out

    def param_count(self) -> int:
        return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(_params(self.model)))


def combine(experts: Mapping[str, ViT]) -> AdapterExperts:
    """Expert models that share one backbone (one adapter set each, same architecture), keyed by name ->
    one model holding them all, set s being the s-th name. Raises ValueError when the architectures or the
    backbones differ."""
    if not experts:
        raise ValueError("combine: no expert models given")
    names = tuple(experts)
    first = experts[names[0]]
    config = first.config
    if not config.adapter_dim or config.adapter_sets != 1:
        raise ValueError(
            f"combine: expert {names[0]!r} has adapter_dim={config.adapter_dim}, adapter_sets="
            f"{config.adapter_sets}; expected one adapter set each"
        )
    backbone = backbone_params(first)
    for name in names[1:]:
        other = experts[name]
        if other.config != config:
            raise ValueError(f"combine: expert {name!r} has another architecture than {names[0]!r}")
        same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), backbone, backbone_params(other))
        if not all(jax.tree.leaves(same)):
            raise ValueError(f"combine: expert {name!r} does not share {names[0]!r}'s backbone")
    model = ViT(config.replace(adapter_sets=len(names)), rngs=nnx.Rngs(0))
    pure = _params(first)
    singles = [_params(experts[n]) for n in names]
    for key in HEAD:
        pure[key] = jnp.concatenate([s[key] for s in singles])
    pure["encoder"]["adapters"] = {
        layer: {s: singles[s]["encoder"]["adapters"][layer][0] for s in range(len(names))}
        for layer in pure["encoder"]["adapters"]
    }
    _set_params(model, pure)
    return AdapterExperts(model, names)
