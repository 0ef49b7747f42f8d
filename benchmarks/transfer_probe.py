"""Transfer benchmark: does notebook 02's upstream pre-training help the downstream tasks? A linear probe.

For a preset and seed, this takes notebook 02's ``dense`` model from the artifact cache (trained now if it is
missing: seconds under smoke, about a minute under cpu) and a randomly initialised ViT of the same config
(``nnx.Rngs(seed)``). For each of :data:`sparse_experts.datasets.DOWNSTREAM_TASKS` it extracts both models'
frozen pre-logit features of the train and test splits (at 02's image size), fits a linear probe
(:func:`sparse_experts.transfer.linear_probe`) on train, scores it on test, and compares the two probes on
the same test images with the paired bootstrap over test images (:func:`sparse_experts.analysis.bootstrap.
paired`): the gap upstream - random and its standard error. One model per side and one probe fit each: the
error bars count the test images' noise only, not the seed noise of pre-training or initialisation.
``shapes_shift``'s test split is its shifted test.

    .venv/bin/python benchmarks/transfer_probe.py                   # cpu preset, seed 0
    .venv/bin/python benchmarks/transfer_probe.py --preset smoke    # seconds: proves the code runs

The JSON (default ``benchmarks/results/transfer_probe_<preset>.json``) holds, per task, both probes'
accuracies and standard errors, the gap, two standard errors, whether the gap is resolved, the task's
group, the wall times, and the preset, seed and cache key of the upstream model, with the provenance.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flax import nnx
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared _timing module
from _timing import write_record  # noqa: E402

from sparse_experts import datasets, models, paths, transfer
from sparse_experts.analysis import bootstrap
from sparse_experts.workbook import presets, zoo

MODEL = "dense"  # notebook 02's model whose features are probed


def default_out(preset: str) -> Path:
    return paths.repo_root() / "benchmarks" / "results" / f"transfer_probe_{preset}.json"


def verdict(gap: float, resolved: bool) -> str:
    """ "upstream wins" / "random wins" when the gap exceeds two standard errors, else "within noise"."""
    if not resolved:
        return "within noise"
    return "upstream wins" if gap > 0 else "random wins"


def probe_task(
    task: str, upstream: models.ViT, random: models.ViT, *, image_size: int, batch_size: int, c: float
) -> dict[str, Any]:
    """Both models' probes on ``task`` (fitted on train, scored on test) and their paired comparison."""
    info = datasets.info(task)
    row: dict[str, Any] = {"task": task, "group": info.group, "num_classes": info.num_classes}
    correct, accuracy, wall = {}, {}, {}
    for side, model in (("upstream", upstream), ("random", random)):
        start = time.perf_counter()
        kw = dict(image_size=image_size, batch_size=batch_size)
        train_x, train_y = transfer.features(model, task, "train", **kw)
        test_x, test_y = transfer.features(model, task, "test", **kw)
        features_s = time.perf_counter() - start
        result = transfer.linear_probe(train_x, train_y, test_x, test_y, c=c)
        wall[side] = {
            "features_s": round(features_s, 3),
            "probe_s": round(time.perf_counter() - start - features_s, 3),
        }
        correct[side], accuracy[side] = result.correct, result.accuracy
        row[f"{side}_probe_iterations"] = result.iterations
    row.update(
        train_examples=int(len(train_y)), test_examples=int(len(test_y)), feature_dim=int(test_x.shape[1])
    )
    paired = bootstrap.paired(correct["upstream"], correct["random"])
    row.update(
        upstream_accuracy=accuracy["upstream"],
        random_accuracy=accuracy["random"],
        upstream_se=paired.se_a,
        random_se=paired.se_b,
        gap=paired.gap,
        gap_se=paired.gap_se,
        gap_two_se=2 * paired.gap_se,
        resolved=paired.resolved,
        verdict=verdict(paired.gap, paired.resolved),
        chance=1 / info.num_classes,
        bootstrap=paired.to_dict(),
        wall_s=wall,
    )
    return row


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table: task, group, both probes' test accuracy (%), the gap +- 2 SE (points), verdict."""
    lines = [
        "| task | group | upstream probe % | random probe % | gap +- 2 SE (points) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['group']} | {100 * r['upstream_accuracy']:.1f} "
            f"| {100 * r['random_accuracy']:.1f} | {100 * r['gap']:+.1f} +- {100 * r['gap_two_se']:.1f} "
            f"| {r['verdict']} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset",
        default="cpu",
        help=f"preset of notebook 02's models, one of {presets.PRESET_NAMES} (default cpu)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of notebook 02 and of the random model")
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the probes (default 1)")
    parser.add_argument("--batch-size", type=int, default=500, help="images per forward pass (default 500)")
    parser.add_argument(
        "--tasks", nargs="+", choices=datasets.DOWNSTREAM_TASKS, default=None, help="default: every task"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        params = presets.resolve(zoo.NOTEBOOK, args.preset, args.seed)
    except ValueError as error:  # presets.ParameterError: unknown preset, or a seed out of range
        sys.exit(f"transfer_probe: {error}")
    trained = zoo.get(MODEL, params, args.seed)
    upstream_s = time.perf_counter() - started
    random = models.ViT(trained.model.config, rngs=nnx.Rngs(args.seed))
    tasks = tuple(args.tasks or datasets.DOWNSTREAM_TASKS)
    rows = []
    for task in (bar := tqdm(tasks, desc="linear probes", unit="task")):
        bar.set_postfix_str(task)
        rows.append(
            probe_task(
                task,
                trained.model,
                random,
                image_size=params["image_size"],
                batch_size=args.batch_size,
                c=args.c,
            )
        )
    table = format_table(rows)
    how = "trained now" if trained.trained_now else "from the cache"
    print(
        f"preset={args.preset} seed={args.seed}: notebook 02's {MODEL} model {trained.path.name[:12]} "
        f"({how}, upstream test accuracy {trained.metrics['test']['accuracy']:.3f}) against a random "
        "init of its config"
    )
    print(table)
    record = {
        "benchmark": "transfer_probe",
        "description": "linear probes (multinomial logistic regression on standardised frozen pre-logit "
        "features, fitted on each downstream task's train split, scored on its test split) on notebook 02's "
        f"{MODEL} model and on a randomly initialised model of the same config; gap = upstream - random "
        "with its paired-bootstrap standard error over test images (one model and one fit per side: no "
        "seed noise)",
        "preset": args.preset,
        "seed": args.seed,
        "model": MODEL,
        "cache_key": trained.path.name,
        "trained_now": trained.trained_now,
        "upstream_dataset": params["dataset"],
        "upstream_test_accuracy": trained.metrics["test"]["accuracy"],
        "image_size": params["image_size"],
        "width": trained.model.config.width,
        "depth": trained.model.config.depth,
        "probe_c": args.c,
        "batch_size": args.batch_size,
        "upstream_model_s": round(upstream_s, 3),
        "tasks": rows,
        "table": table,
    }
    return write_record(args.out or default_out(args.preset), record, started)


if __name__ == "__main__":
    main()
