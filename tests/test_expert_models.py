"""Notebook 06's study: the expert models, the control and the adapter experts as trained, and the claim
logic on hand-made results whose verdicts are known."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_experts import models
from sparse_experts.models import adapters
from sparse_experts.workbook import expert_models as em
from sparse_experts.workbook import presets, transfer_study, zoo


@pytest.fixture(scope="module")
def smoke_pool(tmp_path_factory):
    params = presets.resolve("06_expert_models", "smoke")
    source = zoo.models_of_run(tmp_path_factory.mktemp("out"), "smoke")
    generalist = source.get("dense", progress=False)
    return generalist, em.build_pool(generalist, params), params


def _equal(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


def test_experts_train_every_weight_and_adapter_experts_only_their_adapters(smoke_pool):
    generalist, pool, _ = smoke_pool
    backbone = adapters.backbone_params(models.with_adapters(generalist.model, 4, 6))
    assert set(pool.adapters) == set(em.families(generalist.spec.dataset)) and len(pool.adapters) == 10
    for family, model in pool.adapters.items():
        assert _equal(adapters.backbone_params(model), backbone), family  # the frozen generalist
    expert = pool.models[em.expert_name("polygons")]
    moved = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), expert.encoder, generalist.model.encoder
    )
    assert max(jax.tree.leaves(moved)) > 0 and expert.config.num_classes == 6
    control = pool.models[em.CONTROL]
    assert control.config.num_classes == 60 and not _equal(
        control.patch_kernel[...], generalist.model.patch_kernel[...]
    )
    x = jnp.zeros((2, 16, 16, 3))
    for family in ("stars", "clusters"):  # one model holds the ten, each by name
        np.testing.assert_allclose(pool.combined(x, family), pool.adapters[family](x), atol=1e-5)
    table = em.parameter_table(pool)
    assert table[1]["params"] == 10 * table[0]["params"] and table[2]["x one model"] < 1.5


def _tuned(name: str, correct: np.ndarray, labels: np.ndarray, seconds: float = 10.0):
    """A FineTuned whose copies (rows of ``correct`` [R, N]) are right exactly where ``correct`` says."""
    R, N = correct.shape
    wrong = (labels + 1) % 3
    predicted = np.where(correct, labels[None], wrong[None])
    probs = np.eye(3, dtype=np.float32)[predicted]  # [R, N, 3]
    acc = tuple(float(v) for v in correct.mean(axis=1))
    return transfer_study.FineTuned(
        name,
        "t",
        (1e-3,) * R,
        tuple(range(R)),
        {"validation": acc, "test": acc},
        {"validation": (1.0,) * R, "test": (1.0,) * R},
        0,
        {"validation": probs, "test": probs},
        seconds,
        False,
    )


def _study(gain: float, knn_pick: str, knn_seconds: float = 0.05, seed: int = 0) -> em.TaskStudy:
    rng = np.random.default_rng(seed)
    N, K = 2000, 3
    labels = rng.integers(0, 3, N)
    base = rng.random((K, N)) < 0.6
    better = base | (rng.random((K, N)) < gain)
    half = base | (better & (rng.random((K, N)) < 0.9))
    names = [em.GENERALIST, em.CONTROL] + [em.expert_name(f) for f in ("polygons", "stars")]
    rows = {
        em.GENERALIST: base,
        em.CONTROL: base,
        em.expert_name("polygons"): better,
        em.expert_name("stars"): base,
        em.expert_name("polygons", True): half,
    }
    tuned = {n: _tuned(n, rows[n][:1], labels) for n in rows}
    replicates = {
        n: _tuned(n, rows[n], labels)
        for n in (names[0], names[1], names[2], em.expert_name("polygons", True))
    }
    scores = {
        "knn": dict.fromkeys(names, 0.5),
        "picks": {"knn": knn_pick, "domain": em.GENERALIST, "routing": em.GENERALIST},
        "seconds": {"knn": knn_seconds, "domain": 0.01, "routing": 0.01},
    }
    return em.TaskStudy("shapes_finegrained", "polygons", scores, tuned, replicates, labels)


def test_claims_follow_the_numbers(smoke_pool):
    _, pool, params = smoke_pool
    params = dict(params, bootstrap_samples=300, seed_replicates=3)
    study = _study(0.25, em.expert_name("polygons"))
    claims = {c.claim: c for c in em.claim_checks([study], pool, params)}
    verdict = {key: claims[text].verdict for key, text in em.CLAIMS_06.items()}
    assert verdict["knn_picks"] == "reproduced"
    assert verdict["beats_generalist"] == verdict["beats_control"] == "reproduced"
    assert verdict["adapter_gain"] == "reproduced"  # the adapter keeps ~90% of a ~10-point gain
    assert verdict["cost"] == "reproduced"  # 40 s of fine-tuning (4 candidates) against 0.05 s of kNN
    kept = claims[em.CLAIMS_06["adapter_gain"]].numbers["shapes_finegrained"]
    assert 0.8 < kept["fraction"] < 1.0
    head = em.headline([study], list(claims.values()))
    assert head["expert_gain_over_generalist"] == pytest.approx(
        study.correct(em.expert_name("polygons"), True).mean() - study.correct(em.GENERALIST, True).mean()
    )
    # no gain: nothing to keep; a wrong pick; kNN too slow
    flat = _study(0.0, em.GENERALIST, knn_seconds=1.0, seed=1)
    claims = {c.claim: c for c in em.claim_checks([flat], pool, params)}
    verdict = {key: claims[text].verdict for key, text in em.CLAIMS_06.items()}
    assert verdict["knn_picks"] == "not reproduced" and verdict["beats_generalist"] == "within noise"
    assert verdict["adapter_gain"] == "not tested" and verdict["cost"] == "not reproduced"
    row = flat.row()
    assert row["knn pick: model"] == em.GENERALIST and row["oracle: model"] in flat.expert_names
