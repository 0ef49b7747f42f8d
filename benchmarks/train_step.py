"""Train-step benchmark: dense ViT vs V-MoE of the same backbone, and model FLOP utilisation (MFU).

For each model size, this builds a dense ViT and V-MoE twins (top-k routing, E experts in every-2
placement, k=1 and, for information, k=2) and times the compiled full train step of
:class:`sparse_experts.train.Trainer` (forward, backward, global-norm clipping and AdamW: the TrainConfig
defaults) called directly, next to a large f32 matmul (``jnp.dot`` of two ``[M, M]`` matrices) that gives
the machine's attainable peak FLOP/s in the same run. With ``--breakdown`` (the default) it also times, for
the dense model and the k=1 V-MoE, the forward pass alone and forward + backward without the optimizer
update, to show where the step's time goes. Every program is compiled and called once to warm up, then the
runs are interleaved round-robin (the order rotates each round) so machine noise hits all variants alike.

Reported per variant: median and interquartile range of the step time, the ratio to the dense step (ratio of
medians, and the median of per-round ratios), and the MFU::

    MFU = (3 x forward matmul FLOPs per image x batch) / median step time / peak FLOP/s

with the forward FLOPs from :func:`sparse_experts.models.flops_per_image` at the training capacity factor
(router plus expert buffers E x C slots per group; dispatch/combine, norms, softmax, gelu and the optimizer
count as zero: they are overhead MFU is meant to expose). XLA's own FLOP count of the compiled step
(``cost_analysis``, all ops) is saved next to it.

    .venv/bin/python benchmarks/train_step.py                    # cpu-preset and width-512 models, 10 repeats
    .venv/bin/python benchmarks/train_step.py --sizes w512 --batch-w512 128 --repeats 12
    .venv/bin/python benchmarks/train_step.py --quick --repeats 2  # tiny smoke sizes

Targets (issue 5, this CPU): the k=1 V-MoE step at most 1.3x the dense step of the same backbone; MFU at
least 40% for the width-512 model, full step including the optimizer. JSON: ``outputs/benchmarks/
train_step.json`` (provenance, sizes, per-variant stats, targets).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared _timing module
from _timing import summarize, time_interleaved, write_record  # noqa: E402

from sparse_experts import models, parallel, paths
from sparse_experts.train import TrainConfig, Trainer, cross_entropy

# The `cpu` preset model of notebook 02 (keep in step with the notebook), and the width-512 model.
SIZES: dict[str, dict[str, Any]] = {
    "cpu": dict(
        arch=dict(width=64, depth=6, mlp_dim=256, num_heads=4, image_size=16, num_classes=60, pool="gap"),
        patch=4,
        batch=128,
    ),
    "w512": dict(
        arch=dict(width=512, depth=6, mlp_dim=2048, num_heads=8, image_size=32, num_classes=60, pool="gap"),
        patch=4,
        batch=64,
    ),
}
QUICK_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        arch=dict(width=32, depth=2, mlp_dim=64, num_heads=2, image_size=8, num_classes=10, pool="gap"),
        patch=4,
        batch=8,
    ),
}
NUM_EXPERTS = 8
PLACEMENT = "every-2"
CAPACITY_FACTOR = 1.05  # V-MoE's training capacity factor
GROUP_SIZE = 8  # images per routing group (see README: C per group and the E x C buffer overhead)
MATMUL_SIZE = 4096
QUICK_MATMUL_SIZE = 256
TARGET_MOE_RATIO = 1.3  # k=1 V-MoE step / dense step
TARGET_MFU = 0.40  # width-512 model, full step
MFU_TARGET_SIZE = "w512"
PEAK = "matmul"


def model_config(size: dict[str, Any], k: int | None, group_size: int) -> models.VitConfig:
    moe = None
    if k is not None:
        moe = models.MoeConfig(
            num_experts=NUM_EXPERTS,
            k=k,
            capacity_factor=CAPACITY_FACTOR,
            group_size=group_size,
            placement=PLACEMENT,
        )
    return models.vit_config(f"mu/{size['patch']}", **size["arch"], moe=moe)


def _batch(config: models.VitConfig, batch_size: int, seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    shape = (batch_size, config.image_size, config.image_size, config.channels)
    return {
        "image": rng.uniform(-1, 1, shape).astype(np.float32),
        "label": rng.integers(0, config.num_classes, batch_size).astype(np.int32),
    }


class StepProgram:
    """The compiled full train step of a Trainer, called on its own (donated) state each time."""

    def __init__(self, config: models.VitConfig, batch_size: int):
        model = models.ViT(config, rngs=nnx.Rngs(0))
        self.trainer = Trainer(model, TrainConfig(total_steps=1000), seed=0)
        self.batch = parallel.shard_batch(_batch(config, batch_size), self.trainer.mesh)
        t = self.trainer
        self.compiled = t._step.lower(t.state, t.rest, self.batch, t._key).compile()

    def __call__(self):
        t = self.trainer
        t.state, metrics = self.compiled(t.state, t.rest, self.batch, t._key)
        return t.state, metrics


class PartProgram:
    """Forward only, or forward + backward (gradients of the same objective, no optimizer update)."""

    def __init__(self, config: models.VitConfig, batch_size: int, *, backward: bool):
        model = models.ViT(config, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        has_moe = config.moe is not None

        def objective(params, rest, batch, rng):
            model = nnx.merge(graphdef, params, rest)
            if has_moe:
                logits, stats = model(
                    batch["image"], train=True, return_stats="moe", moe_overrides={"rng": rng}
                )
                aux = sum(r["aux"]["importance"] + r["aux"]["load"] for r in stats["moe"].values())
            else:
                logits, aux = model(batch["image"], train=True), 0.0
            return cross_entropy(logits, batch["label"]) + 0.005 * aux

        fn = jax.grad(objective) if backward else objective
        self.args = (params, rest, jax.tree.map(jnp.asarray, _batch(config, batch_size)), jax.random.key(0))
        self.compiled = jax.jit(fn).lower(*self.args).compile()

    def __call__(self):
        return self.compiled(*self.args)


class MatmulProgram:
    """``calls`` back-to-back products of two ``[M, M]`` f32 matrices per timed call (the first one also
    wakes the thread pool after a long step, so the peak is taken as the fastest round, not the median)."""

    def __init__(self, size: int, calls: int = 3):
        keys = jax.random.split(jax.random.key(1))
        self.args = tuple(jax.random.normal(key, (size, size), jnp.float32) for key in keys)
        self.compiled = jax.jit(jnp.dot).lower(*self.args).compile()
        self.calls = calls
        self.flops = 2.0 * size**3 * calls

    def __call__(self):
        out = None
        for _ in range(self.calls):
            out = self.compiled(*self.args)
            out.block_until_ready()
        return out


def xla_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend reports it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def bench_size(
    name: str, size: dict[str, Any], batch: int, group_size: int, matmul: int, repeats: int, breakdown: bool
) -> dict[str, Any]:
    configs = {"dense": model_config(size, None, group_size)}
    configs["moe_k1"] = model_config(size, 1, group_size)
    configs["moe_k2"] = model_config(size, 2, group_size)
    programs: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    for variant, config in configs.items():
        step = StepProgram(config, batch)
        programs[f"{variant}/step"] = step
        cf = None if config.moe is None else CAPACITY_FACTOR
        fwd = models.flops_per_image(config, capacity_factor=cf) * batch
        capacity = None
        if config.moe is not None:
            from sparse_experts.routing import layer_capacity

            capacity = layer_capacity("top_k", group_size * config.num_tokens, NUM_EXPERTS, config.moe.k, cf)
        info[variant] = {
            "config": config.to_dict(),
            "forward_flops": fwd,
            "step_flops": 3.0 * fwd,
            "xla_step_flops": xla_flops(step.compiled),
            "params": models.param_count(config),
            "active_params": models.param_count(config, active=True),
            "capacity_per_group": capacity,
        }
        if breakdown and variant != "moe_k2":
            programs[f"{variant}/fwd"] = PartProgram(config, batch, backward=False)
            programs[f"{variant}/fwd+bwd"] = PartProgram(config, batch, backward=True)
    mm = MatmulProgram(matmul)
    programs[PEAK] = mm
    print(f"[{name}] compiled {len(programs)} programs; timing {repeats} rounds", file=sys.stderr, flush=True)

    times = time_interleaved(programs, repeats)
    peak_flops = mm.flops / float(np.min(times[PEAK]))  # the best the machine did in this run
    dense = np.asarray(times["dense/step"])
    variants = {}
    for prog, samples in times.items():
        stats = summarize(samples)
        stats["samples_s"] = [float(t) for t in samples]
        if prog == PEAK:
            stats.update(flops=mm.flops, flops_per_s=peak_flops, size=matmul)
        else:
            variant, part = prog.split("/")
            factor = {"step": 3.0, "fwd+bwd": 3.0, "fwd": 1.0}[part]
            flops = factor * info[variant]["forward_flops"]
            q25, q50, q75 = np.percentile(np.asarray(samples) / dense, [25, 50, 75])
            stats.update(
                variant=variant,
                part=part,
                flops=flops,
                flops_per_s=flops / stats["median_s"],
                mfu=flops / stats["median_s"] / peak_flops,
                ratio_to_dense_step=stats["median_s"] / float(np.median(dense)),
                paired_ratio_median=float(q50),
                paired_ratio_iqr=float(q75 - q25),
            )
        variants[prog] = stats
    moe_ratio = variants["moe_k1/step"]["ratio_to_dense_step"]
    targets = {
        "moe_k1_ratio": {"target": TARGET_MOE_RATIO, "value": moe_ratio, "met": moe_ratio <= TARGET_MOE_RATIO}
    }
    if name == MFU_TARGET_SIZE:
        mfu = variants["dense/step"]["mfu"]
        targets["dense_step_mfu"] = {"target": TARGET_MFU, "value": mfu, "met": mfu >= TARGET_MFU}
    return {
        "size": name,
        "batch": batch,
        "group_size": group_size,
        "num_tokens": configs["dense"].num_tokens,
        "models": info,
        "peak_flops_per_s": peak_flops,
        "variants": variants,
        "targets": targets,
    }


def format_table(results: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'size':<6} {'program':<14} {'median ms':>10} {'IQR ms':>8} {'x dense':>8} {'paired':>7} "
        f"{'GFLOP':>8} {'GFLOP/s':>8} {'MFU':>6}"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        for prog, stats in result["variants"].items():
            ratio = f"{stats['ratio_to_dense_step']:>8.3f}" if prog != PEAK else f"{'':>8}"
            paired = f"{stats['paired_ratio_median']:>7.3f}" if prog != PEAK else f"{'':>7}"
            mfu = f"{stats['mfu']:>6.1%}" if prog != PEAK else f"{'peak':>6}"
            lines.append(
                f"{result['size']:<6} {prog:<14} {stats['median_s'] * 1e3:>10.2f} "
                f"{stats['iqr_s'] * 1e3:>8.2f} {ratio} {paired} "
                f"{stats['flops'] / 1e9:>8.3f} {stats['flops_per_s'] / 1e9:>8.1f} {mfu}"
            )
        caps = {v: m["capacity_per_group"] for v, m in result["models"].items() if m["capacity_per_group"]}
        lines.append(
            f"{'':<6} batch={result['batch']} tokens/image={result['num_tokens']} "
            f"group_size={result['group_size']} C per group={caps} "
            f"peak={result['peak_flops_per_s'] / 1e9:.1f} GFLOP/s"
        )
        for key, t in result["targets"].items():
            cmp = "<=" if key == "moe_k1_ratio" else ">="
            lines.append(
                f"{'':<6} target {key}: {t['value']:.3f} {cmp} {t['target']}: {'ok' if t['met'] else 'MISS'}"
            )
        lines.append("")
    lines.append(
        "x dense = median / median of the dense full step; paired = median over rounds of the same ratio"
    )
    lines.append(
        "MFU = analytic matmul FLOPs (3x forward for step and fwd+bwd) / median time / peak matmul FLOP/s"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None, help="default: all")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds after the warm-up (default 10)")
    parser.add_argument("--batch-cpu", type=int, default=SIZES["cpu"]["batch"], help="batch of the cpu model")
    parser.add_argument(
        "--batch-w512", type=int, default=SIZES["w512"]["batch"], help="batch of the w512 model"
    )
    parser.add_argument("--group-size", type=int, default=GROUP_SIZE, help="images per routing group")
    parser.add_argument(
        "--matmul-size", type=int, default=None, help=f"peak matmul M (default {MATMUL_SIZE})"
    )
    parser.add_argument(
        "--breakdown",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time forward-only and forward+backward of dense and k=1 (default: on, off with --quick)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=paths.outputs_root() / "benchmarks" / "train_step.json",
        help="JSON output (default outputs/benchmarks/train_step.json)",
    )
    parser.add_argument("--quick", action="store_true", help="one tiny smoke size")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.quick and args.sizes:
        parser.error("--quick and --sizes are exclusive")
    if args.quick:
        args.sizes = list(QUICK_SIZES)
        args.group_size = min(args.group_size, QUICK_SIZES["tiny"]["batch"])
    elif args.sizes is None:
        args.sizes = list(SIZES)
    if args.breakdown is None:
        args.breakdown = not args.quick
    if args.matmul_size is None:
        args.matmul_size = QUICK_MATMUL_SIZE if args.quick else MATMUL_SIZE
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    results = []
    for name in args.sizes:
        size = {**SIZES, **QUICK_SIZES}[name]
        batch = {"cpu": args.batch_cpu, "w512": args.batch_w512}.get(name, size["batch"])
        results.append(
            bench_size(name, size, batch, args.group_size, args.matmul_size, args.repeats, args.breakdown)
        )
    table = format_table(results)
    platform = jax.default_backend()
    print(f"platform={platform} devices={jax.devices()[0].device_kind} repeats={args.repeats}")
    print(table)
    record = {
        "benchmark": "train_step",
        "description": "compiled full train step (fwd, bwd, clip, AdamW) of a dense ViT vs V-MoE (top-k, "
        f"E={NUM_EXPERTS}, {PLACEMENT}, capacity factor {CAPACITY_FACTOR}) of the same backbone, and MFU "
        "against a large f32 matmul measured in the same run; interleaved runs; times in seconds",
        "platform": platform,
        "repeats": args.repeats,
        "num_experts": NUM_EXPERTS,
        "placement": PLACEMENT,
        "capacity_factor": CAPACITY_FACTOR,
        "group_size": args.group_size,
        "matmul_size": args.matmul_size,
        "results": results,
        "targets": {r["size"]: r["targets"] for r in results},
        "table": table,
    }
    return write_record(args.out, record, started)


if __name__ == "__main__":
    main()
