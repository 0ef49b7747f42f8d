"""Training: schedules, the loop's handling of non-finite values, and R copies of a run as one vmapped
program (a learning-rate sweep, seeds with their own weights and data, a diverged copy frozen)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from sparse_experts import models, train

CONFIG = models.vit_config(
    "mu/4", image_size=8, channels=1, num_classes=3, width=16, depth=2, mlp_dim=32, num_heads=2
)
MOE_CONFIG = CONFIG.replace(moe=models.MoeConfig(num_experts=4, k=2, capacity_factor=1.0, placement=(1,)))


def batch_fn(step: int, seed: int = 0, batch_size: int = 8, nan_at: int | None = None) -> dict:
    """A learnable toy task (brightness tells the class); a function of (seed, step) only."""
    rng = np.random.default_rng([seed, step])
    labels = rng.integers(0, 3, batch_size).astype(np.int32)
    images = (rng.normal(size=(batch_size, 8, 8, 1)) * 0.3 + labels[:, None, None, None] * 0.5).astype(
        np.float32
    )
    if nan_at is not None and step == nan_at:
        images[0, 0, 0, 0] = np.nan
    return {"image": images, "label": labels}


def vit(seed: int = 0, config=CONFIG) -> models.ViT:
    return models.ViT(config, rngs=nnx.Rngs(seed))


def params_of(trainer: train.Trainer, copy: int | None = None, skip: str | None = None) -> list[np.ndarray]:
    """The trained parameters (of one copy), leaves whose path contains ``skip`` left out."""
    found = jax.tree_util.tree_flatten_with_path(trainer.state["params"])[0]
    leaves = [np.asarray(x) for path, x in found if skip is None or skip not in jax.tree_util.keystr(path)]
    return leaves if copy is None else [x[copy] for x in leaves]


def assert_close(a: list[np.ndarray], b: list[np.ndarray], **tol) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, **tol)


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
    config = train.TrainConfig(learning_rate=3e-3, total_steps=40, warmup_steps=4)
    trainer = train.Trainer(vit(), config)
    history = trainer.fit(batch_fn, 40, progress=False)
    loss = history.series("loss")
    assert len(loss) == 40 and not history.diverged
    assert loss[-5:].mean() < 0.7 * loss[:5].mean()
    result = trainer.evaluate([batch_fn(10_000, batch_size=10)])
    assert result["count"] == 10 and 0 <= result["accuracy"] <= 1 and np.isfinite(result["loss"])


def test_nonfinite_stops_with_step_and_quantity():
    config = train.TrainConfig(total_steps=10, warmup_steps=1, on_nonfinite="stop")
    with pytest.raises(train.NonFiniteError, match="non-finite loss=nan at step 3"):
        train.Trainer(vit(), config).fit(lambda s: batch_fn(s, nan_at=3), 10, progress=False)


def test_nonfinite_recorded_marks_diverged():
    config = train.TrainConfig(total_steps=10, warmup_steps=1, on_nonfinite="record")
    history = train.Trainer(vit(), config).fit(lambda s: batch_fn(s, nan_at=2), 10, progress=False)
    assert history.diverged and history.diverged_at == 2 and len(history.metrics) == 3
    assert "step 2" in history.message


def test_copies_of_a_learning_rate_sweep_match_separate_runs():
    """Copy r of a vmapped sweep follows the single run at its learning rate and weight decay (make_tx, the
    head's own decay included)."""
    config = train.TrainConfig(learning_rate=1.0, total_steps=6, warmup_steps=2, weight_decay=0.1,
                               head_weight_decay=0.5)  # fmt: skip
    rates, decays = [1e-3, 3e-2], [0.1, 0.3]
    copies = train.Copies(learning_rate=rates, weight_decay=decays)
    sweeper = train.Trainer(vit(), config, copies=copies, record_attention=True)
    sweep = sweeper.fit(batch_fn, 6, progress=False)
    assert isinstance(sweep, train.SweepResult) and sweeper.step == 6
    assert sweep.loss.shape == (2, 6) and sweep.attn_max_logit.shape == (2, 6, CONFIG.depth)
    assert sweep.attn_entropy.shape == (2, 6, CONFIG.depth)
    single_config = train.TrainConfig(
        **{**config.to_dict(), "learning_rate": rates[1], "weight_decay": decays[1]}
    )
    single = train.Trainer(vit(), single_config, record_attention=True)
    history = single.fit(batch_fn, 6, progress=False)
    np.testing.assert_allclose(sweep.loss[1], history.series("loss"), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(sweep.series("learning_rate")[1], history.series("learning_rate"), rtol=1e-6)
    np.testing.assert_allclose(sweep.attn_entropy[1], history.series("attn_entropy"), rtol=2e-4)
    # The key bias has no gradient in exact arithmetic (it shifts every logit of a query alike), so Adam
    # turns rounding noise into steps of about the learning rate: it differs between the programs, and so
    # do the attention logits it shifts (not the softmax, the loss or any other parameter).
    np.testing.assert_allclose(sweep.attn_max_logit[1], history.series("attn_max_logit"), atol=1e-2)
    assert_close(
        params_of(sweeper, 1, skip="key_bias"), params_of(single, skip="key_bias"), rtol=2e-4, atol=2e-5
    )
    assert not np.allclose(sweep.loss[0], sweep.loss[1])  # the rates differ, so do the runs
    hyper = sweeper.state["opt_state"].hyperparams  # per-copy inputs of the optimiser; the head keeps its own
    assert np.allclose(hyper["weight_decay"], decays) and np.allclose(hyper["head_weight_decay"], 0.5)
    assert not sweep.diverged().any() and np.allclose(sweep.weight_decays, decays)
    assert np.all(np.isfinite(sweep.final_loss(3))) and sweep.max_logit().shape == (2,)
    np.testing.assert_allclose(sweep.max_logit(), sweep.attn_max_logit.max(axis=(1, 2)))


def test_copies_with_their_own_seeds_weights_and_data_match_separate_runs():
    """Seeds: per-copy initial weights, batches and router noise (a V-MoE), evaluated per copy."""
    config = train.TrainConfig(learning_rate=3e-3, total_steps=4, warmup_steps=1)
    seeds = [1, 2]
    trainer = train.Trainer([vit(s, MOE_CONFIG) for s in seeds], config, copies=train.Copies(seed=seeds))
    result = trainer.fit(
        lambda t: train.stack_batches([batch_fn(t, seed=s) for s in seeds]), 4, progress=False
    )
    single = train.Trainer(vit(2, MOE_CONFIG), config, seed=2)
    history = single.fit(lambda t: batch_fn(t, seed=2), 4, progress=False)
    for name in ("loss", "dropped_fraction", "router_entropy"):
        np.testing.assert_allclose(result.series(name)[1], history.series(name), rtol=2e-4, atol=2e-5)
    assert_close(
        params_of(trainer, 1, skip="key_bias"), params_of(single, skip="key_bias"), rtol=2e-4, atol=2e-5
    )
    assert not np.allclose(result.loss[0], result.loss[1])
    evaluation = [batch_fn(10_000 + i) for i in range(2)]
    per_copy, single_eval = trainer.evaluate(evaluation), single.evaluate(evaluation)
    assert per_copy["count"] == single_eval["count"] == 16 and per_copy["loss"].shape == (2,)
    for name in ("loss", "accuracy", "dropped_fraction"):
        np.testing.assert_allclose(per_copy[name][1], single_eval[name], rtol=2e-4, atol=2e-6)
    copy = result.history(1)
    assert isinstance(copy, train.History) and np.allclose(copy.series("loss"), result.loss[1])


def test_a_diverged_copy_is_frozen_while_the_others_go_on():
    config = train.TrainConfig(total_steps=5, warmup_steps=1, on_nonfinite="record")
    copies = train.Copies(learning_rate=[1e-3, 1e-3])

    def per_copy(step, nan_at=2):  # copy 0 sees a NaN at step 2, copy 1 never
        return train.stack_batches([batch_fn(step, nan_at=nan_at), batch_fn(step)])

    trainer = train.Trainer(vit(), config, copies=copies)
    result = trainer.fit(per_copy, 5, progress=False)
    assert result.diverged_at == [2, None] and list(result.diverged()) == [True, False]
    assert "copy 0 (learning_rate=0.001, seed=0): non-finite loss=nan at step 2" in result.messages[0]
    assert np.isfinite(result.loss[0, :2]).all() and np.isnan(result.loss[0, 2:]).all()
    assert np.isfinite(result.loss[1]).all() and len(result.metrics) == 5
    assert list(np.asarray(trainer.state["diverged_at"])) == [2, -1]
    final = result.final_loss(2)
    assert np.isinf(final[0]) and np.isfinite(final[1])
    two_steps = train.Trainer(vit(), config, copies=copies)
    two_steps.fit(per_copy, 2, progress=False)  # the state copy 0 had when it diverged
    assert_close(params_of(trainer, copy=0), params_of(two_steps, copy=0), atol=0)
    assert not np.allclose(params_of(trainer, copy=1)[0], params_of(two_steps, copy=1)[0])
    copy0 = result.history(0)
    assert copy0.diverged and copy0.diverged_at == 2 and len(copy0.metrics) == 3


def test_copies_all_diverged_end_the_run_or_stop_it():
    config = train.TrainConfig(total_steps=4, warmup_steps=0, grad_clip_norm=None, on_nonfinite="record")
    copies = train.Copies(learning_rate=[1e-3, 1e-3])
    sweep = train.Trainer(vit(), config, copies=copies).fit(
        lambda s: batch_fn(s, nan_at=2), 4, progress=False
    )
    assert sweep.diverged().all() and np.all(np.isinf(sweep.final_loss())) and len(sweep.metrics) == 3
    stop = train.TrainConfig(**{**config.to_dict(), "on_nonfinite": "stop"})
    with pytest.raises(
        train.NonFiniteError, match=r"copy 0 \(learning_rate=0.001, seed=0\): non-finite loss"
    ):
        train.Trainer(vit(), stop, copies=copies).fit(lambda s: batch_fn(s, nan_at=2), 4, progress=False)


def test_copies_resume_from_a_checkpoint_exactly(tmp_path):
    config = train.TrainConfig(learning_rate=1e-2, total_steps=4, warmup_steps=1)
    copies = train.Copies(learning_rate=[1e-3, 1e-2])
    reference = train.Trainer(vit(), config, copies=copies)
    expected = reference.fit(batch_fn, 4, progress=False)

    class Interrupt(Exception):
        pass

    def interrupted(step):
        if step == 3:
            raise Interrupt
        return batch_fn(step)

    with pytest.raises(Interrupt):
        train.Trainer(vit(), config, copies=copies).fit(interrupted, 4, checkpoint_dir=tmp_path,
                                                        checkpoint_every=2, progress=False)  # fmt: skip
    resumed = train.Trainer(vit(), config, copies=copies)
    result = resumed.fit(batch_fn, 4, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    assert isinstance(result, train.SweepResult) and result.diverged_at == [None, None]
    np.testing.assert_allclose(result.loss, expected.loss, atol=1e-6)
    assert_close(params_of(resumed), params_of(reference), atol=1e-6)


def test_copies_check_their_arguments():
    with pytest.raises(ValueError, match=r"Copies.learning_rate=\[0.1, -1.0\]"):
        train.Copies(learning_rate=[0.1, -1.0])
    with pytest.raises(ValueError, match="Copies.seed="):
        train.Copies(seed=[0, -1])
    with pytest.raises(ValueError, match="different lengths"):
        train.Copies(learning_rate=[0.1, 0.2], seed=[0, 1, 2])
    config = train.TrainConfig()
    with pytest.raises(ValueError, match="gives no per-copy values"):
        train.Trainer(vit(), config, copies=train.Copies())
    with pytest.raises(ValueError, match="disagree on their number"):
        train.Trainer([vit(0), vit(1)], config, copies=train.Copies(seed=[0, 1, 2]))
    with pytest.raises(ValueError, match="R copies run on the default mesh"):
        train.Trainer(vit(), config, copies=train.Copies(seed=[0, 1]), mesh=jax.make_mesh((1,), ("data",)))
    trainer = train.Trainer(vit(), config, copies=train.Copies(seed=[0, 1]))
    with pytest.raises(ValueError, match=r"expected \[B\] .* or \[R=2, B\]"):
        trainer.train_step(train.stack_batches([batch_fn(0)] * 3))
    with pytest.raises(ValueError, match=r"copy=2: with R=2 copies"):
        trainer.write_back(copy=2)


def test_lr_sensitivity_by_hand():
    loss = np.array([[3.0, 1.0], [2.0, 0.5], [np.nan, np.nan], [9.0, 8.0]])  # R=4 rates, T=2 steps
    metrics = [
        {"loss": list(loss[:, t]), "attn_max_logit": [[1.0], [2.0], [np.nan], [np.inf]]} for t in range(2)
    ]
    result = train.SweepResult(
        np.array([1e-3, 1e-2, 1e-1, 1.0]),
        np.zeros(4),
        np.zeros(4),
        metrics,
        diverged_at=[None, None, 0, None],
    )
    np.testing.assert_allclose(result.final_loss(last=1), [1.0, 0.5, np.inf, 8.0])
    # finals capped at the initial loss 2.0: [1.0, 0.5, 2.0, 2.0]; best 0.5 -> mean(0.5, 0, 1.5, 1.5) = 0.875
    assert result.lr_sensitivity(initial_loss=2.0, last=1) == pytest.approx(0.875)
    np.testing.assert_allclose(result.max_logit(), [1.0, 2.0, -np.inf, -np.inf])  # finite values only
    again = train.SweepResult.from_dict(result.to_dict())
    np.testing.assert_allclose(again.final_loss(last=1), result.final_loss(last=1))
