"""The ViT-22B recipe's measurements (notebook 01): the QK-norm stability check on two learning-rate sweeps,
the parallel-vs-sequential block comparison, and the paper-scale sizing table.

Shape letters: R learning rates (copies of a sweep), T steps, L layers.

The stability check follows Dehghani et al. (2023) and Wortsman et al. (2023): the same small ViT trained at R
peak learning rates, with plain attention and with QK-norm (:class:`~sparse_experts.train.SweepResult` each).
Two claims are checked, each a :class:`~sparse_experts.analysis.claims.Claim`:

- logit growth: at the highest rate the largest attention logit without QK-norm is at least
  ``ratio_needed`` (10) times the one with it;
- stable range: QK-norm's learning-rate sensitivity (the mean over rates of min(final loss, initial loss)
  minus the best final loss) is below ``sensitivity_factor`` (0.75) times plain attention's, and it has at
  least as many *stable* rates (final loss within 10% of the way from the best final loss of both variants
  to the initial loss).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from sparse_experts import models, parallel
from sparse_experts.analysis.claims import Claim
from sparse_experts.train import History, SweepResult

GIB = 2**30
LOGIT_CLAIM = "QK-norm prevents the growth of attention logits at high learning rates"
RANGE_CLAIM = "QK-norm widens the range of learning rates that train well"


def stable_threshold(sweeps: Iterable[SweepResult], last: int = 10) -> tuple[float, float]:
    """(initial loss, threshold): the mean loss at step 0 over every copy of every sweep, and the final loss
    under which a rate counts as stable: the best final loss (mean of the last ``last`` steps, over every
    sweep) plus 10% of the way from it to the initial loss."""
    sweeps = list(sweeps)
    if not sweeps:
        raise ValueError("stable_threshold: no sweeps given")
    initial = float(np.mean([s.loss[:, 0].mean() for s in sweeps]))
    best = min(float(np.min(s.final_loss(last))) for s in sweeps)
    return initial, best + 0.1 * (initial - best)


def sweep_table(
    sweeps: Mapping[str, SweepResult], threshold: float, last: int = 10
) -> dict[tuple, np.ndarray]:
    """Columns (sweep label, quantity) -> [R] values: "final loss", "final accuracy" (means over the last
    ``last`` steps), "max logit" (any layer, any step), "final entropy" (mean over layers at the last step)
    and "stable" (final loss <= ``threshold``). Rows are the learning rates (a DataFrame's index)."""
    return {
        (label, column): values
        for label, s in sweeps.items()
        for column, values in [
            ("final loss", s.final_loss(last)),
            ("final accuracy", s.accuracy[:, -last:].mean(-1)),
            ("max logit", s.max_logit()),
            ("final entropy", s.attn_entropy[:, -1].mean(-1)),
            ("stable", s.final_loss(last) <= threshold),
        ]
    }


def qk_norm_claims(
    plain: SweepResult,
    qk_norm: SweepResult,
    *,
    last: int = 10,
    ratio_needed: float = 10.0,
    sensitivity_factor: float = 0.75,
) -> dict[str, Claim]:
    """{"logit_growth": Claim, "stable_range": Claim} from two sweeps over the same learning rates (see the
    module docstring for the two checks); each claim's numbers hold what its verdict rests on."""
    if not np.array_equal(plain.learning_rates, qk_norm.learning_rates):
        raise ValueError(f"the sweeps differ in learning rates: plain {plain.learning_rates.tolist()}, "
                         f"QK-norm {qk_norm.learning_rates.tolist()}; expected the same rates")  # fmt: skip
    initial, threshold = stable_threshold([plain, qk_norm], last)
    top_lr = float(plain.learning_rates[-1])
    top_plain, top_qk = float(plain.max_logit()[-1]), float(qk_norm.max_logit()[-1])
    ratio = top_plain / top_qk
    pair = {"plain": plain, "qk_norm": qk_norm}
    stable = {name: s.final_loss(last) <= threshold for name, s in pair.items()}
    sensitivity = {name: s.lr_sensitivity(initial, last) for name, s in pair.items()}
    contained = ratio >= ratio_needed
    wider = bool(sensitivity["qk_norm"] < sensitivity_factor * sensitivity["plain"]
                 and stable["qk_norm"].sum() >= stable["plain"].sum())  # fmt: skip
    R = len(plain.learning_rates)
    logits = Claim(
        LOGIT_CLAIM,
        "reproduced" if contained else "not reproduced",
        f"max attention logit at lr={top_lr:g}: plain {top_plain:.3g}, QK-norm {top_qk:.3g} (ratio "
        f"{ratio:.3g}; {ratio_needed:g} or more counts as contained)",
        dict(
            learning_rate=top_lr,
            max_logit_plain=top_plain,
            max_logit_qk_norm=top_qk,
            ratio=ratio,
            ratio_needed=ratio_needed,
        ),
    )
    numbers = {"initial_loss": initial, "stable_threshold": threshold}
    numbers |= {f"lr_sensitivity_{name}": value for name, value in sensitivity.items()}
    numbers |= {f"stable_{name}": value.tolist() for name, value in stable.items()}
    numbers["sensitivity_factor"] = sensitivity_factor
    stable_range = Claim(
        RANGE_CLAIM,
        "reproduced" if wider else "not reproduced",
        f"learning-rate sensitivity: plain {sensitivity['plain']:.3f}, QK-norm {sensitivity['qk_norm']:.3f} "
        f"(initial loss {initial:.3f}); stable rates: plain {stable['plain'].sum()}/{R}, QK-norm "
        f"{stable['qk_norm'].sum()}/{R}; diverged: plain {plain.diverged().sum()}, QK-norm "
        f"{qk_norm.diverged().sum()}",
        numbers,
    )
    return {"logit_growth": logits, "stable_range": stable_range}


def qk_norm_verdict(claims: Mapping[str, Claim]) -> str:
    """The two claims of :func:`qk_norm_claims` in one sentence (reproduced, partly, or not)."""
    contained = claims["logit_growth"].verdict == "reproduced"
    wider = claims["stable_range"].verdict == "reproduced"
    if contained and wider:
        return "reproduced: QK-norm kept attention logits bounded and widened the stable learning-rate range"
    if contained:
        return ("partly reproduced: QK-norm kept attention logits bounded, but the stable learning-rate "
                "range was not clearly wider in this run")  # fmt: skip
    if wider:
        return ("partly reproduced: the stable range was wider with QK-norm, but logits did not grow 10x "
                "more without it")  # fmt: skip
    return "not reproduced at this scale: no clear logit growth without QK-norm and no wider stable range"


def sweep_figures(sweeps: Mapping[str, SweepResult], claims: Mapping[str, Claim], last: int = 10) -> dict:
    """The saved figures of the two sweeps (labels "plain attention" and "QK-norm") and their claims."""
    plain, qk = sweeps["plain attention"], sweeps["QK-norm"]
    logits, stable_range = claims["logit_growth"].numbers, claims["stable_range"].numbers
    return {
        "learning_rates": plain.learning_rates.tolist(),
        "final_loss_plain": plain.final_loss(last),
        "final_loss_qk_norm": qk.final_loss(last),
        "max_logit_plain": plain.max_logit(),
        "max_logit_qk_norm": qk.max_logit(),
        **{
            name: stable_range[name]
            for name in ("stable_plain", "stable_qk_norm", "lr_sensitivity_plain", "lr_sensitivity_qk_norm")
        },  # fmt: skip
        "logit_ratio_at_top_lr": logits["ratio"],
        "qk_norm_verdict": qk_norm_verdict(claims),
        "qk_norm_claims": {name: claim.to_dict() for name, claim in claims.items()},
    }


# -- Parallel against sequential blocks, and the paper's models on paper ----------------------------------
def block_row(config: models.VitConfig, history: History, test: Mapping[str, Any], last: int = 10) -> dict:
    """One row of the block comparison: parameters, median step time (seconds, steps after the first,
    which compiles), final train loss (mean of the last ``last`` steps), test accuracy and loss."""
    steps = history.step_seconds[1:] or history.step_seconds
    return {
        "parameters": models.param_count(config),
        "median step s": float(np.median(steps)),
        "final train loss": float(history.series("loss")[-last:].mean()),
        "test accuracy": float(test["accuracy"]),
        "test loss": float(test["loss"]),
    }


def step_time_ratio(rows: Mapping[str, Mapping[str, float]]) -> float:
    """Median step time of the "parallel" row over the "sequential" row (below 1: the parallel block is
    faster)."""
    return rows["parallel"]["median step s"] / rows["sequential"]["median step s"]


def memory_gib_per_device(
    config: models.VitConfig, mesh_shape: Mapping[str, int], batch_size: int, rules=parallel.FSDP_RULES
) -> dict[str, float]:
    """GiB per device of one Adam training step of ``batch_size`` images (global) on a mesh of
    ``mesh_shape``: "parameters", "optimizer state", "gradients", "activations", "total"."""
    plan = models.memory_plan(config, mesh_shape, batch_size, optimizer="adam", rules=rules)
    return {part: value / GIB for part, value in plan.per_device_bytes().items()}


def paper_sizes(
    configs: Mapping[str, models.VitConfig], mesh_shape: Mapping[str, int], batch_size: int,
    rules=parallel.FSDP_RULES,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per named config: model, width D, depth L, MLP H, heads A, parameters, forward GFLOPs per
    image and the GiB per device of :func:`memory_gib_per_device` ("<part> GiB/device")."""
    return [
        {
            "model": name,
            "width D": cfg.width,
            "depth L": cfg.depth,
            "MLP H": cfg.mlp_dim,
            "heads A": cfg.num_heads,
            "parameters": models.param_count(cfg),
            "GFLOPs / image (fwd)": models.flops_per_image(cfg) / 1e9,
            **{
                f"{part} GiB/device": v
                for part, v in memory_gib_per_device(cfg, mesh_shape, batch_size, rules).items()
            },
        }
        for name, cfg in configs.items()
    ]


def headline_labels(top_lr: str, seed: int, steps: int, model: str) -> dict[str, str]:
    """What each of notebook 01's headline figures is (the index page), in headline order."""
    note = f"one seed ({seed}), {steps} steps"
    return {
        "vit22b_params": "parameters of ViT-22B/14 (abstract initialisation)",
        "logit_ratio_at_top_lr": f"max attention logit at lr={top_lr}, plain over QK-norm ({note})",
        "lr_sensitivity_plain": f"learning-rate sensitivity, plain attention (loss above the best; {note})",
        "lr_sensitivity_qk_norm": f"learning-rate sensitivity, QK-norm ({note})",
        "parallel_over_sequential_step_time": f"median step time, parallel over sequential block ({model})",
        "qk_norm_verdict": "the paper's QK-norm claim, checked on this run",
    }
