"""Do experts specialise? Expert/class affinity of one MoE layer measured against a shuffled-label baseline.

Shape letters: B images, N tokens per image, E experts, Y classes (or coarse classes).

The summary number is the mean (over images) total-variation (TV) distance between a class's expert
distribution (how its routed weight, ``combine_weights`` summed over its images' tokens, splits among the
experts) and the overall one: 0 when every class routes like the data set, ``1 - 1/Y`` when Y equally
large classes use disjoint experts. Finite samples give a TV above 0 even with no specialisation at all, so
the same number is computed with the labels shuffled; specialisation is the excess over that baseline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from sparse_experts.analysis.routes import _check_labels, _check_weights, expert_class_affinity
from sparse_experts.routing import check_int, fail

# Excess of the TV over its shuffled-label baseline below which a verdict says "little", then "some".
LITTLE, SOME = 0.05, 0.15


@dataclasses.dataclass(frozen=True)
class Specialisation:
    """Specialisation of one layer's experts on one labelling (see :func:`class_specialisation`).

    - ``tv``: mean TV distance of a class's expert distribution from the overall one, weighted by images;
    - ``baseline``: the same with the labels shuffled (mean over the shuffles);
    - ``shares`` ``[E, Y]``: ``expert_class_affinity`` (columns sum to 1); ``relative`` ``[E, Y]`` the
      same divided by each expert's overall share (1 = the class uses the expert as the data set does);
    - ``expert_tv`` ``[E]``: TV distance between the classes of an expert's weight and those of all weight;
    - ``class_of_expert`` ``[Y, E]``: how each expert's weight splits over the classes (columns sum to 1);
      ``class_of_all`` ``[Y]``: how all weight splits over the classes.
    """

    tv: float
    baseline: float
    shares: np.ndarray
    relative: np.ndarray
    expert_tv: np.ndarray
    class_of_expert: np.ndarray
    class_of_all: np.ndarray

    @property
    def most_specialised_expert(self) -> int:
        """The expert whose weight's classes differ most from those of all weight (largest ``expert_tv``)."""
        return int(np.argmax(self.expert_tv))

    def top_class(self, expert: int) -> int:
        """The class over-represented most in ``expert``'s weight (largest ratio to its share of all)."""
        return int(np.argmax(self.class_of_expert[:, expert] / np.maximum(self.class_of_all, 1e-12)))


def _class_tv(weights: np.ndarray, labels: np.ndarray, num_classes: int, overall: np.ndarray) -> float:
    shares = expert_class_affinity(weights, labels, num_classes)  # [E, Y]
    counts = np.bincount(labels, minlength=num_classes)
    keep = counts > 0
    distance = 0.5 * np.nansum(np.abs(shares[:, keep] - overall[:, None]), axis=0)
    return float(np.average(distance, weights=counts[keep]))


def class_specialisation(
    combine_weights: np.ndarray, labels: np.ndarray, num_classes: int, *, shuffles: int = 5, seed: int = 0
) -> Specialisation:
    """Expert/class specialisation of one layer: ``combine_weights`` ``[B, N, E]``, ``labels`` ``[B]`` in
    ``[0, num_classes)``; the baseline averages ``shuffles`` permutations of the labels drawn with ``seed``.
    """
    weights = _check_weights("combine_weights", combine_weights)
    labels = _check_labels(labels, weights.shape[0], num_classes)
    shuffles = check_int("shuffles", shuffles)
    per_image = weights.sum(axis=1)  # [B, E]
    if not per_image.sum() > 0:
        fail("combine_weights", "<all zero>", "some routed weight (every token-choice was dropped)")
    overall = per_image.sum(0) / per_image.sum()  # [E]
    rng = np.random.default_rng(seed)
    baseline = float(
        np.mean([_class_tv(weights, rng.permutation(labels), num_classes, overall) for _ in range(shuffles)])
    )
    by_class = np.zeros((num_classes, weights.shape[2]))
    np.add.at(by_class, labels, per_image)  # [Y, E]
    class_of_expert = by_class / np.maximum(by_class.sum(0, keepdims=True), 1e-12)
    class_of_all = by_class.sum(1) / by_class.sum()
    return Specialisation(
        tv=_class_tv(weights, labels, num_classes, overall),
        baseline=baseline,
        shares=expert_class_affinity(weights, labels, num_classes),
        relative=expert_class_affinity(weights, labels, num_classes, relative=True),
        expert_tv=0.5 * np.abs(class_of_expert - class_of_all[:, None]).sum(0),
        class_of_expert=class_of_expert,
        class_of_all=class_of_all,
    )


def verdict(tv: float, baseline: float) -> str:
    """A word on the excess of ``tv`` over its shuffled-label ``baseline``: under :data:`LITTLE` "little
    specialisation", under :data:`SOME` "some", else "clear"."""
    excess = tv - baseline
    if excess < LITTLE:
        return "little specialisation: barely above what shuffled labels give"
    if excess < SOME:
        return "some specialisation"
    return "clear specialisation"


def summary(
    results: Mapping[str, Specialisation],
    class_names: Mapping[str, Sequence[str]],
    *,
    model: str,
    layer: int,
    judge_on: str | None = None,
) -> dict:
    """The numbers and the sentence of one model's layer: ``results`` and ``class_names`` keyed by the
    labelling's word ("class", "coarse class", ...). The verdict and the most specialised expert are
    judged on ``judge_on`` (default: "coarse class" when given, else the first labelling).

    Returns ``sentence``, ``verdict``, ``most_specialised_expert``, ``its_top_class`` and, per labelling
    word ``w`` (spaces as underscores), ``tv_w`` and ``tv_w_shuffled``.
    """
    if not results or set(results) != set(class_names):
        fail("class_names", sorted(class_names), f"names for the labellings {sorted(results)}")
    judge_on = judge_on or ("coarse class" if "coarse class" in results else next(iter(results)))
    if judge_on not in results:
        fail("judge_on", judge_on, f"one of {sorted(results)}")
    s, names = results[judge_on], class_names[judge_on]
    expert = s.most_specialised_expert
    top = s.top_class(expert)
    word = verdict(s.tv, s.baseline)
    parts = [
        f"a {w}'s expert distribution differs from the overall one by {r.tv:.0%} of its weight on average "
        f"(shuffled labels: {r.baseline:.0%})"
        for w, r in results.items()
    ]
    sentence = (
        f"{model}, layer {layer}: " + "; ".join(parts) + f". That is {word} (judged on {judge_on}es). "
        f"The most specialised expert is expert {expert}: {s.class_of_expert[top, expert]:.0%} of its weight "
        f"comes from {judge_on} '{names[top]}', against {s.class_of_all[top]:.0%} for all experts together."
    )
    out = dict(sentence=sentence, verdict=word, most_specialised_expert=expert, its_top_class=names[top])
    for w, r in results.items():
        out[f"tv_{w.replace(' ', '_')}"] = r.tv
        out[f"tv_{w.replace(' ', '_')}_shuffled"] = r.baseline
    return out
