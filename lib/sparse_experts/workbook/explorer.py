"""The routing explorer of notebook 03: which patches go to which expert, what gets dropped, do experts
specialise, and what does switching one off cost. Models and images come in as arguments.

Shape letters: B images, S image side, C channels, N tokens per image, E experts, K choices shown, Y classes.

- :class:`EvalSet` (:func:`load_eval_set`): the evaluated images (uint8, in the stored order), their
  labels and class names, the labellings used for affinity, and the routing batch size.
- :class:`Routes`: each model's routing over an :class:`EvalSet`, cached per test-time setting.
- :func:`study` -> :class:`Study`: one model at the default selection: its figures, per-layer table,
  specialisation (against shuffled labels) and expert-ablation summary; :func:`summary_row` and
  :func:`saved_figures` turn studies into the notebook's saved numbers.
- :func:`build` -> :class:`Explorer`: the ipywidgets controls (image, model, MoE layer, k, capacity factor,
  BPR) and plotly ``FigureWidget`` views, with the update logic; a test drives it by setting a control's
  ``value``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from sparse_experts import analysis, datasets, models
from sparse_experts.datasets import loader
from sparse_experts.workbook import viz

# The keys of the saved figures that form the notebook's headline.
HEADLINE = ("main_dropped_fraction", "main_specialisation", "main_ablation_change")


class EvalSet:
    """The evaluated images and what is known about them.

    - ``images``: uint8 ``[B, S, S, C]``, in the stored order (routing depends on a batch's other images);
    - ``labels``: ``[B]`` what the models predict; ``class_names``: ``[Y]`` their names;
    - ``label_sets``: ``{word: (labels [B], names)}`` for the affinity views, e.g. ``{"class": ...,
      "coarse class": ...}`` (default: ``{"class": (labels, class_names)}``);
    - ``batch_size``: images per routing batch (a multiple of the models' ``moe.group_size``).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        label_sets: Mapping[str, tuple[np.ndarray, Sequence[str]]] | None = None,
        *,
        batch_size: int,
        description: str = "",
    ):
        self.images = np.asarray(images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or not len(self.images):
            raise ValueError(
                f"images=<array {self.images.dtype} of shape {self.images.shape}> is not valid; expected "
                "non-empty uint8 [B, S, S, C]"
            )
        self.labels = np.asarray(labels)
        self.class_names = list(class_names)
        if self.labels.shape != (len(self.images),) or not np.issubdtype(self.labels.dtype, np.integer):
            raise ValueError(
                f"labels of shape {self.labels.shape} is not valid; expected integers [{len(self.images)}]"
            )
        if len(self.labels) and not 0 <= self.labels.min() <= self.labels.max() < len(self.class_names):
            raise ValueError(f"labels hold values outside [0, {len(self.class_names)}) (the class_names)")
        self.label_sets = dict(label_sets or {"class": (self.labels, self.class_names)})
        for word, (ys, _) in self.label_sets.items():
            if np.shape(ys) != self.labels.shape:
                raise ValueError(
                    f"label_sets[{word!r}] has {np.shape(ys)} labels; expected [{len(self.labels)}]"
                )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not valid; expected a positive integer")
        self.batch_size = batch_size
        self.description = description or f"{len(self.labels)} images, {len(self.class_names)} classes"

    def __str__(self) -> str:
        return f"{self.description}; routing batches of {self.batch_size} images"

    @functools.cached_property
    def x(self) -> np.ndarray:
        """The images as the models take them: float32 ``[B, S, S, C]`` in [-1, 1]."""
        return loader.to_float(self.images)


def eval_set(
    split: Any, info: Any, *, label: str, eval_images: int, eval_batch_size: int, name: str = ""
) -> EvalSet:
    """The first ``eval_images`` images of a loaded ``split`` (``images``, ``labels``, ``coarse_labels``, as
    ``datasets.load_split`` returns) with class names from ``info`` (``datasets.info``): the models predict
    ``label`` ("label" or "coarse_label"); the affinity views use the fine and, if any, the coarse classes.
    Routing batches hold ``min(eval_batch_size, eval_images)`` images (notebook 02's evaluation batches)."""
    if label not in ("label", "coarse_label"):
        raise ValueError(f"label={label!r} is not valid; expected 'label' or 'coarse_label'")
    total = len(split.labels)
    if isinstance(eval_images, bool) or not isinstance(eval_images, int) or not 0 < eval_images <= total:
        raise ValueError(
            f"eval_images={eval_images!r} is not valid; expected 1 to the {total} images of {name}"
        )
    fine = np.asarray(split.labels[:eval_images])
    coarse = None if split.coarse_labels is None else np.asarray(split.coarse_labels[:eval_images])
    if label == "coarse_label" and coarse is None:
        raise ValueError(f"label='coarse_label' is not valid for {name}: it has no coarse labels")
    label_sets = {"class": (fine, list(info.class_names))}
    if coarse is not None:
        label_sets["coarse class"] = (coarse, list(info.coarse_class_names))
    word = "coarse class" if label == "coarse_label" else "class"
    labels, class_names = label_sets[word]
    description = f"{name}: {eval_images} of {total} test images, {len(info.class_names)} classes" + (
        "" if coarse is None else f", {len(info.coarse_class_names)} coarse classes"
    )
    return EvalSet(
        np.asarray(split.images[:eval_images]), labels, class_names, label_sets,
        batch_size=min(eval_batch_size, eval_images), description=description,
    )  # fmt: skip


def load_eval_set(
    dataset: str, *, label: str, image_size: int, eval_images: int, eval_batch_size: int
) -> EvalSet:
    """:func:`eval_set` of the test split of ``dataset`` at ``image_size`` (generated on first use)."""
    split = loader.load_split(dataset, "test", image_size=image_size)
    return eval_set(split, datasets.info(dataset), label=label, eval_images=eval_images,
                    eval_batch_size=eval_batch_size, name=dataset)  # fmt: skip


class Routes:
    """Each model's ``(logits [B, Y], records)`` over ``data`` (``analysis.route``), cached per (model,
    test-time settings); ``trained`` maps a name to a V-MoE ``models.ViT``."""

    def __init__(self, trained: Mapping[str, models.ViT], data: EvalSet):
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


def _title_of(data: EvalSet, index: int) -> str:
    return f"image {index} ({data.class_names[data.labels[index]]})"


def patch_figure(routes: Routes, name: str, records: Mapping, index: int, layer: int, k: int) -> go.Figure:
    """Image ``index``'s patches coloured by expert (first, second... choice), dropped choices marked."""
    config = routes.config(name)
    chosen, dropped, gates = analysis.token_choices(config.moe, records[layer], index, k)
    return viz.patch_routing(
        routes.data.images[index], chosen, patch_size=config.patch_size, has_cls_token=config.pool == "cls",
        dropped=dropped, gates=gates, num_experts=config.moe.num_experts,
        title=f"{name}, layer {layer}: {_title_of(routes.data, index)}, patches by expert",
    )  # fmt: skip


def gate_figure(routes: Routes, name: str, records: Mapping, index: int, layer: int, k: int) -> go.Figure:
    """Gate values of image ``index``'s token choices (router probability; combine weight for Soft MoE)."""
    config = routes.config(name)
    chosen, dropped, gates = analysis.token_choices(config.moe, records[layer], index, k)
    word = "combine weight" if config.moe.router == "soft" else "router probability"
    return viz.gate_values(chosen, dropped, gates, has_cls_token=config.pool == "cls", word=word)


def load_figure(name: str, records: Mapping) -> go.Figure:
    return viz.expert_load_bars(records, title=f"{name}: expert load per MoE layer")


def info_html(routes: Routes, name: str, logits: np.ndarray, records: Mapping, index: int, layer: int) -> str:
    """One line on image ``index`` (true and predicted class, kept token-choices) and the layer over all
    images (dropped fraction, router entropy, accuracy)."""
    data, record = routes.data, records[layer]
    predicted = data.class_names[int(np.asarray(logits)[index].argmax())]
    return (
        f"<b>{name}</b>, layer {layer}: image {index} is <i>{data.class_names[data.labels[index]]}</i>, "
        f"predicted <i>{predicted}</i>; this image's kept token-choices in the layer: "
        f"{int(record['tokens_per_image'][index])}; over all {len(data.labels)} images: dropped "
        f"{record['dropped_fraction']:.1%}, router entropy {analysis.router_entropy(record['gates']):.2f} "
        f"nats, accuracy {analysis.accuracy(logits, data.labels):.3f}"
    )


class Study:
    """One model at one test-time setting (``k``, ``capacity_factor``, ``batch_priority``) and one MoE
    layer: figures, the per-layer table, :attr:`affinity` (specialisation summary) and, after
    :meth:`ablate`, :attr:`ablation` (ablation summary)."""

    def __init__(self, routes: Routes, name: str, layer: int, settings: Mapping[str, Any]):
        self.routes, self.name, self.settings = routes, name, dict(settings)
        self.config = routes.config(name)
        self.layer = analysis.resolve_layer(self.config, layer)
        self.logits, self.records = routes(name, **self.settings)
        self.scan: analysis.AblationScan | None = None
        self.ablation: dict | None = None

    @property
    def k(self) -> int:
        return self.settings["k"]

    def patch_figure(self, index: int) -> go.Figure:
        return patch_figure(self.routes, self.name, self.records, index, self.layer, self.k)

    def gate_figure(self, index: int) -> go.Figure:
        return gate_figure(self.routes, self.name, self.records, index, self.layer, self.k)

    def load_figure(self) -> go.Figure:
        return load_figure(self.name, self.records)

    def layer_rows(self) -> list[dict]:
        """``analysis.layer_rows``; Soft MoE's busiest expert is measured by combine weight."""
        soft = self.config.moe.router == "soft"
        return analysis.layer_rows(self.records, self.logits, self.routes.data.labels, weighted=soft)

    @functools.cached_property
    def specialisations(self) -> dict[str, analysis.Specialisation]:
        """``{word: analysis.Specialisation}`` of :attr:`layer` for each labelling of the data."""
        weights = self.records[self.layer]["combine_weights"]
        return {
            word: analysis.class_specialisation(weights, ys, len(names))
            for word, (ys, names) in self.routes.data.label_sets.items()
        }

    @functools.cached_property
    def affinity(self) -> dict:
        """``analysis.specialisation.summary`` of :attr:`layer` (sentence, verdict, TVs, ...)."""
        names = {word: names for word, (_, names) in self.routes.data.label_sets.items()}
        return analysis.specialisation.summary(self.specialisations, names, model=self.name, layer=self.layer)

    def affinity_figures(self) -> list[go.Figure]:
        """One relative expert x class heatmap per labelling."""
        return [
            viz.affinity_heatmap(
                s.relative,
                self.routes.data.label_sets[word][1],
                relative=True,
                title=f"{self.name}, layer {self.layer}: expert x {word} affinity "
                "(x the expert's overall share)",
            )  # fmt: skip
            for word, s in self.specialisations.items()
        ]

    def ablate(self, expert: int = -1) -> dict:
        """Scan every expert of :attr:`layer` (``analysis.ablation_scan``, once) and summarise switching off
        ``expert`` (-1: the most specialised one of :attr:`affinity`); sets and returns :attr:`ablation`."""
        if self.scan is None:
            data = self.routes.data
            self.scan = analysis.ablation_scan(
                self.routes.models[self.name], data.x, data.labels, self.layer, batch_size=data.batch_size,
                moe_overrides=self.routes.overrides(self.name, **self.settings), base_logits=self.logits,
                num_classes=len(data.class_names),
            )  # fmt: skip
        expert = self.affinity["most_specialised_expert"] if expert < 0 else expert
        weights = self.records[self.layer]["combine_weights"]
        self.ablation = analysis.ablation.summary(
            self.scan, expert, weights, self.routes.data.labels, self.routes.data.class_names, model=self.name
        )
        return self.ablation

    def ablation_figures(self) -> list[go.Figure]:
        """The per-expert accuracy change, then the per-class change of the ablated expert."""
        if self.scan is None or self.ablation is None:
            raise ValueError(f"no ablation of {self.name} yet; call Study.ablate(expert) first")
        expert, where = self.ablation["expert"], f"{self.name}, layer {self.layer}"
        return [
            viz.expert_ablation_bars(
                self.scan.per_expert_change,
                title=f"{where}: accuracy change when each expert is switched off",
            ),
            viz.ablation_bars(
                self.scan.per_class_change[expert],
                self.routes.data.class_names,
                title=f"{where}: change in accuracy per class, expert {expert} off",
            ),  # fmt: skip
        ]


def study(
    routes: Routes, name: str, *, layer: int, k: int, capacity_factor: float, batch_priority: bool
) -> Study:
    """A :class:`Study` of model ``name`` at MoE ``layer`` (-1: its first) with these test-time settings."""
    return Study(
        routes, name, layer, dict(k=k, capacity_factor=capacity_factor, batch_priority=batch_priority)
    )


def summary_row(s: Study) -> dict:
    """The summary table's row of one study (after :meth:`Study.ablate`)."""
    if s.ablation is None:
        raise ValueError(f"no ablation of {s.name} yet; call Study.ablate(expert) first")
    record, affinity = s.records[s.layer], s.affinity
    return {
        "model": s.name, "layer": s.layer, "accuracy": analysis.accuracy(s.logits, s.routes.data.labels),
        "dropped": record["dropped_fraction"], "entropy (nats)": analysis.router_entropy(record["gates"]),
        "class TV": affinity.get("tv_class"), "class TV shuffled": affinity.get("tv_class_shuffled"),
        "coarse TV": affinity.get("tv_coarse_class"),
        "coarse TV shuffled": affinity.get("tv_coarse_class_shuffled"),
        "specialisation": affinity["verdict"], "ablated expert": s.ablation["expert"],
        "ablation change": s.ablation["accuracy_change"],
    }  # fmt: skip


def saved_figures(studies: Mapping[str, Study], main: str, *, image_index: int) -> dict:
    """What notebook 03 saves: the selection, the summary rows, the affinity and ablation sentences, the
    per-layer numbers of every study, and the main model's headline numbers (:data:`HEADLINE`)."""
    if main not in studies:
        raise ValueError(f"main={main!r} is not valid; expected one of the studies {list(studies)}")
    first = studies[main]
    data = first.routes.data
    return {
        "eval_images": len(data.labels),
        "batch_size": data.batch_size,
        "selection": dict(first.settings, image_index=image_index, layer=first.layer),
        "summary": [summary_row(s) for s in studies.values()],
        "affinity_sentences": {n: s.affinity["sentence"] for n, s in studies.items()},
        "ablation_sentences": {n: s.ablation["sentence"] for n, s in studies.items()},
        "per_layer": {n: analysis.per_layer(s.records) for n, s in studies.items()},
        "main_dropped_fraction": first.records[first.layer]["dropped_fraction"],
        "main_specialisation": first.affinity["verdict"],
        "main_ablation_change": first.ablation["accuracy_change"],
    }


class Explorer:
    """The live routing explorer: controls :attr:`image`, :attr:`model`, :attr:`layer`, :attr:`k`,
    :attr:`capacity_factor`, :attr:`batch_priority` (ipywidgets), :attr:`info` (HTML), and the
    ``FigureWidget`` views :attr:`patches`, :attr:`gates`, :attr:`load`; :attr:`widget` lays them out.
    Changing any control's ``value`` routes again if needed (through :class:`Routes`' cache) and redraws."""

    def __init__(self, routes: Routes, *, model: str, image_index: int, layer: int, k: int,
                 capacity_factor: float, batch_priority: bool):  # fmt: skip
        self.routes = routes
        config = routes.config(model)
        num_experts = max(routes.config(n).moe.num_experts for n in routes.models)
        last = len(routes.data.labels) - 1
        slider = dict(continuous_update=False)
        self.image = widgets.IntSlider(value=image_index, min=0, max=last, description="image", **slider)
        self.model = widgets.Dropdown(options=list(routes.models), value=model, description="model")
        layers = list(models.moe_layers(config))
        self.layer = widgets.Dropdown(
            options=layers, value=analysis.resolve_layer(config, layer), description="MoE layer"
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
        for control in self.controls:
            control.observe(self.update, names="value")
        self.update()
        self.widget = widgets.VBox([
            widgets.HBox([self.image, self.model, self.layer]),
            widgets.HBox([self.k, self.capacity_factor, self.batch_priority]),
            self.info, self.patches, self.gates, self.load,
        ])  # fmt: skip

    @property
    def controls(self) -> tuple:
        return (self.image, self.model, self.layer, self.k, self.capacity_factor, self.batch_priority)

    def update(self, change: Any = None) -> None:
        """Redraw every view for the controls' current values (an ipywidgets observer)."""
        if self._updating:  # a control set below (the layer list of a new model) fires again: ignore it
            return
        self._updating = True
        try:
            name = self.model.value
            config = self.routes.config(name)
            router = config.moe.router
            self.k.disabled = self.batch_priority.disabled = router != "top_k"
            self.capacity_factor.disabled = router == "soft"
            layers = list(models.moe_layers(config))
            if list(self.layer.options) != layers:
                self.layer.options = layers  # resets the value to the first layer
            k = min(self.k.value, config.moe.num_experts)
            logits, records = self.routes(name, k, self.capacity_factor.value, self.batch_priority.value)
            index, layer = self.image.value, self.layer.value
            _replace(self.patches, patch_figure(self.routes, name, records, index, layer, k))
            _replace(self.gates, gate_figure(self.routes, name, records, index, layer, k))
            _replace(self.load, load_figure(name, records))
            self.info.value = info_html(self.routes, name, logits, records, index, layer)
        finally:
            self._updating = False


def _replace(widget: go.FigureWidget, fig: go.Figure) -> None:
    with widget.batch_update():
        widget.data = []
        widget.layout = fig.layout
        widget.add_traces(list(fig.data))


def build(routes: Routes, *, model: str, image_index: int = 0, layer: int = -1, k: int = 2,
          capacity_factor: float = 1.0, batch_priority: bool = False) -> Explorer:  # fmt: skip
    """The live explorer over ``routes``' models and images, first showing ``model`` at this selection."""
    return Explorer(routes, model=model, image_index=image_index, layer=layer, k=k,
                    capacity_factor=capacity_factor, batch_priority=batch_priority)  # fmt: skip


__all__ = [
    "HEADLINE", "EvalSet", "Explorer", "Routes", "Study", "build", "eval_set", "gate_figure", "info_html",
    "load_eval_set", "load_figure", "patch_figure", "saved_figures", "study", "summary_row",
]  # fmt: skip
