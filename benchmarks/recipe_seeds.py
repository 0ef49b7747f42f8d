"""Recipe benchmark: how far the seeds of notebook 02's dense model and main V-MoE spread under a recipe, and
how much power that leaves the main comparison.

For each recipe (notebook 02's knobs, plus optional model-config fields), this trains the ``seeds`` seeds of
``dense`` and of ``vmoe_every2_k2`` as notebook 02 does (:func:`sparse_experts.workbook.zoo.spec`, the seeds
of one model side by side as one program, the two models in two processes), or reads them from the cache
folder given, and reports per model each seed's test accuracy and validation curve, their mean and sample
std, and the paired bootstrap of the V-MoE minus dense gap over the test images and seed pairs
(:func:`sparse_experts.workbook.zoo.main_gap`): the gap and two standard errors, the figure notebook 02
calls ``gap_two_se``. On the cpu preset one recipe takes about 15 minutes on 2 cores.

    .venv/bin/python benchmarks/recipe_seeds.py --cache /tmp/recipes \\
        --recipe learning_rate=0.002,adam_b2=0.95 --recipe adam_b2=0.95 --recipe model.posemb=sincos2d

A recipe is a comma list of NAME=VALUE, changes to the preset (an empty recipe is the preset itself):
a knob of ``02_train_vmoe`` or ``model.FIELD`` (a :class:`sparse_experts.models.VitConfig` field); values
are read as JSON, else kept as text. The JSON (default ``benchmarks/results/recipe_seeds_<preset>.json``)
holds one record per recipe, with the provenance. Use a cache folder of its own: the calibration models
are not notebook 02's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from sparse_experts.workbook import cache, presets, zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import write_record  # noqa: E402

MODELS = ("dense", "vmoe_every2_k2")


def parse_recipe(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``"a=1,model.b=x"`` -> (knobs, model fields); a value is JSON where it parses, else text."""
    knobs, model = {}, {}
    for item in filter(None, text.split(",")):
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--recipe item {item!r} is not NAME=VALUE (in recipe {text!r})")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if name.startswith("model."):
            model[name.removeprefix("model.")] = value
        else:
            knobs[name] = value
    return knobs, model


def specs_of(params: dict[str, Any], model: dict[str, Any]) -> list[list[cache.TrainSpec]]:
    groups = []
    for name in MODELS:
        specs = [zoo.spec(name, params, seed) for seed in zoo.seeds_of(name, params)]
        groups.append([dataclasses.replace(s, model=s.model.replace(**model)) for s in specs])
    return groups


def measure(recipe: str, preset: str, root: Path, workers: int) -> dict[str, Any]:
    knobs, model = parse_recipe(recipe)
    params = dataclasses.asdict(presets.resolve("02_train_vmoe", preset, **knobs))  # bad knobs fail here
    groups = specs_of(params, model)  # bad model fields fail here, before any training
    started = time.perf_counter()
    trained = cache.get_or_train_groups(groups, workers=workers, root=root, descriptions=list(MODELS))
    seconds = time.perf_counter() - started
    results = {(name, e.spec.seed): e for name, entries in zip(MODELS, trained, strict=True) for e in entries}
    record: dict[str, Any] = {"recipe": recipe, "knobs": knobs, "model": model, "wall_time_s": seconds}
    for row in zoo.summarize(results):
        entries = [results[(row["model"], seed)] for seed in row["seeds"]]
        record[row["model"]] = {
            "seeds": row["seeds"],
            "test_accuracy": row["test_accuracy_per_seed"],
            "mean": row["test_accuracy"],
            "std": row["test_accuracy_std"],
            "validation_curves": [[ev["accuracy"] for ev in e.history.evals] for e in entries],
            "trained_now": any(e.trained_now for e in entries),
        }
    gap = zoo.main_gap(zoo.correct_matrices(results, params))
    record["gap"] = None if gap is None else {"gap": gap.gap, "gap_two_se": 2 * gap.gap_se}
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", action="append", required=True, help="NAME=VALUE,... (repeatable)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--cache", required=True, type=Path, help="a cache folder of its own")
    parser.add_argument("--workers", type=int, default=2, help="processes training at once (1 on a GPU)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    presets.check_preset(args.preset)
    if args.cache.resolve() == cache.cache_dir().resolve():
        raise SystemExit(f"--cache={args.cache} is the workbook's own cache; give a folder of its own")
    started, records = time.perf_counter(), []
    for recipe in args.recipe:
        records.append(measure(recipe, args.preset, args.cache, args.workers))
        r = records[-1]
        spread = {m: f"{100 * r[m]['mean']:.1f} (std {100 * (r[m]['std'] or 0):.2f})" for m in MODELS}
        two_se = "-" if r["gap"] is None else f"{100 * r['gap']['gap_two_se']:.2f}"
        print(f"{recipe or '(the preset)'}: dense {spread['dense']}, V-MoE {spread['vmoe_every2_k2']}, "
              f"2 SE of the gap {two_se} points, {r['wall_time_s']:.0f} s", flush=True)  # fmt: skip
    out = args.out or Path(__file__).parent / "results" / f"recipe_seeds_{args.preset}.json"
    write_record(out, {"benchmark": "recipe_seeds", "preset": args.preset, "records": records}, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
