"""Adapter expert models: zero-initialised adapters change nothing, sets are independent, training them
leaves the backbone as it was, and one model holds many experts by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_experts import models, train
from sparse_experts.models import adapters

CONFIG = models.vit_config("mu/4", image_size=16, depth=2, width=32, mlp_dim=64, num_classes=5, pool="gap")


def _images(n=6, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, 16, 16, 3)), jnp.float32)


def _randomise(model, filt, seed):
    """Every parameter selected by ``filt`` set to fresh random values (so nothing is trivially zero)."""
    state = nnx.state(model, filt)
    leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(state))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    nnx.replace_by_pure_dict(state, jax.tree.unflatten(treedef, new))
    nnx.update(model, state)


@pytest.fixture(scope="module")
def backbone():
    model = models.ViT(CONFIG.replace(head_zero_init=False), rngs=nnx.Rngs(0))
    _randomise(model, nnx.PathContains("head_bias"), 1)
    return model


def test_a_new_adapter_set_leaves_the_model_unchanged(backbone):
    x = _images()
    adapted = models.with_adapters(backbone, adapter_dim=8, num_classes=5)
    np.testing.assert_allclose(adapted.encode(x), backbone.encode(x), atol=1e-6)
    adapted.head[...] = backbone.head[...][None]
    adapted.head_bias[...] = backbone.head_bias[...][None]
    np.testing.assert_allclose(adapted(x), backbone(x), atol=1e-6)
    _randomise(adapted, nnx.PathContains("adapters"), 2)  # trained adapters do change the function
    assert float(jnp.max(jnp.abs(adapted(x) - backbone(x)))) > 1e-3


def _experts(backbone, names, seed=10):
    out = {}
    for i, name in enumerate(names):
        expert = models.with_adapters(backbone, adapter_dim=8, num_classes=3)
        _randomise(expert, adapters.TRAINABLE, seed + i)
        out[name] = expert
    return out


def test_one_model_runs_each_expert_by_name_and_sets_are_independent(backbone):
    x = _images()
    singles = _experts(backbone, ["a", "b", "c"])
    combined = models.combine(singles)
    for name, single in singles.items():
        np.testing.assert_allclose(combined(x, name), single(x), atol=1e-5)
        np.testing.assert_allclose(combined.features(x, name), single.encode(x), atol=1e-5)
        np.testing.assert_allclose(combined.expert(name)(x), single(x), atol=1e-5)
    before = {name: combined(x, name) for name in combined.names}
    adapter = combined.model.encoder.adapters[1][1]  # layer 1, set 1 ("b")
    adapter.wi[...] = adapter.wi[...] + 0.5
    for name in ("a", "c"):
        np.testing.assert_array_equal(combined(x, name), before[name])
    assert float(jnp.max(jnp.abs(combined(x, "b") - before["b"]))) > 1e-3
    with pytest.raises(ValueError, match="expert name='d' is not in this model; its experts: a, b, c"):
        combined(x, "d")
    with pytest.raises(ValueError, match=r"adapter=3: this model has 3 adapter set\(s\)"):
        combined.model(x, adapter=3)


def test_combined_parameters_grow_by_the_adapters_and_heads_only(backbone):
    combined = models.combine(_experts(backbone, [str(i) for i in range(10)]))
    one = models.param_count(CONFIG)
    D, L, R, Y = CONFIG.width, CONFIG.depth, 8, 3
    per_expert = L * (2 * D * R + R + D) + D * Y + Y
    assert combined.param_count() == models.param_count(combined.model.config)
    assert combined.param_count() == one - (D * 5 + 5) + 10 * per_expert


def test_combine_refuses_experts_on_different_backbones(backbone):
    experts = _experts(backbone, ["a", "b"])
    other = models.ViT(CONFIG, rngs=nnx.Rngs(7))
    experts["c"] = models.with_adapters(other, adapter_dim=8, num_classes=3)
    with pytest.raises(ValueError, match="expert 'c' does not share 'a''s backbone"):
        models.combine(experts)


def test_training_adapters_leaves_the_backbone_unchanged(backbone):
    model = models.with_adapters(backbone, adapter_dim=8, num_classes=3)
    frozen = jax.tree.map(np.array, adapters.backbone_params(model))  # copies: training donates buffers
    start = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, adapters.TRAINABLE)))
    config = train.TrainConfig(learning_rate=1e-2, total_steps=3, warmup_steps=0)
    rng = np.random.default_rng(0)
    batch = {"image": np.asarray(_images(8)), "label": rng.integers(0, 3, 8).astype(np.int32)}
    trainer = train.Trainer(model, config, trainable=adapters.TRAINABLE)
    trainer.fit(lambda step: batch, 3, progress=False)
    after = adapters.backbone_params(model)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), frozen, after)))
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), start,
                         nnx.to_pure_dict(nnx.state(model, adapters.TRAINABLE)))  # fmt: skip
    assert max(jax.tree.leaves(moved["encoder"])) > 0 and max(jax.tree.leaves(moved["head"])) > 0
    # R copies (one per expert, each its own data) share the frozen backbone
    copies = [models.with_adapters(backbone, adapter_dim=8, num_classes=3, seed=s) for s in range(2)]
    trainer = train.Trainer(copies, config, trainable=adapters.TRAINABLE)
    trainer.fit(lambda step: train.stack_batches([batch, batch]), 3, progress=False)
    out = trainer.write_back(copy=1)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), frozen,
                                            adapters.backbone_params(out))))  # fmt: skip


def test_trainable_filter_that_selects_nothing_is_refused(backbone):
    config = train.TrainConfig(learning_rate=1e-2, total_steps=3, warmup_steps=0)
    with pytest.raises(ValueError, match="selects no parameter of the model"):
        train.Trainer(backbone, config, trainable=nnx.PathContains("adapters"))
