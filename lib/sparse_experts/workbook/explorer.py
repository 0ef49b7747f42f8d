"""The routing explorer of notebook 03: which patches go to which expert, what gets dropped, do experts
specialise, and what does switching one off cost. Models and images (a :class:`zoo.EvalSet`) come in as
arguments. Shape letters: B images, N tokens per image, E experts, K choices shown, Y classes.

- :class:`Routes`: each model's routing of the images, cached per test-time setting.
- :class:`Study`: one model at one selection: its figures, per-layer table, specialisation (against
  shuffled labels) and expert-ablation summary; :func:`saved_figures` turns studies into the saved numbers.
- :class:`Explorer`: the ipywidgets controls (image, model, MoE layer, k, capacity factor, BPR) and plotly
  ``FigureWidget`` views, with the update logic; a test drives it by setting a control's ``value``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from sparse_experts import analysis, models
from sparse_experts.workbook import fmt, viz, zoo

# The keys of the saved figures that form the notebook's headline.
HEADLINE = ("main_dropped_fraction", "main_specialisation", "main_ablation_change")


class Routes:
    """Each model's ``(logits [B, Y], records)`` over ``data`` (``analysis.route``), cached per (model,
    test-time settings); ``trained`` maps a name to a V-MoE ``models.ViT``."""

    def __init__(self, trained: Mapping[str, models.ViT], data: zoo.EvalSet):
        if not trained:
            raise ValueError("trained is empty; expected {name: ViT with MoE layers}")
        for name, model in trained.items():
            if getattr(getattr(model, "config", None), "moe", None) is None:
                raise ValueError(f"trained[{name!r}] has no MoE layers; the explorer needs V-MoE models")
        self.models, self.data = dict(trained), data
        self._cache: dict[Any, tuple[np.ndarray, dict]] = {}

    def config(self, name: str) -> models.VitConfig:
        if name not in self.models:
            raise ValueError(f"model name={name!r} is unknown; expected one of {list(self.models)}")
        return self.models[name].config

    def overrides(self, name: str, k: int, capacity_factor: float, batch_priority: bool) -> dict | None:
        """The test-time ``moe_overrides`` of model ``name`` (``analysis.overrides_for``)."""
        return analysis.overrides_for(self.config(name).moe, k, capacity_factor, batch_priority)

    def __call__(self, name: str, k: int, capacity_factor: float, batch_priority: bool):
        overrides = self.overrides(name, k, capacity_factor, batch_priority)
        key = (name, tuple(sorted((overrides or {}).items())))
        if key not in self._cache:
            self._cache[key] = analysis.route(
                self.models[name], self.data.x, batch_size=self.data.batch_size, moe_overrides=overrides
            )
        return self._cache[key]


class Study:
    """Model ``name`` at MoE ``layer`` (-1: its last, -2 the one before...) with the test-time settings ``k``,
    ``capacity_factor`` and ``batch_priority``: figures, the per-layer table, :attr:`affinity`
    (specialisation summary) and, after :meth:`ablate`, :attr:`ablation` (ablation summary)."""

    def __init__(
        self, routes: Routes, name: str, *, layer: int, k: int, capacity_factor: float, batch_priority: bool
    ):
        self.routes, self.name, self.data = routes, name, routes.data
        self.settings = dict(k=k, capacity_factor=capacity_factor, batch_priority=batch_priority)
        self.config = routes.config(name)
        self.layer = analysis.resolve_layer(self.config, layer)
        self.logits, self.records = routes(name, **self.settings)
        self.scan: analysis.AblationScan | None = None
        self.ablation: dict | None = None

    def _choices(self, index: int):
        return analysis.token_choices(self.config.moe, self.records[self.layer], index, self.settings["k"])

    def dropped_per_image(self) -> np.ndarray:
        """``[B]``: how many of each image's shown patch choices (the patch view's crosses; the class token
        left out) were dropped in :attr:`layer`."""
        record = self.records[self.layer]
        gates, weights = np.asarray(record["gates"]), np.asarray(record["combine_weights"])  # [B, N, E]
        shown = analysis.shown_choices(self.config.moe, self.settings["k"])
        chosen = np.argsort(-gates, axis=-1, kind="stable")[..., :shown]  # [B, N, K], as token_choices
        dropped = np.take_along_axis(weights, chosen, axis=-1) <= 0
        return dropped[:, int(self.config.pool == "cls") :].sum(axis=(1, 2))

    def showcase_image(self, preferred: int) -> int:
        """The image the static patch view shows: ``preferred``, unless it lost nothing in :attr:`layer`
        while the layer dropped choices; then :func:`image_with_drops` picks one that did."""
        return image_with_drops(self.dropped_per_image(), preferred, self.data.group_size)

    def showcase_note(self, preferred: int, shown: int) -> str:
        """Why the patch view shows image ``shown`` when ``preferred`` was asked for (one sentence)."""
        counts, group = self.dropped_per_image(), self.data.group_size
        if self.config.moe.router == "expert_choice":
            order = "each expert takes the group's tokens it scores highest"
        elif self.settings["batch_priority"]:
            order = "the group's expert slots go first to the tokens with the highest top gate (BPR)"
        else:
            order = "the group's expert slots are filled in token order, first image first"
        where = f"in layer {self.layer} ({self.name})"
        if shown == preferred:
            if counts[shown]:
                return f"Image {shown} lost {int(counts[shown])} of its shown token-choices {where}."
            return f"Image {shown}: nothing was dropped {where} at this capacity factor."
        return (
            f"Image {preferred} is image {preferred % group + 1} of {group} in its routing group; {order}; "
            f"it kept every token-choice {where}. The view shows "
            f"image {shown} instead (image {shown % group + 1} of its group), which lost "
            f"{int(counts[shown])} token-choices there: that is what a dropped patch looks like."
        )

    def patch_figure(self, index: int) -> go.Figure:
        """Image ``index``'s patches coloured by expert (first, second... choice), dropped choices marked."""
        chosen, dropped, gates = self._choices(index)
        title = f"{self.name}, layer {self.layer}: image {index} ({self._class_of(index)}), patches by expert"
        return viz.patch_routing(
            self.data.images[index], chosen, patch_size=self.config.patch_size,
            has_cls_token=self.config.pool == "cls", dropped=dropped, gates=gates,
            num_experts=self.config.moe.num_experts, title=title, original=True,
        )  # fmt: skip

    def layer_choices(self, index: int) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``{MoE layer: analysis.token_choices}`` of image ``index``: its choices in every MoE layer."""
        moe, k = self.config.moe, self.settings["k"]
        return {layer: analysis.token_choices(moe, r, index, k) for layer, r in self.records.items()}

    def layers_figure(self, index: int) -> go.Figure:
        """Image ``index`` beside its first-choice routing map in every MoE layer, dropped choices marked."""
        title = f"{self.name}: image {index} ({self._class_of(index)}) through every MoE layer, first choices"
        return viz.routing_across_layers(
            self.data.images[index], self.layer_choices(index), patch_size=self.config.patch_size,
            num_experts=self.config.moe.num_experts, has_cls_token=self.config.pool == "cls", title=title,
        )  # fmt: skip

    def demand(self) -> dict[int, dict[str, Any]]:
        """Per MoE layer, ``analysis.routes.expert_demand`` over all images (at the shown k) and ``"slots"``:
        the slots each expert had over the set, capacity C x routing groups."""
        k = analysis.shown_choices(self.config.moe, self.settings["k"])
        groups = self.data.count // self.config.moe.group_size
        return {
            layer: {
                **analysis.routes.expert_demand(record["gates"], record["combine_weights"], k),
                "slots": int(record["capacity"]) * groups,
            }
            for layer, record in self.records.items()
        }

    def kept_dropped_figure(self) -> go.Figure:
        """:func:`viz.kept_dropped_bars` of :meth:`demand`."""
        cf = self.settings["capacity_factor"]
        title = (
            f"{self.name}: token-choices each expert kept and dropped ({self.data.count:,} images, capacity "
            f"factor {cf:g}); red: its slots"
        )
        return viz.kept_dropped_bars(self.demand(), title=title)

    def expert_patches_figure(self, count: int = 8) -> go.Figure:
        """Each expert's ``count`` patches with the highest gate in :attr:`layer` over all images, each
        with a ring of its neighbours and a frame in the expert's colour (:func:`patch_context`)."""
        start = int(self.config.pool == "cls")
        top = analysis.routes.top_gate_patches(self.records[self.layer]["gates"], count, skip_tokens=start)
        E = top["gate"].shape[0]
        colors = np.repeat([viz.expert_color(e) for e in range(E)], count)
        crops = patch_context(self.data.images, top["image"].ravel(), top["patch"].ravel(),
                              self.config.patch_size, colors)  # fmt: skip
        title = f"{self.name}, layer {self.layer}: each expert's {count} highest-gate patches (framed)"
        return viz.expert_patch_grid(crops.reshape(E, count, *crops.shape[1:]), top["gate"], title=title)

    def gate_figure(self, index: int) -> go.Figure:
        """Gate values of image ``index``'s choices (router probability; combine weight for Soft MoE)."""
        word = "combine weight" if self.config.moe.router == "soft" else "router probability"
        return viz.gate_values(*self._choices(index), has_cls_token=self.config.pool == "cls", word=word)

    def load_figure(self) -> go.Figure:
        return viz.expert_load_bars(self.records, title=f"{self.name}: expert load per MoE layer")

    def _class_of(self, index: int) -> str:
        return self.data.class_names[self.data.labels[index]]

    def info_html(self, index: int) -> str:
        """One line on image ``index`` (true and predicted class, kept token-choices) and the layer over all
        images (dropped fraction, router entropy, accuracy)."""
        record = self.records[self.layer]
        predicted = self.data.class_names[int(np.asarray(self.logits)[index].argmax())]
        return (
            f"<b>{self.name}</b>, layer {self.layer}: image {index} is <i>{self._class_of(index)}</i>, "
            f"predicted <i>{predicted}</i>; this image's kept token-choices in the layer: "
            f"{int(record['tokens_per_image'][index])}; over all {self.data.count} images: dropped "
            f"{record['dropped_fraction']:.1%}, router entropy {analysis.router_entropy(record['gates']):.2f}"
            f" nats, accuracy {analysis.accuracy(self.logits, self.data.labels):.3f}"
        )

    def layer_rows(self) -> list[dict]:
        """``analysis.layer_rows``; Soft MoE's busiest expert is measured by combine weight."""
        soft = self.config.moe.router == "soft"
        return analysis.layer_rows(self.records, self.logits, self.data.labels, weighted=soft)

    @functools.cached_property
    def specialisations(self) -> dict[str, analysis.Specialisation]:
        """``{word: analysis.Specialisation}`` of :attr:`layer` for each labelling of the data."""
        weights = self.records[self.layer]["combine_weights"]
        return {
            word: analysis.class_specialisation(weights, ys, len(names))
            for word, (ys, names) in self.data.label_sets.items()
        }

    @functools.cached_property
    def affinity(self) -> dict:
        """``analysis.specialisation.summary`` of :attr:`layer` (sentence, verdict, TVs, ...)."""
        names = {word: names for word, (_, names) in self.data.label_sets.items()}
        return analysis.specialisation.summary(self.specialisations, names, model=self.name, layer=self.layer)

    def affinity_figures(self) -> list[go.Figure]:
        """One relative expert x class heatmap per labelling."""
        return [
            viz.affinity_heatmap(
                s.relative,
                self.data.label_sets[word][1],
                relative=True,
                title=f"{self.name}, layer {self.layer}: expert x {word} affinity "
                "(x the expert's overall share)",
            )
            for word, s in self.specialisations.items()
        ]

    def ablate(self, expert: int = -1) -> dict:
        """Scan every expert of :attr:`layer` (``analysis.ablation_scan``, once) and summarise switching off
        ``expert`` (-1: the most specialised one of :attr:`affinity`); sets and returns :attr:`ablation`."""
        if self.scan is None:
            self.scan = analysis.ablation_scan(
                self.routes.models[self.name], self.data.x, self.data.labels, self.layer,
                batch_size=self.data.batch_size, base_logits=self.logits,
                moe_overrides=self.routes.overrides(self.name, **self.settings),
                num_classes=len(self.data.class_names),
            )  # fmt: skip
        expert = self.affinity["most_specialised_expert"] if expert < 0 else expert
        weights = self.records[self.layer]["combine_weights"]
        self.ablation = analysis.ablation.summary(
            self.scan, expert, weights, self.data.labels, self.data.class_names, model=self.name
        )
        return self.ablation

    def _ablated(self) -> dict:
        if self.ablation is None:
            raise ValueError(f"no ablation of {self.name} yet; call Study.ablate(expert) first")
        return self.ablation

    def ablation_figures(self) -> list[go.Figure]:
        """The per-expert accuracy change, then the per-class change of the ablated expert."""
        expert, where = self._ablated()["expert"], f"{self.name}, layer {self.layer}"
        return [
            viz.expert_ablation_bars(
                self.scan.per_expert_change,
                title=f"{where}: accuracy change when each expert is switched off",
            ),
            viz.ablation_bars(
                self.scan.per_class_change[expert],
                self.data.class_names,
                title=f"{where}: change in accuracy per class, expert {expert} off",
            ),
        ]

    def summary_row(self) -> dict:
        """The summary table's row (after :meth:`ablate`)."""
        ablation, record, affinity = self._ablated(), self.records[self.layer], self.affinity
        return {
            "model": self.name, "layer": self.layer,
            "accuracy (these images)": analysis.accuracy(self.logits, self.data.labels),
            "dropped": record["dropped_fraction"], "entropy (nats)": analysis.router_entropy(record["gates"]),
            "class TV": affinity.get("tv_class"), "class TV shuffled": affinity.get("tv_class_shuffled"),
            "coarse TV": affinity.get("tv_coarse_class"),
            "coarse TV shuffled": affinity.get("tv_coarse_class_shuffled"),
            "specialisation": affinity["verdict"], "ablated expert": ablation["expert"],
            "ablation change": ablation["accuracy_change"],
        }  # fmt: skip


def entropy_sentence(study: Study) -> str:
    """What to notice about the router of ``study``'s layer, computed from its numbers: its mean entropy
    against log E (uniform gates), and whether the top-k ranks specialise by class all the same."""
    record, experts = study.records[study.layer], study.config.moe.num_experts
    entropy, uniform = float(analysis.router_entropy(record["gates"])), float(np.log(experts))
    share = entropy / uniform if uniform > 0 else 0.0
    looks = "nearly uniform" if share >= 0.9 else ("spread out" if share >= 0.5 else "peaked")
    sentence = (
        f"In layer {study.layer} of {study.name}, the router entropy is {fmt.nats(entropy)} against "
        f"log {experts} = {fmt.nats(uniform)} for gates spread evenly over the {experts} experts "
        f"({fmt.percent(share, 0)} of the maximum): the gates are {looks}."
    )
    affinity = study.affinity
    if affinity.get("tv_class") is None:
        return sentence
    verdict = affinity["verdict"].split(":")[0]
    tvs = f"class TV {fmt.percent(affinity['tv_class'])} against {fmt.percent(affinity['tv_class_shuffled'])}"
    if verdict.startswith("little"):
        return f"{sentence} The top-k ranks show {verdict} ({tvs} with shuffled labels)."
    link = "Yet" if share >= 0.9 else "And"
    return (
        f"{sentence} {link} routing only needs the order of the gates, and that order still depends on the "
        f"class: {verdict} ({tvs} with shuffled labels)."
    )


def foreground_split(weights: np.ndarray, foreground: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """How differently object and background patches use the experts: the total-variation distance between
    the experts' shares of the routed weight (``weights [B, P, E]``, patches only) of the ``foreground``
    ``[B, P]`` patches and of the others, and the same distance with the object/background labels shuffled
    over the patches (``seed``): what finite samples give when the router ignores the difference."""
    weights, foreground = np.asarray(weights, np.float64), np.asarray(foreground, bool)
    if foreground.all() or not foreground.any():
        raise ValueError("foreground marks every patch or none: nothing to compare")

    def distance(mask: np.ndarray) -> float:
        inside, outside = weights[mask].sum(axis=0), weights[~mask].sum(axis=0)  # [E]
        return float(0.5 * np.abs(inside / inside.sum() - outside / outside.sum()).sum())

    shuffled = np.random.default_rng(seed).permutation(foreground.ravel()).reshape(foreground.shape)
    return distance(foreground), distance(shuffled)


def foreground_sentence(study: Study) -> str:
    """What to notice about object against background patches in ``study``'s layer, from its numbers
    (``analysis.routes.foreground_patches``, :func:`foreground_split`)."""
    foreground = analysis.routes.foreground_patches(study.data.images, study.config.patch_size)
    weights = np.asarray(study.records[study.layer]["combine_weights"])[:, int(study.config.pool == "cls") :]
    where = f"In layer {study.layer} of {study.name}"
    if foreground.all() or not foreground.any():
        return (
            f"{where}: every patch looks alike to the corner test, so object and background cannot be told."
        )
    tv, shuffled = foreground_split(weights, foreground)
    split = "the router separates them" if tv - shuffled >= 0.05 else "the router barely tells them apart"
    return (
        f"{where}, object patches ({fmt.percent(foreground.mean(), 0)} of all patches: those whose colour "
        f"differs from the image's corners) and background patches share their routed weight among the "
        f"experts differently by {fmt.percent(tv)} (total variation), against {fmt.percent(shuffled)} with "
        f"the object/background labels shuffled: {split}."
    )


def patch_context(images: np.ndarray, image_index, patch_index, patch_size: int, colors) -> np.ndarray:
    """Patch ``patch_index[m]`` of image ``image_index[m]`` (``images`` uint8 ``[B, H, W, C]``, patches in
    rows) with a ring of its neighbouring patches (grey beyond the image's edge) and a one-pixel frame in
    ``colors[m]`` (hex) drawn in the ring around it: uint8 ``[M, 3 x patch_size, 3 x patch_size, 3]``."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images has shape {images.shape}; expected [B, H, W, C] uint8")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    image_index, patch_index = np.asarray(image_index, int), np.asarray(patch_index, int)
    colors = list(colors)
    if not image_index.shape == patch_index.shape == (len(colors),):
        raise ValueError("image_index, patch_index and colors must be one-dimensional and of one length")
    p = int(patch_size)
    cols = images.shape[2] // p
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=128)
    crops = []
    for b, patch, color in zip(image_index, patch_index, colors, strict=True):
        r, c = divmod(int(patch), cols)
        crop = padded[b, r * p : r * p + 3 * p, c * p : c * p + 3 * p].copy()
        rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
        crop[p - 1, p - 1 : 2 * p + 1] = crop[2 * p, p - 1 : 2 * p + 1] = rgb
        crop[p - 1 : 2 * p + 1, p - 1] = crop[p - 1 : 2 * p + 1, 2 * p] = rgb
        crops.append(crop)
    return np.stack(crops)


def routing_group(index: int, group_size: int, count: int, limit: int = 8) -> np.ndarray:
    """The images routed together with image ``index`` (its routing group: ``group_size`` images in order,
    of ``count``), at most ``limit`` of them, ``index`` among them."""
    start = index - index % group_size
    members = np.arange(start, min(start + group_size, count))
    if len(members) <= limit:
        return members
    first = min(max(index - start - limit // 2, 0), len(members) - limit)
    return members[first : first + limit]


def low_capacity_pair(routes: Routes, name: str, *, layer: int, k: int, capacity_factor: float) -> dict:
    """``{"vanilla": Study, "BPR": Study}``: model ``name`` at MoE ``layer`` routed at ``capacity_factor``
    without and with Batch Prioritized Routing (the V-MoE paper's view of dropped patches)."""
    return {
        word: Study(routes, name, layer=layer, k=k, capacity_factor=capacity_factor, batch_priority=bpr)
        for word, bpr in (("vanilla", False), ("BPR", True))
    }


def _kept_patches(study: Study) -> np.ndarray:
    """``[B, P]``: how many of each patch's shown choices were kept in ``study``'s layer (class token
    left out)."""
    record = study.records[study.layer]
    k = analysis.shown_choices(study.config.moe, study.settings["k"])
    kept = analysis.routes.kept_choices(record["gates"], record["combine_weights"], k)
    return kept[:, int(study.config.pool == "cls") :]


def dropped_patches_figure(pair: Mapping[str, Study], indices) -> go.Figure:
    """The images ``indices`` (e.g. :func:`routing_group`) once per routing of ``pair``
    (:func:`low_capacity_pair`), patches that lost every choice black (:func:`viz.dropped_patch_rows`)."""
    first = next(iter(pair.values()))
    indices = np.asarray(indices, int)
    kept = {word: _kept_patches(study)[indices] for word, study in pair.items()}
    k = analysis.shown_choices(first.config.moe, first.settings["k"])
    title = (
        f"{first.name}, layer {first.layer}, capacity factor {first.settings['capacity_factor']:g}: images "
        f"{indices[0]}-{indices[-1]} (routed together); checkerboard: lost every choice, half: lost one"
    )
    return viz.dropped_patch_rows(
        first.data.images[indices], kept, k=k, patch_size=first.config.patch_size, title=title
    )


def drop_summary(pair: Mapping[str, Study]) -> dict[str, dict[str, float | None]]:
    """Per routing of ``pair``, over all evaluated images in its layer: ``lost_every`` (share of patches that
    lost every choice), ``gate_lost`` and ``gate_kept`` (mean top gate of those patches and of the patches
    that kept every choice; None when there are none), ``background_lost`` (share of background among the
    patches that lost every choice, ``analysis.routes.foreground_patches``) and ``background_all`` (among
    all patches)."""
    result = {}
    for word, study in pair.items():
        kept = _kept_patches(study)
        k = analysis.shown_choices(study.config.moe, study.settings["k"])
        start = int(study.config.pool == "cls")
        top_gate = np.asarray(study.records[study.layer]["gates"])[:, start:].max(axis=-1)  # [B, P]
        background = ~analysis.routes.foreground_patches(study.data.images, study.config.patch_size)
        lost, full = kept <= 0, kept >= k
        result[word] = {
            "lost_every": float(lost.mean()),
            "gate_lost": float(top_gate[lost].mean()) if lost.any() else None,
            "gate_kept": float(top_gate[full].mean()) if full.any() else None,
            "background_lost": float(background[lost].mean()) if lost.any() else None,
            "background_all": float(background.mean()),
        }
    return result


def drop_sentence(pair: Mapping[str, Study]) -> str:
    """What to notice in the dropped-patch view, from :func:`drop_summary` (over all evaluated images)."""
    summary, first = drop_summary(pair), next(iter(pair.values()))
    parts = []
    for word, s in summary.items():
        if s["gate_lost"] is None:
            parts.append(f"{word} drops no patch entirely")
            continue
        kept = "-" if s["gate_kept"] is None else f"{s['gate_kept']:.2f}"
        parts.append(
            f"{word} drops every choice of {fmt.percent(s['lost_every'])} of the patches, whose mean top "
            f"gate is {s['gate_lost']:.2f} (kept patches: {kept}); {fmt.percent(s['background_lost'], 0)} of "
            "them are background"
        )
    share = next(iter(summary.values()))["background_all"]
    text = (
        f"Over all {first.data.count:,} images at capacity factor {first.settings['capacity_factor']:g} in "
        f"layer {first.layer}: " + "; ".join(parts) + f" (background: {fmt.percent(share, 0)} of patches)."
    )
    bpr = summary.get("BPR", {})
    if bpr.get("background_lost") is not None:
        excess = bpr["background_lost"] - share
        which = (
            "BPR drops background more often than its share"
            if excess > 0.05
            else ("BPR drops object patches more often than their share" if excess < -0.05 else None)
        )
        text += (
            f" {which}: the router is least sure about them."
            if which
            else " BPR drops background about as often as it occurs: what it drops is the low-gate patches, "
            "and here those are not mostly background."
        )
    return text


def layer_specialisation(study: Study) -> dict[int, analysis.Specialisation]:
    """``{MoE layer: analysis.class_specialisation}`` of ``study``'s model on the fine class labels, every
    layer (the V-MoE paper sees experts correlate with classes mostly in the later layers)."""
    labels, names = study.data.label_sets["class"]
    return {
        layer: analysis.class_specialisation(record["combine_weights"], labels, len(names))
        for layer, record in study.records.items()
    }


def specialisation_by_layer(study: Study) -> str:
    """The measured side of notebook 03's "paper says / here we see": class TV against its shuffled-label
    baseline in every MoE layer of ``study``'s model."""
    parts = [
        f"layer {layer} {fmt.percent(s.tv, 0)} (shuffled {fmt.percent(s.baseline, 0)})"
        for layer, s in layer_specialisation(study).items()
    ]
    return (
        f"class TV of {study.name}, first to last MoE layer: " + ", ".join(parts) + "; the excess over the "
        "shuffled baseline is how much routing depends on the class."
    )


def image_with_drops(dropped: np.ndarray, preferred: int, group_size: int) -> int:
    """``preferred`` if it has dropped choices (``dropped [B]`` counts per image) or no image has any;
    else the image with the most drops in ``preferred``'s routing group (images ``group_size`` at a time,
    in order), else the image with the most drops overall (ties to the lower index).

    A headless reader sees only the default image; an image early in its routing group finds free slots
    and loses nothing, so without this the static view would never show a dropped patch."""
    dropped = np.asarray(dropped)
    if dropped[preferred] > 0 or not dropped.any():
        return int(preferred)
    start = preferred - preferred % group_size
    group = dropped[start : start + group_size]
    if group.any():
        return start + int(np.argmax(group))
    return int(np.argmax(dropped))


def saved_figures(studies: Mapping[str, Study], main: str, *, image_index: int) -> dict:
    """What notebook 03 saves: the selection, the summary rows, the affinity and ablation sentences, the
    per-layer numbers of every study, and the main model's headline numbers (:data:`HEADLINE`)."""
    if main not in studies:
        raise ValueError(f"main={main!r} is not valid; expected one of the studies {list(studies)}")
    first = studies[main]
    return {
        "eval_images": first.data.count,
        "batch_size": first.data.batch_size,
        "selection": dict(first.settings, image_index=image_index, layer=first.layer),
        "summary": [s.summary_row() for s in studies.values()],
        "affinity_sentences": {n: s.affinity["sentence"] for n, s in studies.items()},
        "ablation_sentences": {n: s.ablation["sentence"] for n, s in studies.items()},
        "per_layer": {n: analysis.per_layer(s.records) for n, s in studies.items()},
        "main_dropped_fraction": first.records[first.layer]["dropped_fraction"],
        "main_specialisation": first.affinity["verdict"],
        "main_ablation_change": first.ablation["accuracy_change"],
    }


class Explorer:
    """The live routing explorer over ``routes``' models and images, first showing ``model`` at this
    selection: controls :attr:`image`, :attr:`model`, :attr:`layer`, :attr:`k`, :attr:`capacity_factor`,
    :attr:`batch_priority` (ipywidgets), :attr:`info` (HTML), and the ``FigureWidget`` views
    :attr:`patches`, :attr:`gates`, :attr:`load`; :attr:`widget` lays them out. Changing any control's
    ``value`` routes again if needed (through :class:`Routes`' cache) and redraws."""

    def __init__(self, routes: Routes, *, model: str, image_index: int = 0, layer: int = -1, k: int = 2,
                 capacity_factor: float = 1.0, batch_priority: bool = False):  # fmt: skip
        self.routes = routes
        config = routes.config(model)
        num_experts = max(routes.config(n).moe.num_experts for n in routes.models)
        slider = dict(continuous_update=False)
        last = routes.data.count - 1
        self.image = widgets.IntSlider(value=image_index, min=0, max=last, description="image", **slider)
        self.model = widgets.Dropdown(options=list(routes.models), value=model, description="model")
        self.layer = widgets.Dropdown(
            options=list(models.moe_layers(config)),
            value=analysis.resolve_layer(config, layer),
            description="MoE layer",
        )
        self.k = widgets.IntSlider(value=k, min=1, max=num_experts, description="k", **slider)
        self.capacity_factor = widgets.FloatSlider(
            value=capacity_factor, min=0.05, max=2.5, step=0.05, description="capacity f.",
            readout_format=".2f", **slider,
        )  # fmt: skip
        self.batch_priority = widgets.Checkbox(value=batch_priority, description="Batch Prioritized Routing")
        self.info = widgets.HTML()
        self.patches, self.gates, self.load = go.FigureWidget(), go.FigureWidget(), go.FigureWidget()
        self._updating = False
        for control in (
            self.image,
            self.model,
            self.layer,
            self.k,
            self.capacity_factor,
            self.batch_priority,
        ):
            control.observe(self.update, names="value")
        self.update()
        self.widget = widgets.VBox([
            widgets.HBox([self.image, self.model, self.layer]),
            widgets.HBox([self.k, self.capacity_factor, self.batch_priority]),
            self.info, self.patches, self.gates, self.load,
        ])  # fmt: skip

    def update(self, change: Any = None) -> None:
        """Redraw every view for the controls' current values (an ipywidgets observer)."""
        if self._updating:  # a control set below (the layer list of a new model) fires again: ignore it
            return
        self._updating = True
        try:
            name = self.model.value
            config = self.routes.config(name)
            self.k.disabled = self.batch_priority.disabled = config.moe.router != "top_k"
            self.capacity_factor.disabled = config.moe.router == "soft"
            layers = list(models.moe_layers(config))
            if list(self.layer.options) != layers:
                self.layer.options = layers  # resets the value to the first layer
            study = Study(
                self.routes,
                name,
                layer=self.layer.value,
                k=min(self.k.value, config.moe.num_experts),
                capacity_factor=self.capacity_factor.value,
                batch_priority=self.batch_priority.value,
            )
            index = self.image.value
            _replace(self.patches, study.patch_figure(index))
            _replace(self.gates, study.gate_figure(index))
            _replace(self.load, study.load_figure())
            self.info.value = study.info_html(index)
        finally:
            self._updating = False


def _replace(widget: go.FigureWidget, fig: go.Figure) -> None:
    with widget.batch_update():
        widget.data = []
        widget.layout = fig.layout
        widget.add_traces(list(fig.data))


def ablation_noise_sentence(study: Study) -> str:
    """How large an accuracy change the ablation can tell from noise on ``study``'s images: twice the
    binomial standard error of the overall accuracy, and of a class of the median size."""
    accuracy = float(analysis.accuracy(study.logits, study.data.labels))
    counts = np.bincount(study.data.labels, minlength=len(study.data.class_names))
    median = int(np.median(counts[counts > 0]))
    spread = float(np.sqrt(max(accuracy * (1 - accuracy), 1e-12)))
    overall, per_class = 2 * spread / np.sqrt(study.data.count), 2 * spread / np.sqrt(max(median, 1))
    return (
        f"Noise: at {fmt.percent(accuracy)} accuracy, two standard errors are about "
        f"{100 * overall:.1f} points on all {study.data.count:,} images and {100 * per_class:.0f} points "
        f"on a class of {median} images, so read the overall change first and a single class's bar only "
        "when it is far larger than that."
    )
