"""Fine-tuning a pre-trained ViT on a small task (transfer.finetune): a fresh head on the same backbone, a
learning-rate sweep as one vmapped program, the copy chosen on validation."""

import numpy as np
import pytest
from flax import nnx

from sparse_experts import models
from sparse_experts.transfer import finetune


def _tiny(num_classes=5, moe=None):
    config = models.vit_config(
        "mu/4", image_size=8, num_classes=num_classes, depth=2, width=16, mlp_dim=32, num_heads=2,
        head_zero_init=False, moe=moe,
    )  # fmt: skip
    return models.ViT(config, rngs=nnx.Rngs(0))


def _task(n, seed):
    """Two classes a linear read-out of the pixels can tell apart: bright or dark images."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.normal(0, 0.3, (n, 8, 8, 3)) + np.where(labels, 0.6, -0.6)[:, None, None, None]
    return finetune.LabelledSet(images.astype(np.float32), labels)


def test_a_new_head_keeps_the_backbone_and_starts_uniform():
    model = _tiny()
    fresh = finetune.with_new_head(model, 3)
    x = _task(4, 0).images
    np.testing.assert_allclose(np.asarray(fresh.encode(x)), np.asarray(model.encode(x)), rtol=1e-6)
    logits = np.asarray(fresh(x))
    assert logits.shape == (4, 3) and np.all(logits == 0)  # zero head: uniform predictions
    assert model.config.num_classes == 5 and model.head[...].shape == (16, 5)  # the source is unchanged


def test_a_sweep_learns_and_chooses_on_validation():
    model = _tiny()
    sets = {"validation": _task(64, 1), "test": _task(96, 2)}
    sweep = finetune.fine_tune(
        model, _task(256, 0), sets, num_classes=2, learning_rates=[1e-5, 3e-3], steps=60, batch_size=32,
        warmup_steps=5,
    )  # fmt: skip
    assert sweep.learning_rates == (1e-5, 3e-3) and sweep.seeds == (0, 0)
    assert sweep.probs["test"].shape == (2, 96, 2)
    np.testing.assert_allclose(sweep.probs["test"].sum(-1), 1.0, rtol=1e-5)
    # the tiny learning rate barely moves from uniform; the usual one learns the task
    assert sweep.nll["test"][0] == pytest.approx(np.log(2), abs=0.02)
    assert sweep.accuracy["test"][1] > 0.9 and sweep.best("validation") == 1
    truth = sets["test"].labels
    assert sweep.accuracy["test"][1] == pytest.approx((sweep.probs["test"][1].argmax(-1) == truth).mean())
    with pytest.raises(ValueError, match="on='train' is not an evaluation set"):
        sweep.best("train")


def test_seeds_make_different_copies_and_bad_input_is_refused():
    model = _tiny(moe=models.MoeConfig(num_experts=4, k=2, placement=(1,), capacity_factor=2.0, group_size=2))
    sets = {"validation": _task(30, 1)}  # 30 = 15 groups of 2: one batch of 30
    sweep = finetune.fine_tune(model, _task(64, 0), sets, num_classes=2, learning_rates=[3e-3, 3e-3],
                               seeds=[0, 1], steps=5, batch_size=8)  # fmt: skip
    assert not np.allclose(sweep.probs["validation"][0], sweep.probs["validation"][1])
    kw = dict(num_classes=2, steps=2, batch_size=8)
    with pytest.raises(
        ValueError, match="train_set has labels in \\[0, 1\\]; expected \\[0, num_classes=1\\)"
    ):
        finetune.fine_tune(model, _task(8, 0), {"v": _task(8, 1)}, **(kw | dict(num_classes=1)),
                           learning_rates=[1e-3])  # fmt: skip
    with pytest.raises(ValueError, match="seeds has 1 values and learning_rates 2"):
        finetune.fine_tune(model, _task(8, 0), sets, learning_rates=[1e-3, 1e-2], seeds=[0], **kw)
    with pytest.raises(
        ValueError, match="batch_size=7 is not a multiple of the model's routing group_size=2"
    ):
        finetune.fine_tune(model, _task(8, 0), sets, learning_rates=[1e-3], **(kw | dict(batch_size=7)))
    with pytest.raises(ValueError, match="learning_rates is empty"):
        finetune.fine_tune(model, _task(8, 0), sets, learning_rates=[], **kw)


def test_models_fine_tuned_together_compute_what_each_computes_alone():
    a = _tiny()
    b = models.ViT(a.config.replace(num_classes=3), rngs=nnx.Rngs(1))  # another head, other weights
    sets = {"test": _task(40, 2)}
    options = dict(num_classes=2, learning_rates=[1e-3, 3e-3], seeds=[0, 1], steps=8, batch_size=16)
    together = finetune.fine_tune_many([a, b], _task(64, 0), sets, **options)
    for model, sweep in zip([a, b], together, strict=True):
        alone = finetune.fine_tune(model, _task(64, 0), sets, **options)
        np.testing.assert_allclose(sweep.probs["test"], alone.probs["test"], atol=2e-5)
        assert sweep.learning_rates == alone.learning_rates and sweep.seeds == alone.seeds
    assert not np.allclose(together[0].probs["test"], together[1].probs["test"], atol=1e-3)
