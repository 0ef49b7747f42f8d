"""Notebook 05's pool: upstream models that differ the way the low-data transfer paper's do, as cache specs.

Mustafa et al. (2020) build ensembles from a pool whose members were pre-trained differently: other
architectures, other label sets, other subsets of the upstream data, other augmentation, other seeds. Here
every member is notebook 02's recipe (its knobs: image size, width, depth, steps, learning rate, ...) with
one thing changed, named by its *kind*:

=================  ============  ==========================================================================
member             kind          what differs from 02's ``dense`` (seed 0)
=================  ============  ==========================================================================
dense              reference     nothing: 02's dense ViT (the very cache entry)
dense_s1           seed          seed 1 (02's second dense seed when 02 trains several)
vmoe, vmoe_s1      architecture  02's main V-MoE (every-2, k=2), seeds 0 and 1
expert_choice      architecture  02's expert-choice V-MoE
soft_moe           architecture  02's Soft MoE
dense_large        architecture  02's wider dense ViT
dense_narrow       architecture  half the width (and MLP width)
dense_bigpatch      architecture  patches twice as wide (a quarter of the tokens)
dense_coarse       labels        the 10 family labels instead of the 60 fine classes
dense_half         subset        only the 30 classes of the first five families
dense_polygons     subset        only the 6 classes of the 'polygons' family
dense_augment      augmentation  random crops and flips
=================  ============  ==========================================================================

A member's *upstream accuracy* is on the test images of its own label set (its classes, or the families),
so it is comparable between members of one label set only. The members shared with notebook 02 are the
same cache entries: a run of 02 trains them for 05 and the other way round.

Shapes: M members.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sparse_experts import datasets, models
from sparse_experts.workbook import cache, zoo
from sparse_experts.workbook.configs.ensembles import MEMBER_NAMES

KINDS = ("reference", "seed", "architecture", "labels", "subset", "augmentation")
FAMILY_FOR_SUBSET = "polygons"


@dataclass(frozen=True)
class Member:
    """One pool member: its ``name``, ``kind`` (:data:`KINDS`), a one-line ``description`` and the cache
    ``spec`` that trains it."""

    name: str
    kind: str
    description: str
    spec: cache.TrainSpec


def _family_classes(params: Mapping[str, Any], families: Sequence[int]) -> tuple[int, ...]:
    """The fine classes whose family (coarse class) is one of ``families``, in label order."""
    fine_to_coarse = datasets.info(params["dataset"]).fine_to_coarse
    return tuple(c for c, family in enumerate(fine_to_coarse) if family in set(families))


def _dense_variant(params: Mapping[str, Any], **changes: Any) -> cache.TrainSpec:
    base = zoo.spec("dense", params, params["seed"])
    model = changes.pop("model", base.model)
    return dataclasses.replace(base, model=model, **changes)


def _build(name: str, params: Mapping[str, Any]) -> Member:
    p, seed = params, params["seed"]
    from_02 = {
        "dense": ("reference", "02's dense ViT", "dense", seed),
        "dense_s1": ("seed", "02's dense ViT, the next seed", "dense", seed + 1),
        "vmoe": ("architecture", "02's main V-MoE (every-2 layers, k=2)", "vmoe_every2_k2", seed),
        "vmoe_s1": ("architecture", "02's main V-MoE, the next seed", "vmoe_every2_k2", seed + 1),
        "expert_choice": ("architecture", "02's expert-choice V-MoE", "expert_choice", seed),
        "soft_moe": ("architecture", "02's Soft MoE", "soft_moe", seed),
        "dense_large": ("architecture", "02's wider dense ViT", "dense_large", seed),
    }
    if name in from_02:
        kind, text, model_name, model_seed = from_02[name]
        return Member(name, kind, text, zoo.spec(model_name, p, model_seed))
    base = zoo.model_config("dense", p)
    if name == "dense_narrow":
        width = max(p["num_heads"], base.width // 2)
        model = base.replace(width=width, mlp_dim=base.mlp_dim // 2)
        return Member(name, "architecture", f"dense ViT of width {width}", _dense_variant(p, model=model))
    if name == "dense_bigpatch":
        patch = 2 * p["patch_size"]
        if p["image_size"] % patch:
            raise ValueError(f"dense_bigpatch needs image_size={p['image_size']} divisible by {patch}")
        model = base.replace(patch_size=patch, name=f"mu/{patch}")
        text = f"dense ViT on {patch}x{patch} patches ({model.num_patches} tokens)"
        return Member(name, "architecture", text, _dense_variant(p, model=model))
    if name == "dense_coarse":
        families = datasets.info(p["dataset"]).num_coarse_classes
        model = base.replace(num_classes=families)
        text = f"dense ViT on the {families} family labels"
        return Member(name, "labels", text, _dense_variant(p, model=model, label="coarse_label"))
    if name in ("dense_half", "dense_polygons"):
        info = datasets.info(p["dataset"])
        if name == "dense_half":
            families, text = range(info.num_coarse_classes // 2), "the first half of the families"
        else:
            families = [list(info.coarse_class_names).index(FAMILY_FOR_SUBSET)]
            text = f"the {FAMILY_FOR_SUBSET!r} family only"
        classes = _family_classes(p, families)
        model = base.replace(num_classes=len(classes))
        text = f"dense ViT on {text} ({len(classes)} classes)"
        return Member(name, "subset", text, _dense_variant(p, model=model, classes=classes))
    if name == "dense_augment":
        augment = datasets.info(p["dataset"]).augmentations
        text = f"dense ViT trained with {' and '.join(augment)} augmentation"
        return Member(name, "augmentation", text, _dense_variant(p, augment=augment))
    raise ValueError(f"pool member name={name!r} is unknown; expected one of {MEMBER_NAMES}")


def members(names: Sequence[str], params: Mapping[str, Any]) -> list[Member]:
    """The pool members ``names`` under notebook 02's knobs ``params`` (:func:`zoo.models_of_run`)."""
    unknown = [n for n in names if n not in MEMBER_NAMES]
    if unknown:
        raise ValueError(f"pool members {unknown} are unknown; expected names from {MEMBER_NAMES}")
    return [_build(name, params) for name in names]


def card(member: Member, trained: cache.Trained | None = None) -> dict[str, Any]:
    """What the member is: name, kind, description, upstream label set, parameters, GFLOPs per image and,
    given its trained entry, the test accuracy on its own label set and its training time."""
    spec = member.spec
    labels = "families" if spec.label == "coarse_label" else "fine classes"
    row = {
        "member": member.name,
        "kind": member.kind,
        "what": member.description,
        "upstream labels": f"{spec.model.num_classes} {labels}",
        "params": models.param_count(spec.model),
        "GFLOPs / image": models.flops_per_image(spec.model) / 1e9,
    }
    if trained is not None:
        row["upstream test accuracy"] = trained.metrics["test"]["accuracy"]
        row["train seconds"] = trained.metrics["train_seconds"]
    return row


def train_pool(pool: Sequence[Member], log=print, **kwargs: Any) -> dict[str, cache.Trained]:
    """Every member from the cache, or trained now (members that differ only in their seed together, as
    one vmapped program: :func:`cache.get_or_train_seeds`); ``log`` gets one line per member."""
    groups: dict[str, list[Member]] = {}
    for m in pool:
        groups.setdefault(dataclasses.replace(m.spec, seed=0).key(), []).append(m)
    out: dict[str, cache.Trained] = {}
    for group in groups.values():
        what = ", ".join(m.name for m in group)
        trained = cache.get_or_train_seeds([m.spec for m in group], description=what, **kwargs)
        for m, t in zip(group, trained, strict=True):
            out[m.name] = t
            how = "trained now" if t.trained_now else "from the cache"
            log(f"{m.name:15s} {t.metrics['test']['accuracy']:.3f} upstream test accuracy ({how})")
    return {m.name: out[m.name] for m in pool}
