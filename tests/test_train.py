"""Training: schedules, steps, the loop's handling of non-finite values, and the vmapped LR sweep."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from sparse_experts import models, train

CONFIG = models.vit_config(
    "mu/4", image_size=8, channels=1, num_classes=3, width=16, depth=2, mlp_dim=32, num_heads=2
)


def _batches(seed=0, batch_size=8, nan_at=None):
    rng = np.random.default_rng(seed)
    step = 0
    while True:
        labels = rng.integers(0, 3, batch_size).astype(np.int32)
        images = rng.normal(size=(batch_size, 8, 8, 1)).astype(np.float32) * 0.3
        images += labels[:, None, None, None] * 0.5  # learnable: brightness tells the class
        if nan_at is not None and step == nan_at:
            images[0, 0, 0, 0] = np.nan
        yield {"image": images, "label": labels}
        step += 1


def test_schedules_shape():
    cosine = train.schedule_multiplier(train.TrainConfig(total_steps=10, warmup_steps=2))
    assert [round(float(cosine(s)), 4) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    rsqrt = train.schedule_multiplier(train.TrainConfig(schedule="rsqrt", total_steps=100, warmup_steps=4))
    assert [round(float(rsqrt(s)), 4) for s in (0, 3, 15)] == [0.25, 1.0, 0.5]
    constant = train.schedule_multiplier(train.TrainConfig(schedule="constant", warmup_steps=0))
    assert float(constant(0)) == float(constant(99)) == 1.0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(learning_rate=0), "learning_rate"),
        (dict(schedule="linear"), "schedule"),
        (dict(warmup_steps=200, total_steps=100), "warmup_steps"),
        (dict(on_nonfinite="ignore"), "on_nonfinite"),
        (dict(grad_clip_norm=0.0), "grad_clip_norm"),
    ],
)
def test_config_errors_name_the_field(kwargs, name):
    with pytest.raises(ValueError, match=f"TrainConfig.{name}="):
        train.TrainConfig(**kwargs)


def test_training_reduces_loss_and_evaluates():
    model = models.ViT(CONFIG, rngs=nnx.Rngs(0))
    config = train.TrainConfig(learning_rate=3e-3, total_steps=40, warmup_steps=4)
    history = train.train(
        model, train.create_optimizer(model, config), _batches(), 40, config, progress=False
    )
    loss = history.series("loss")
    assert len(loss) == 40 and not history.diverged
    assert loss[-5:].mean() < 0.7 * loss[:5].mean()
    batches = [next(_batches(seed=1, batch_size=10)) for _ in range(1)]
    result = train.evaluate(model, batches)
    assert result["count"] == 10 and 0 <= result["accuracy"] <= 1 and np.isfinite(result["loss"])


@pytest.fixture(scope="module")
def shared():
    """One model and optimizer for the loop-behaviour tests: the train step compiles once for all of them."""
    model = models.ViT(CONFIG, rngs=nnx.Rngs(0))
    optimizer = train.create_optimizer(model, train.TrainConfig(total_steps=10, warmup_steps=1))
    graphdef, state = nnx.split((model, optimizer))
    return graphdef, state


@pytest.fixture
def fresh(shared):
    """A fresh (model, optimizer) pair with the shared graph: same compiled step, untouched weights."""
    return nnx.merge(*shared, copy=True)


def test_nonfinite_stops_with_step_and_quantity(fresh):
    config = train.TrainConfig(total_steps=10, warmup_steps=1, on_nonfinite="stop")
    with pytest.raises(train.NonFiniteError, match="non-finite loss=nan at step 3"):
        train.train(*fresh, _batches(nan_at=3), 10, config, progress=False)


def test_nonfinite_recorded_marks_diverged(fresh):
    config = train.TrainConfig(total_steps=10, warmup_steps=1, on_nonfinite="record")
    history = train.train(*fresh, _batches(nan_at=2), 10, config, progress=False)
    assert history.diverged and history.diverged_at == 2 and len(history.metrics) == 3
    assert "step 2" in history.message


def test_iterator_running_out_is_an_error(fresh):
    short = [next(_batches()) for _ in range(2)]
    with pytest.raises(ValueError, match="ran out after 2 of 5 steps"):
        train.train(*fresh, short, 5, progress=False)
    with pytest.raises(ValueError, match="num_steps=-1"):
        train.train(*fresh, short, -1, progress=False)


def test_lr_sweep_matches_separate_runs():
    """Each vmapped copy follows the same trajectory as a plain AdamW run at its learning rate."""
    config = train.TrainConfig(learning_rate=1.0, total_steps=6, warmup_steps=2, weight_decay=0.1)
    rates = [1e-3, 3e-2]
    sweep = train.lr_sweep(models.ViT(CONFIG, rngs=nnx.Rngs(0)), rates, _batches(), 6, config, progress=False)
    assert sweep.loss.shape == (2, 6) and sweep.attn_max_logit.shape == (2, 6, CONFIG.depth)
    for r, lr in [(1, rates[1])]:  # one reference run: each optimizer compiles its own step
        model = models.ViT(CONFIG, rngs=nnx.Rngs(0))
        single = train.TrainConfig(learning_rate=lr, total_steps=6, warmup_steps=2, weight_decay=0.1)
        history = train.train(
            model, train.create_optimizer(model, single), _batches(), 6, single, progress=False
        )
        np.testing.assert_allclose(sweep.loss[r], history.series("loss"), rtol=2e-4, atol=2e-5)
    assert not sweep.diverged().any()
    assert np.all(np.isfinite(sweep.final_loss(3))) and sweep.max_logit().shape == (2,)


def test_lr_sweep_records_divergence():
    config = train.TrainConfig(total_steps=4, warmup_steps=0, grad_clip_norm=None)
    sweep = train.lr_sweep(
        models.ViT(CONFIG, rngs=nnx.Rngs(0)), [1e-3, 1e-3], _batches(nan_at=2), 4, config, progress=False
    )
    assert sweep.diverged().all() and np.all(np.isinf(sweep.final_loss()))
    with pytest.raises(ValueError, match="learning_rates"):
        train.lr_sweep(models.ViT(CONFIG, rngs=nnx.Rngs(0)), [0.1, -1.0], _batches(), 2, config)


def test_lr_sensitivity_by_hand():
    loss = np.array([[3.0, 1.0], [2.0, 0.5], [np.nan, np.nan], [9.0, 8.0]])  # R=4 rates, T=2 steps
    empty = np.zeros((4, 2, 1))
    result = train.SweepResult(np.array([1e-3, 1e-2, 1e-1, 1.0]), loss, loss * 0, empty, empty, seconds=0.0)
    np.testing.assert_allclose(result.final_loss(last=1), [1.0, 0.5, np.inf, 8.0])
    # finals capped at the initial loss 2.0: [1.0, 0.5, 2.0, 2.0]; best 0.5 -> mean(0.5, 0, 1.5, 1.5) = 0.875
    assert result.lr_sensitivity(initial_loss=2.0, last=1) == pytest.approx(0.875)
