"""The trusted training loop: loss falls, exact resume, determinism, the non-finite guard in both modes,
head/body weight decay, and checkpoints that restore across device counts."""

from __future__ import annotations

import json

import jax
import numpy as np
import optax
import pytest
from conftest import run_on_fake_devices
from flax import nnx

from sparse_experts import models, train

CONFIG = models.vit_config(
    "mu/4", image_size=8, channels=1, num_classes=3, width=16, depth=2, mlp_dim=32, num_heads=2,
    moe=models.MoeConfig(num_experts=4, k=2, capacity_factor=1.0, placement=(1,)),
)  # fmt: skip
TRAIN = train.TrainConfig(learning_rate=3e-3, total_steps=20, warmup_steps=2)
TIMING = set(train.TIMING_METRICS)


def batch_fn(step: int, nan_at: int | None = None) -> dict:
    """A learnable toy task (brightness tells the class); a function of the step only."""
    rng = np.random.default_rng([0, step])
    labels = rng.integers(0, 3, 8).astype(np.int32)
    images = (rng.normal(size=(8, 8, 8, 1)) * 0.3 + labels[:, None, None, None] * 0.5).astype(np.float32)
    if nan_at is not None and step == nan_at:
        images[0, 0, 0, 0] = np.nan
    return {"image": images, "label": labels}


def eval_fn():
    return [batch_fn(10_000 + i) for i in range(2)]


def trainer(seed: int = 1, config: train.TrainConfig = TRAIN) -> train.Trainer:
    return train.Trainer(models.ViT(CONFIG, rngs=nnx.Rngs(0)), config, seed=seed)


def leaves(state) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def untimed(history: train.History) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history.metrics]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 20-step run with checkpoints every 5 steps and validation every 10."""
    t = trainer()
    history = t.fit(
        batch_fn, 20, checkpoint_dir=tmp_path_factory.mktemp("ref"), checkpoint_every=5,
        eval_fn=eval_fn, eval_every=10, progress=False,
    )  # fmt: skip
    return t, history


def test_loss_falls_and_metrics_are_reported(reference):
    t, history = reference
    loss = history.series("loss")
    assert len(loss) == 20 and not history.diverged
    assert loss[-5:].mean() < loss[:5].mean() - 0.1
    expected = {"loss", "objective", "accuracy", "grad_norm", "learning_rate", "images_per_second",
                "aux_importance", "aux_load", "aux_switch", "aux_z_loss", "dropped_fraction",
                "router_entropy"}  # fmt: skip
    assert set(history.metrics[0]) == expected
    # The objective is the loss plus the weighted aux losses (0.005 importance + 0.005 load by default).
    m = history.metrics[3]
    assert m["objective"] == pytest.approx(m["loss"] + 0.005 * (m["aux_importance"] + m["aux_load"]), 1e-5)
    assert 0 <= m["dropped_fraction"] <= 1 and 0 < m["router_entropy"] <= np.log(4) + 1e-6
    assert [e["step"] for e in history.evals] == [10, 20]
    assert history.evals[-1]["accuracy"] > 0.6  # 3 classes: chance is 1/3
    assert t.step == 20


def test_resume_from_latest_checkpoint_equals_uninterrupted(reference, tmp_path):
    ref, ref_history = reference

    class Interrupt(Exception):
        pass

    def interrupted(step):
        if step == 12:
            raise Interrupt
        return batch_fn(step)

    with pytest.raises(Interrupt):
        trainer().fit(interrupted, 20, checkpoint_dir=tmp_path, checkpoint_every=5, eval_fn=eval_fn,
                      eval_every=10, progress=False)  # fmt: skip
    assert train.Checkpoints(tmp_path).latest_step() == 10
    resumed = trainer()
    history = resumed.fit(
        batch_fn, 20, checkpoint_dir=tmp_path, checkpoint_every=5, eval_fn=eval_fn, eval_every=10,
        progress=False,
    )  # fmt: skip
    for a, b in zip(leaves(ref.state), leaves(resumed.state), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert len(history.metrics) == 20
    for a, b in zip(untimed(ref_history), untimed(history), strict=True):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], atol=1e-6)
    assert history.evals == ref_history.evals


def test_same_seed_same_run_other_seed_other_noise(reference):
    ref, ref_history = reference
    again = trainer(seed=1)
    history = again.fit(batch_fn, 20, progress=False)
    assert untimed(history) == untimed(ref_history)
    other = trainer(seed=2).fit(batch_fn, 3, progress=False)  # same init and data, other router noise
    assert untimed(other)[0]["dropped_fraction"] != untimed(ref_history)[0]["dropped_fraction"] or (
        untimed(other)[0]["loss"] != untimed(ref_history)[0]["loss"]
    )


def test_nonfinite_stop_keeps_the_last_good_checkpoint(tmp_path):
    t = trainer()
    with pytest.raises(train.NonFiniteError, match=r"non-finite loss=nan at step 7.*checkpoint is step 5"):
        t.fit(lambda s: batch_fn(s, nan_at=7), 20, checkpoint_dir=tmp_path, checkpoint_every=5,
              progress=False)  # fmt: skip
    checkpoints = train.Checkpoints(tmp_path)
    assert checkpoints.all_steps() == [5]
    state, history = checkpoints.restore(trainer(), 5)
    assert all(np.isfinite(x).all() for x in leaves(state["params"]))
    assert len(history.metrics) == 5 and not history.diverged


def test_nonfinite_record_marks_the_run_diverged():
    config = train.TrainConfig(**{**TRAIN.to_dict(), "on_nonfinite": "record"})
    history = trainer(config=config).fit(lambda s: batch_fn(s, nan_at=3), 20, progress=False)
    assert history.diverged and history.diverged_at == 3 and len(history.metrics) == 4
    assert "non-finite loss=nan at step 3" in history.message


def test_fit_checks_its_arguments_before_training(tmp_path):
    t = trainer()
    with pytest.raises(ValueError, match="num_steps=-1"):
        t.fit(batch_fn, -1, progress=False)
    with pytest.raises(ValueError, match="checkpoint_every=5 given without a checkpoint_dir"):
        t.fit(batch_fn, 5, checkpoint_every=5, progress=False)
    with pytest.raises(ValueError, match="seed=-1"):
        train.Trainer(models.ViT(CONFIG, rngs=nnx.Rngs(0)), TRAIN, seed=-1)
    assert t.step == 0


def test_head_and_body_weight_decay_differ():
    """With zero gradients Adam's update is 0, so one step only decays: w <- w - lr * decay * w."""
    config = train.TrainConfig(learning_rate=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5,
                               head_weight_decay=2.0, grad_clip_norm=None)  # fmt: skip
    params = {"head": np.ones((3, 2), np.float32), "head_bias": np.ones(2, np.float32),
              "body": {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)}}  # fmt: skip
    tx = train.make_tx(config)
    updates, _ = tx.update(jax.tree.map(np.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["head"], 1 - 0.1 * 2.0)
    np.testing.assert_allclose(new["body"]["kernel"], 1 - 0.1 * 0.5)
    np.testing.assert_allclose(new["head_bias"], 1.0)  # no decay on vectors
    np.testing.assert_allclose(new["body"]["bias"], 1.0)


def test_checkpoints_restore_across_device_counts(tmp_path):
    """1 device -> 8 fake devices (experts split over an 'expert' axis of 2) -> 1 device."""
    one = trainer()
    one.fit(batch_fn, 3, checkpoint_dir=tmp_path / "from1", checkpoint_every=3, progress=False)
    np.savez(tmp_path / "from1.npz", *leaves(one.state))
    (tmp_path / "job.json").write_text(json.dumps({"dir": str(tmp_path)}))
    out = run_on_fake_devices("_checkpoint_devices.py", devices=8, timeout=600, args=[str(tmp_path)])
    assert out["restored_equal"] and out["devices"] == 8
    assert out["expert_sharded"], "expert weights should be split over the expert axis after restore"
    assert out["steps_after"] == 5
    back = trainer()
    state, history = train.Checkpoints(tmp_path / "from8").restore(back, 5)
    saved = np.load(tmp_path / "from8.npz")
    for i, leaf in enumerate(leaves(state)):
        np.testing.assert_allclose(leaf, saved[f"arr_{i}"], atol=0)
    assert len(history.metrics) == 5
