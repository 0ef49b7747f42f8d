"""Notebook 07: one V-MoE training run on N processes x D devices (``python -m
sparse_experts.workbook.scale_out <spec.json>`` in every process, started by
:mod:`sparse_experts.parallel.launch`), and what it measures.

Shape letters: B batch, N tokens per image, E experts, X the size of the "expert" mesh axis, Y classes.

A run is described by a :class:`RunSpec` (model, data, mesh, steps, checkpoints) written as JSON; each
process joins the run (:func:`sparse_experts.parallel.initialize`, settings from the launcher's environment),
builds the same model from the same seed, reads only its rows of every global batch (batch t a function of
(seed, t): :func:`toy_batch` or ``datasets.batch_at(..., rows=)``) and trains with the one
:class:`~sparse_experts.train.Trainer` on the mesh spanning every process. Process 0 writes
``result.json`` (history, where each expert lives, the all_to_all ops of the lowered train step and their
bytes, the tokens that cross devices and processes) and ``params.npz`` (the final parameters, gathered).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from sparse_experts import datasets, models, parallel, train
from sparse_experts.atomic import write_json_atomic
from sparse_experts.parallel import launch as launcher
from sparse_experts.routing import layer_capacity as routing_capacity

TOY = "toy"  # a learnable synthetic task: brightness tells the class (no dataset needed)
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "f64": 8, "i32": 4, "ui32": 4}
_ALL_TO_ALL = re.compile(
    r'"stablehlo\.all_to_all".*?replica_groups = dense<(\[\[[\d,\s\[\]]*\]\])>.*?split_count = (\d+).*?'
    r":\s*\(tensor<([\dx]+)x([a-z]+\d+)>\)"
)


@dataclass(frozen=True)
class RunSpec:
    """One training run. ``model``: :func:`~sparse_experts.models.vit_config` arguments (``size`` the size
    string); ``moe``: :class:`~sparse_experts.models.MoeConfig` arguments; ``train``:
    :class:`~sparse_experts.train.TrainConfig` arguments; ``data``: "toy" or a dataset name (split "train");
    ``mesh``: {axis: size}; ``checkpoint_dir``: None (no checkpoints) or a folder every process reaches."""

    out_dir: str
    steps: int = 6
    batch_size: int = 32
    seed: int = 0
    data: str = TOY
    mesh: Mapping[str, int] = field(default_factory=lambda: {"expert": 8})
    model: Mapping[str, Any] = field(
        default_factory=lambda: dict(
            size="mu/4", image_size=8, channels=1, num_classes=3, width=16, depth=2, mlp_dim=32, num_heads=2
        )
    )
    moe: Mapping[str, Any] = field(
        default_factory=lambda: dict(num_experts=8, k=2, capacity_factor=1.0, placement=(1,))
    )
    train: Mapping[str, Any] = field(
        default_factory=lambda: dict(learning_rate=3e-3, total_steps=6, warmup_steps=2)
    )
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    # fmt: skip

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls(**json.loads(text))

    def vit_config(self) -> models.VitConfig:
        kwargs = dict(self.model)
        moe = dict(self.moe)
        if isinstance(moe.get("placement"), list):
            moe["placement"] = tuple(moe["placement"])
        return models.vit_config(kwargs.pop("size"), moe=models.MoeConfig(**moe), **kwargs)


def toy_batch(seed: int, step: int, batch_size: int, image_size: int = 8, channels: int = 1, classes: int = 3,
              rows: tuple[int, int] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Batch ``step`` of the toy task, a function of (seed, step): {"image" [B, size, size, channels],
    "label" [B]}, or only ``rows=(start, stop)`` of it."""
    rng = np.random.default_rng([seed, step])
    labels = rng.integers(0, classes, batch_size).astype(np.int32)
    noise = rng.normal(size=(batch_size, image_size, image_size, channels)) * 0.3
    images = (noise + labels[:, None, None, None] * (1.0 / max(1, classes - 1)) - 0.5).astype(np.float32)
    start, stop = (0, batch_size) if rows is None else rows
    return {"image": images[start:stop], "label": labels[start:stop]}


def batch_fn(spec: RunSpec, rows: tuple[int, int]):
    """``step -> this process's rows of batch step`` for ``spec``'s data."""
    if spec.data == TOY:
        m = spec.model
        return lambda step: toy_batch(spec.seed, step, spec.batch_size, m["image_size"], m["channels"],
                                      m["num_classes"], rows)  # fmt: skip
    size = spec.model.get("image_size")
    return lambda step: datasets.batch_at(spec.data, "train", spec.batch_size, seed=spec.seed, step=step,
                                          image_size=size, rows=rows)  # fmt: skip


# -- what a run measures ------------------------------------------------------------------------------------
def expert_map(mesh: Mesh, expert_weight: jax.Array) -> list[dict[str, int]]:
    """Where each expert lives: [{"expert", "device", "process"}] from the sharding of an expert weight
    [E, ...] (every device holding it; replicas give several rows per expert)."""
    E = expert_weight.shape[0]
    rows = []
    for device, index in expert_weight.sharding.devices_indices_map(expert_weight.shape).items():
        for e in range(E)[index[0]]:
            rows.append({"expert": e, "device": device.id, "process": device.process_index})
    return sorted(rows, key=lambda r: (r["expert"], r["device"]))


def batch_map(mesh: Mesh, batch_size: int) -> list[dict[str, int]]:
    """Which rows of a global batch each device holds: [{"device", "process", "start", "stop"}]."""
    sharding = parallel.mesh.batch_sharding(mesh)
    out = []
    for device, index in sharding.devices_indices_map((batch_size,)).items():
        start, stop = index[0].start or 0, batch_size if index[0].stop is None else index[0].stop
        out.append({"device": device.id, "process": device.process_index, "start": start, "stop": stop})
    return sorted(out, key=lambda r: (r["start"], r["device"]))


def all_to_all_volume(program_text: str, mesh: Mesh) -> dict[str, Any]:
    """The all_to_all ops of a lowered program (StableHLO text, e.g. ``jax.jit(f).lower(...).as_text()``)
    and the bytes they move per call of the program: per op its local tensor shape and bytes per device,
    the bytes leaving each device (a device keeps 1/split_count of its tensor) and the part that goes to
    another process (replica group ids are positions in ``mesh.devices.flat``)."""
    devices = list(mesh.devices.flat)
    ops, leaving, to_other = [], 0.0, 0.0
    for groups_text, split, shape, dtype in _ALL_TO_ALL.findall(program_text):
        groups = json.loads(groups_text)
        split = int(split)
        elements = math.prod(int(d) for d in shape.split("x"))
        per_device = elements * _DTYPE_BYTES.get(dtype, 4)
        chunk = per_device / split
        op_leaving = op_other = 0.0
        for group in groups:
            for a in group:
                for b in group:
                    if a != b:
                        op_leaving += chunk
                        op_other += chunk * (devices[a].process_index != devices[b].process_index)
        ops.append({"shape": [int(d) for d in shape.split("x")], "dtype": dtype, "split_count": split,
                    "bytes_per_device": per_device, "group_size": len(groups[0])})  # fmt: skip
        leaving += op_leaving
        to_other += op_other
    return {
        "ops": ops,
        "count": len(ops),
        "bytes_between_devices": leaving,
        "bytes_between_processes": to_other,
    }


def token_traffic(combine_weights: np.ndarray, mesh: Mesh) -> dict[str, int]:
    """How many routed (token, expert) pairs of one batch stay on their device, go to another device of the
    same process, or to another process. ``combine_weights`` [B, N, E] (the routing record of one MoE
    layer; > 0 where the token is processed by the expert). The batch is split over the mesh's data axes
    (("data", "expert") flattened), the experts over "expert"; a token of the image on the device at
    (data d, expert x) meets expert e on the device at (d, x_e)."""
    B, _, E = combine_weights.shape
    sizes = dict(mesh.shape)
    X = sizes.get("expert", 1)
    grid = mesh.devices.reshape(sizes["data"], X, -1)[:, :, 0]  # [data, expert] -> device (model index 0)
    shards = parallel.num_data_shards(mesh)
    routed = np.asarray(combine_weights) > 0  # [B, N, E]
    pairs = routed.sum(axis=1)  # [B, E] tokens of image b sent to expert e
    counts = {"routed": 0, "same_device": 0, "other_device_same_process": 0, "other_process": 0}
    for b in range(B):
        shard = b // (B // shards)
        d, x = (shard // X, shard % X) if X > 1 else (shard, 0)
        source = grid[d, x]
        for e in range(E):
            n = int(pairs[b, e])
            if not n:
                continue
            target = grid[d, e // (E // X)]
            counts["routed"] += n
            if target == source:
                counts["same_device"] += n
            elif target.process_index == source.process_index:
                counts["other_device_same_process"] += n
            else:
                counts["other_process"] += n
    return counts


def _flat(tree: Any) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(x) for path, x in leaves}


def train_run(spec: RunSpec) -> dict[str, Any]:
    """Run ``spec`` in this process (after :func:`~sparse_experts.parallel.initialize`); process 0 writes
    ``result.json`` and ``params.npz`` to ``spec.out_dir``. Returns the result."""
    started = time.perf_counter()
    info = parallel.processes.current()
    mesh = parallel.make_mesh(spec.mesh)
    rows = parallel.process_rows(mesh, spec.batch_size)
    print(f"{info.describe()}; mesh {dict(mesh.shape)}; batch rows [{rows[0]}, {rows[1]})", flush=True)
    config = spec.vit_config()
    trainer = train.Trainer(models.ViT(config, rngs=nnx.Rngs(spec.seed)), train.TrainConfig(**spec.train),
                            seed=spec.seed, mesh=mesh)  # fmt: skip
    share = batch_fn(spec, rows)

    def logged(step: int) -> dict:
        print(f"step {step}", flush=True)  # the fault tests wait for these lines
        return share(step)

    start_step = 0
    if spec.checkpoint_dir is not None:
        start_step = train.Checkpoints(spec.checkpoint_dir).latest_step() or 0
    history = trainer.fit(logged, spec.steps, checkpoint_dir=spec.checkpoint_dir,
                          checkpoint_every=spec.checkpoint_every, progress=False)  # fmt: skip
    params = parallel.to_host(trainer.state["params"])
    probe = share(0)
    text = trainer.lowered_step(probe)
    records = _routing_records(trainer, mesh, probe["image"])
    wi = next(leaf for path, leaf in jax.tree_util.tree_flatten_with_path(trainer.state["params"])[0]
              if jax.tree_util.keystr(path, simple=True, separator="/").endswith("experts/wi"))  # fmt: skip
    result = {
        "processes": info.num_processes,
        "devices": info.devices,
        "local_devices": info.local_devices,
        "mesh": dict(mesh.shape),
        "batch_size": spec.batch_size,
        "start_step": start_step,
        "final_step": trainer.step,
        "history": history.to_dict(),
        "expert_map": expert_map(mesh, wi),
        "batch_map": batch_map(mesh, spec.batch_size),
        "all_to_all": all_to_all_volume(text, mesh),
        "tokens": {name: token_traffic(weights, mesh) for name, weights in records.items()},
        "seconds": time.perf_counter() - started,
    }
    if info.process_id == 0:
        out = Path(spec.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "params.npz", **_flat(params))
        write_json_atomic(out / "result.json", result)
    print(f"done: step {trainer.step}, loss {history.metrics[-1]['loss']:.6f}", flush=True)
    return result


def _routing_records(trainer: train.Trainer, mesh: Mesh, images: np.ndarray) -> dict[str, np.ndarray]:
    """Each MoE layer's combine weights [B, N, E] for the global batch whose local share is ``images``
    (evaluation routing, experts run expert-parallel), gathered to the host."""
    graphdef, state = nnx.split(trainer.model)
    placed = parallel.shard_batch({"image": images}, mesh)["image"]

    def forward(state, images):
        model = nnx.merge(graphdef, state)
        _, records = model(images, train=False, return_stats="moe", moe_overrides={"mesh": mesh})
        return {name: record["combine_weights"] for name, record in records["moe"].items()}

    return parallel.to_host(jax.jit(forward)(state, placed))


# -- the launcher side (notebook, tests) ---------------------------------------------------------------------
def launch_run(
    spec: RunSpec,
    processes: int,
    devices_per_process: int,
    *,
    output=None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 900,
    start_only: bool = False,
):
    """Write ``spec`` to ``<out_dir>/spec.json`` and run it on ``processes`` x ``devices_per_process``
    (:mod:`sparse_experts.parallel.launch`; ``output`` gets every prefixed line, ``env`` adds environment
    variables); the plan is checked first. Returns the
    :class:`~sparse_experts.parallel.launch.LaunchResult`, or the running Launch with ``start_only``."""
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(spec.to_json())
    args = [str(out / "spec.json")]
    kwargs = dict(processes=processes, devices_per_process=devices_per_process, mesh=dict(spec.mesh),
                  batch_size=spec.batch_size, output=output, env=env)  # fmt: skip
    if start_only:
        return launcher.start(__name__, args, **kwargs)
    return launcher.launch(__name__, args, timeout=timeout, **kwargs)


def load_result(out_dir: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(result.json, params.npz) that process 0 of a run wrote to ``out_dir``."""
    out = Path(out_dir)
    with np.load(out / "params.npz") as npz:
        params = {name: npz[name] for name in npz.files}
    return json.loads((out / "result.json").read_text()), params


def compare(a: tuple[dict, dict], b: tuple[dict, dict]) -> dict[str, float]:
    """How far two runs' results are apart: the largest absolute difference of the per-step losses, and of
    any parameter; and the largest absolute parameter (the scale)."""
    (ra, pa), (rb, pb) = a, b
    la = [m["loss"] for m in ra["history"]["metrics"]]
    lb = [m["loss"] for m in rb["history"]["metrics"]]
    if len(la) != len(lb) or set(pa) != set(pb):
        raise ValueError(f"runs differ in shape: {len(la)} vs {len(lb)} steps, {len(pa)} vs {len(pb)} arrays")
    return {
        "loss": float(np.max(np.abs(np.subtract(la, lb)))),
        "params": max(float(np.max(np.abs(pa[k] - pb[k]))) for k in pa),
        "param_scale": max(float(np.max(np.abs(pa[k]))) for k in pa),
        "steps": len(la),
    }


# -- notebook 07 --------------------------------------------------------------------------------------------
def spec_of(params: Mapping[str, Any], out_dir: str | Path, devices: int) -> RunSpec:
    """The :class:`RunSpec` of notebook 07's knobs (``params``: its config) on ``devices`` devices in all: the
    experts over an "expert" axis of ``devices``, the batch over the same devices."""
    moe = dict(num_experts=params["num_experts"], k=2, capacity_factor=params["capacity_factor"],
               placement=(params["depth"] - 1,), group_size=1)  # fmt: skip
    channels = 1 if params["dataset"] in (TOY, "digits") else 3
    classes = 3 if params["dataset"] == TOY else datasets.info(params["dataset"]).num_classes
    width = params["width"]
    model = dict(size=f"mu/{params['patch_size']}", image_size=params["image_size"], channels=channels,
                 num_classes=classes, width=width, depth=params["depth"], mlp_dim=2 * width,
                 num_heads=2)  # fmt: skip
    steps = params["steps"]
    return RunSpec(out_dir=str(out_dir), steps=steps, batch_size=params["batch_size"], seed=params["seed"],
                   data=params["dataset"], mesh={"expert": devices}, model=model, moe=moe,
                   train=dict(learning_rate=params["learning_rate"], total_steps=steps,
                              warmup_steps=max(1, steps // 10)))  # fmt: skip


def layouts(params: Mapping[str, Any]) -> list[tuple[int, int]]:
    """(processes, devices per process) of every launch of notebook 07: one process with each of
    ``device_counts``, then ``processes`` processes sharing the largest count (the comparison run)."""
    total = max(params["device_counts"])
    return [(1, d) for d in params["device_counts"]] + [(params["processes"], total // params["processes"])]


def run_layouts(params: Mapping[str, Any], out_dir: str | Path, output=None) -> dict[str, tuple[dict, dict]]:
    """Launch notebook 07's runs (:func:`layouts`), each in ``<out_dir>/<n>x<d>``; return {"<n>x<d>": (result,
    params)}. A failed launch raises RuntimeError with the launcher's report."""
    runs = {}
    for processes, devices in layouts(params):
        name = f"{processes}x{devices}"
        spec = spec_of(params, Path(out_dir) / name, processes * devices)
        result = launch_run(spec, processes, devices, output=output)
        if not result.ok:
            tail = "\n".join(result.output[result.first_failure][-20:])
            raise RuntimeError(f"launch {name} failed:\n{result.report()}\n{tail}")
        runs[name] = load_result(spec.out_dir)
    return runs


def fault_demo(params: Mapping[str, Any], out_dir: str | Path, output=None) -> dict[str, Any]:
    """A host dies: notebook 07's multi-process run with checkpoints (every quarter of the steps) has its last
    process killed (SIGKILL) once it reached the step after the second checkpoint; then the run restarts on
    one process with all the devices, from the last complete checkpoint (written by several processes).
    Returns the launcher's report, the exit codes, how long after the kill each other process ended, the
    checkpoints left, the step the restart resumed from and its result (compare it with the uninterrupted
    run)."""
    total, n = max(params["device_counts"]), params["processes"]
    every = max(1, params["steps"] // 4)
    kill_at = 2 * every + 1
    if kill_at >= params["steps"]:
        raise ValueError(
            f"steps={params['steps']} is too few for the fault demo; expected at least {kill_at + 1}"
        )
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)  # checkpoints of an earlier demo would be resumed, not killed
    spec = spec_of(params, out / "killed", total)
    spec = dataclasses.replace(spec, checkpoint_dir=str(out / "checkpoints"), checkpoint_every=every)
    job = launch_run(spec, n, total // n, output=output, start_only=True)
    try:
        job.wait_for_line(rf"^step {kill_at}$", process=n - 1, timeout=900)
        job.kill(n - 1)
    finally:
        killed = job.wait(timeout=1200)
    left = train.Checkpoints(spec.checkpoint_dir).all_steps()
    restart = dataclasses.replace(spec, out_dir=str(out / "restarted"))
    again = launch_run(restart, 1, total, output=output)
    if not again.ok:
        raise RuntimeError(f"the restart failed:\n{again.report()}")
    return {
        "killed_process": n - 1,
        "killed_at_step": kill_at,
        "report": killed.report(),
        "returncodes": killed.returncodes,
        "seconds_to_exit_after_kill": killed.seconds_after_first_failure(),
        "checkpoints_left": left,
        "restart": load_result(restart.out_dir),
    }


def all_to_all_bytes(config: models.VitConfig, batch_size: int, experts_axis: int, data_axis: int = 1,
                     itemsize: int = 4) -> dict[str, float]:  # fmt: skip
    """On paper: the bytes each device sends with all_to_all in one training step of the V-MoE ``config``
    (top-k or expert choice) with batch ``batch_size`` over ``data_axis`` x ``experts_axis`` devices and the
    experts over ``experts_axis``. Per MoE layer four all_to_all (dispatch and return, forward and
    backward), each of the local buffers [G / devices, E, C, D]; a device keeps 1 / experts_axis of each.
    Equals what :func:`all_to_all_volume` reads from the lowered program (tests/test_scale_out.py)."""
    moe = config.moe
    devices = experts_axis * data_axis
    groups = batch_size // moe.group_size
    if groups % devices:
        raise ValueError(f"{groups} routing groups do not split over {devices} devices")
    tokens = moe.group_size * config.num_tokens
    C = routing_capacity(moe.router, tokens, moe.num_experts, moe.k, moe.capacity_factor)
    per_op = groups // devices * moe.num_experts * C * config.width * itemsize
    ops = 4 * len(models.moe_layers(config))
    sent = ops * per_op * (experts_axis - 1) / experts_axis
    return {"ops": ops, "bytes_per_op": per_op, "bytes_sent_per_device": sent, "capacity": C}


def equality_rows(runs: Mapping[str, tuple[dict, dict]], reference: str) -> list[dict[str, Any]]:
    """Each run against ``reference``: largest loss and parameter differences (:func:`compare`)."""
    return [{"run": name, "against": reference, **compare(runs[reference], run)}
            for name, run in runs.items() if name != reference]  # fmt: skip


def traffic_rows(runs: Mapping[str, tuple[dict, dict]]) -> list[dict[str, Any]]:
    """Per run: processes, devices, all_to_all ops and bytes per step (between devices, between processes)
    and the routed tokens of batch 0 that stay on their device, change device, change process."""
    rows = []
    for name, (result, _) in runs.items():
        volume = result["all_to_all"]
        kinds = ("routed", "same_device", "other_device_same_process", "other_process")
        tokens = {k: sum(layer[k] for layer in result["tokens"].values()) for k in kinds}
        rows.append({"run": name, "processes": result["processes"], "devices": result["devices"],
                     "all_to_all_ops": volume["count"],
                     "bytes_between_devices": volume["bytes_between_devices"],
                     "bytes_between_processes": volume["bytes_between_processes"], **tokens})  # fmt: skip
    return rows


def timing_rows(runs: Mapping[str, tuple[dict, dict]]) -> list[dict[str, Any]]:
    """Per run: median seconds per step after the first (which compiles), images per second, wall time."""
    rows = []
    for name, (result, _) in runs.items():
        seconds = result["history"]["step_seconds"][1:] or result["history"]["step_seconds"]
        step = float(np.median(seconds))
        rows.append({"run": name, "processes": result["processes"], "devices": result["devices"],
                     "median_step_seconds": step, "images_per_second": result["batch_size"] / step,
                     "run_seconds": result["seconds"]})  # fmt: skip
    return rows


PAPER_MODELS = {
    # V-MoE-15B: ViT-G/14 with E=32 experts, k=2, in 16 layers (every third); 15.4B parameters here, the
    # paper reports 14.7B (its exact placement and head are not reproduced). Routing groups of one image.
    "V-MoE-15B": dict(size="G/14", moe=dict(num_experts=32, k=2, placement="every-3", capacity_factor=1.05)),
    "ViT-22B": dict(size="22B/14", moe=None),
}
TPU_V3_CORE_GIB = 16  # HBM of one TPUv3 core (V-MoE's devices)


def paper_config(name: str, image_size: int = 224) -> models.VitConfig:
    """The :data:`PAPER_MODELS` entry ``name`` as a config (float32 parameters and compute; V-MoE routing
    groups of one image)."""
    recipe = PAPER_MODELS[name]
    moe = None if recipe["moe"] is None else models.MoeConfig(**recipe["moe"], group_size=1)
    return models.vit_config(recipe["size"], image_size=image_size, moe=moe)


def paper_mesh(name: str, devices: int) -> dict[str, int]:
    """The mesh of a paper-scale plan on ``devices`` devices: V-MoE-15B one expert per device of an "expert"
    axis of 32 ({"data": devices / 32, "expert": 32}); ViT-22B {"data": devices / 4, "model": 4}."""
    return (
        {"data": devices // 32, "expert": 32}
        if PAPER_MODELS[name]["moe"]
        else {"data": devices // 4, "model": 4}
    )


def paper_rows(batch_size: int, devices: int, image_size: int = 224) -> list[dict[str, Any]]:
    """The paper-scale models (:data:`PAPER_MODELS`) on paper on a TPU pod of ``devices`` devices
    (:func:`paper_mesh`): parameters (all, and active per token), the mesh and how the weights are split,
    memory per device of an Adam training step (``models.memory_plan``: float32 parameters, moments and
    compute, remat on) and the all_to_all bytes each device sends per step. V-MoE-15B: the experts split over
    "expert" (E / 32 = 1 per device per MoE layer), every other weight replicated, as data parallelism does
    (the TP rules: the mesh has no "model" axis); its all_to_all buffers in bfloat16
    (:func:`all_to_all_bytes`). ViT-22B: FSDP rules (weights split over "data" and "model"); no all_to_all."""
    rows = []
    for name in PAPER_MODELS:
        config, sizes = paper_config(name, image_size), paper_mesh(name, devices)
        moe = config.moe is not None
        rules = parallel.TP_RULES if moe else parallel.FSDP_RULES
        plan = models.memory_plan(config, sizes, batch_size, rules=rules, remat=True)
        sent = (
            all_to_all_bytes(config, batch_size, sizes["expert"], sizes["data"], itemsize=2) if moe else None
        )
        rows.append({
            "model": name,
            "parameters": models.param_count(config),
            "active_parameters": models.param_count(config, active=True),
            "mesh": " x ".join(f"{k}={v}" for k, v in sizes.items()),
            "weights": "experts over 'expert', the rest replicated" if moe else "FSDP over 'data', 'model'",
            "batch_size": batch_size,
            "memory_gib_per_device": plan.total / 2**30,
            "expert_weights_gib_per_device": plan.expert_params / 2**30,
            "all_to_all_gib_per_device": 0.0 if sent is None else sent["bytes_sent_per_device"] / 2**30,
        })  # fmt: skip
    return rows


def vmoe_memory_rows(batch_size: int, devices: int, image_size: int = 224) -> list[dict[str, Any]]:
    """V-MoE-15B's memory per device on :func:`paper_mesh` under other assumptions than :func:`paper_rows`'s
    (the first row), each against a TPUv3 core's :data:`TPU_V3_CORE_GIB`: the optimizer's moments in
    bfloat16; one bfloat16 moment (Adafactor-like, its factored second moment left out); parameters and
    compute in bfloat16; no remat; the dense weights split over "data" too (FSDP rules). GiB per part."""
    config, sizes = paper_config("V-MoE-15B", image_size), paper_mesh("V-MoE-15B", devices)
    tp, half = parallel.TP_RULES, config.replace(param_dtype="bfloat16", dtype="bfloat16")
    options = {
        "float32, Adam, remat (the table's)": (config, dict(rules=tp)),
        "Adam moments in bfloat16": (config, dict(rules=tp, moment_dtype="bfloat16")),
        "one bfloat16 moment (Adafactor-like)": (config, dict(rules=tp, optimizer="momentum",
                                                               moment_dtype="bfloat16")),
        "bfloat16 parameters, moments and compute": (half, dict(rules=tp)),
        "float32, Adam, no remat": (config, dict(rules=tp, remat=False)),
        "dense weights split over 'data' too (FSDP)": (config, dict(rules=parallel.FSDP_RULES)),
    }  # fmt: skip
    rows = []
    for label, (cfg, kwargs) in options.items():
        plan = models.memory_plan(cfg, sizes, batch_size, **{"remat": True, **kwargs})
        gib = {name: value / 2**30 for name, value in plan.rows()}
        rows.append({"assumption": label, **gib, "expert weights": plan.expert_params / 2**30,
                     f"fits {TPU_V3_CORE_GIB} GiB": gib["total"] <= TPU_V3_CORE_GIB})  # fmt: skip
    return rows


def headlines(runs: Mapping[str, tuple[dict, dict]], reference: str, multi: str,
              paper: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Notebook 07's headline figures: the multi-process run against the one-process reference (largest
    loss and parameter differences), the all_to_all bytes per step between processes, the share of routed
    tokens that changed process; with ``paper`` (:func:`paper_rows`) V-MoE-15B's GiB per device."""
    gap = compare(runs[reference], runs[multi])
    result = runs[multi][0]
    tokens = list(result["tokens"].values())
    routed = sum(layer["routed"] for layer in tokens)
    return {
        "max_loss_difference": gap["loss"],
        "max_param_difference": gap["params"],
        "all_to_all_bytes_between_processes": result["all_to_all"]["bytes_between_processes"],
        "tokens_to_other_process": sum(layer["other_process"] for layer in tokens) / max(1, routed),
        **(
            {}
            if paper is None
            else {"vmoe15b_memory_gib_per_device": _vmoe_row(paper)["memory_gib_per_device"]}
        ),
    }


def _vmoe_row(paper: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    return next(row for row in paper if row["model"] == "V-MoE-15B")


def fault_summary(fault: Mapping[str, Any], reference: tuple[dict, dict]) -> dict[str, Any]:
    """The plain figures of :func:`fault_demo` (no parameters): who was killed, how the others ended and
    when, which checkpoints were left, where the restart resumed, and its distance from ``reference`` (the
    uninterrupted run, :func:`compare`)."""
    restart = fault["restart"][0]
    return {
        "killed_process": fault["killed_process"],
        "killed_at_step": fault["killed_at_step"],
        "exits": [launcher.describe_exit(code) for code in fault["returncodes"]],
        "seconds_to_exit_after_kill": {str(k): v for k, v in fault["seconds_to_exit_after_kill"].items()},
        "checkpoints_left": fault["checkpoints_left"],
        "restart_processes": restart["processes"],
        "restart_resumed_from": restart["start_step"],
        "restart_against_uninterrupted": compare(reference, fault["restart"]),
        "report": fault["report"],
    }


def _within(gap: float) -> str:
    return "identical" if gap == 0 else f"within {gap:.1e}"


def closing_note(runs: Mapping[str, tuple[dict, dict]], reference: str, multi: str,
                 fault: Mapping[str, Any] | None = None, paper: Sequence[Mapping[str, Any]] | None = None,
                 options: Sequence[Mapping[str, Any]] | None = None) -> str:  # fmt: skip
    """Notebook 07's closing note (Markdown), every number computed from the runs (and the fault summary;
    the paper-scale rows of :func:`paper_rows` and :func:`vmoe_memory_rows`)."""
    head = headlines(runs, reference, multi)
    others = [row["params"] for row in equality_rows(runs, reference) if row["run"] != multi]
    result = runs[multi][0]
    volume = result["all_to_all"]
    steps = len(result["history"]["metrics"])
    same = (
        f"- **Same code, same numbers.** Run {multi} ({result['processes']} processes) against {reference} "
        f"after {steps} steps: losses {_within(head['max_loss_difference'])}, parameters "
        f"{_within(head['max_param_difference'])}"
    )
    if others:
        same += (
            f"; the one-process runs on fewer devices differ from {reference} by up to {max(others):.1e}: "
            "float rounding in another order of reduction, not the processes"
        )
    travel = (
        f"- **What travels.** Each step's {volume['count']} all_to_all move "
        f"{volume['bytes_between_devices']:,.0f} bytes between devices, "
        f"{volume['bytes_between_processes']:,.0f} of them between processes; "
        f"{head['tokens_to_other_process']:.0%} of batch 0's routed tokens met an expert in another process."
    )
    lines = [same + ".", travel]
    if fault is not None:
        ended = [f"process {k} after {v:.1f} s ({fault['exits'][int(k)]})"
                 for k, v in fault["seconds_to_exit_after_kill"].items()]  # fmt: skip
        gap = fault["restart_against_uninterrupted"]
        lines.append(
            f"- **A host dies.** Process {fault['killed_process']} was killed (SIGKILL) at step "
            f"{fault['killed_at_step']}; the others ended on their own: {', '.join(ended)}. Checkpoints "
            f"left: {fault['checkpoints_left']}. The restart on {fault['restart_processes']} process resumed "
            f"from step {fault['restart_resumed_from']} and ended within {gap['loss']:.1e} (losses) and "
            f"{gap['params']:.1e} (parameters) of the uninterrupted run."
        )
    if paper is not None:
        lines.append(paper_note(paper, options))
    return "\n".join(lines)


def paper_note(paper: Sequence[Mapping[str, Any]], options: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The closing note's paper-scale line: V-MoE-15B's and ViT-22B's GiB per device (:func:`paper_rows`)
    against a TPUv3 core, and which of :func:`vmoe_memory_rows`' assumptions fit one."""
    vmoe = _vmoe_row(paper)
    dense = next(row for row in paper if row["model"] != "V-MoE-15B")
    total, experts = vmoe["memory_gib_per_device"], vmoe["expert_weights_gib_per_device"]
    fits = total <= TPU_V3_CORE_GIB
    line = (
        f"- **At paper scale, on paper.** V-MoE-15B on {vmoe['mesh']} (batch {vmoe['batch_size']}; float32, "
        f"Adam, remat; experts split, the rest replicated) needs {total:.1f} GiB per device, "
        f"{experts:.1f} GiB of it its experts' weights: {'within' if fits else 'more than'} a TPUv3 core's "
        f"{TPU_V3_CORE_GIB} GiB"
    )
    if not fits:
        line += ", because every device holds the replicated dense weights with their gradients and moments"
    if options:
        fitting = [row["assumption"] for row in options if row[f"fits {TPU_V3_CORE_GIB} GiB"]]
        line += f". Fitting a core: {'; '.join(fitting) if fitting else 'none of the other assumptions'}"
    return line + f". ViT-22B on {dense['mesh']}: {dense['memory_gib_per_device']:.2f} GiB per device."


def headline_labels(reference: str, multi: str, steps: int,
                    paper: Sequence[Mapping[str, Any]] | None = None) -> dict[str, str]:  # fmt: skip
    """What each headline figure is (the index page); with ``paper`` (:func:`paper_rows`) the V-MoE-15B
    memory plan's too."""
    labels = {
        "max_loss_difference": f"largest per-step loss difference, run {multi} against {reference} ({steps} "
        "steps)",
        "max_param_difference": f"largest parameter difference after {steps} steps, {multi} against "
        f"{reference}",
        "all_to_all_bytes_between_processes": f"bytes the all_to_all move between processes per step "
        f"({multi})",
        "tokens_to_other_process": f"share of routed tokens of batch 0 whose expert is in another process "
        f"({multi})",
    }
    if paper is not None:
        vmoe = _vmoe_row(paper)
        labels["vmoe15b_memory_gib_per_device"] = (
            f"GiB per device of a V-MoE-15B training step, on paper ({vmoe['mesh']}, batch "
            f"{vmoe['batch_size']}, float32, Adam, remat)"
        )
    return labels


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    auto = "--auto" in argv
    argv = [a for a in argv if a != "--auto"]
    if len(argv) != 1:
        sys.exit("usage: python -m sparse_experts.workbook.scale_out <spec.json> [--auto] (see RunSpec; "
                 "--auto: let JAX detect a Cloud TPU, Slurm or Open MPI cluster)")  # fmt: skip
    spec = RunSpec.from_json(Path(argv[0]).read_text())
    parallel.initialize(auto=auto)
    train_run(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
