"""Sharded vs single-device ViT forward on 8 fake CPU devices; run by tests/test_sharding.py in a subprocess.

Needs XLA_FLAGS=--xla_force_host_platform_device_count=8 in its environment (set before jax is imported, which
is why this runs in its own process). Prints one JSON object {case: measurements}; the test asserts on it.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
from flax import nnx

from sparse_experts import models, parallel
from sparse_experts.models import ViT, vit_config

# (mesh shape, rules, config overrides): both meshes x both block kinds, each rule set once per block kind.
# The parallel block runs scanned (a stacked "layers" axis), the sequential one as a list of layers.
PARALLEL = dict(parallel_block=True, scan_layers=True)
SEQUENTIAL = dict(parallel_block=False, scan_layers=False)
CASES = {
    "data2_model4_parallel_tp": ({"data": 2, "model": 4}, parallel.TP_RULES, PARALLEL),
    "data2_model4_sequential_fsdp": ({"data": 2, "model": 4}, parallel.FSDP_RULES, SEQUENTIAL),
    "data4_model2_parallel_fsdp": ({"data": 4, "model": 2}, parallel.FSDP_RULES, PARALLEL),
    "data4_model2_sequential_tp": ({"data": 4, "model": 2}, parallel.TP_RULES, SEQUENTIAL),
}
BATCH = 8


def config(**overrides):
    # mu: D=64, A=4 heads, H=256; 16x16 images in 4x4 patches (N = 17 with the class token); 8 classes.
    base = dict(image_size=16, num_classes=8, qk_norm=True, head_zero_init=False, depth=1)
    return vit_config("mu/4", **{**base, **overrides})


def build(cfg, seed=0):
    """A model holding numpy parameters (no random-number kernels to compile, and placing them on a mesh
    slices on the host instead of compiling a slicing program per shape)."""
    model = nnx.eval_shape(lambda: ViT(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    values = {
        path: (rng.normal(size=v.shape) * 0.2 + (path[-1] == "scale")).astype(v.dtype)
        for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    nnx.update(model, nnx.from_flat_state(values))
    return model


@nnx.jit
def forward(model, images):
    return model(images)


def main() -> None:
    if jax.device_count() != 8:
        flag = "XLA_FLAGS=--xla_force_host_platform_device_count=8"
        sys.exit(f"expected 8 devices ({flag}), got {jax.device_count()}")
    images = np.random.default_rng(1).normal(size=(BATCH, 16, 16, 3)).astype(np.float32)
    results, references = {}, {}
    for name, (mesh_shape, rules, overrides) in CASES.items():
        cfg = config(**overrides)
        if cfg not in references:
            references[cfg] = np.asarray(forward(build(cfg), images))
        reference = references[cfg]
        mesh = parallel.make_mesh(mesh_shape)
        model = parallel.shard_model(build(cfg), mesh, rules)
        batch = parallel.shard_batch({"images": images}, mesh)
        logits = forward(model, batch["images"])
        state = nnx.state(model, nnx.Param)
        specs = {"/".join(map(str, path)): str(v[...].sharding.spec) for path, v in nnx.to_flat_state(state)}
        results[name] = {
            "max_abs_diff": float(np.max(np.abs(np.asarray(logits) - reference))),
            "max_abs_logit": float(np.max(np.abs(reference))),
            "param_bytes_per_device": sum(
                v[...].addressable_shards[0].data.nbytes for v in jax.tree.leaves(state)
            ),
            "planned_param_bytes": models.memory_plan(cfg, mesh_shape, BATCH, rules=rules).params,
            "batch_spec": str(batch["images"].sharding.spec),
            "specs": specs,
        }

    # Created directly in its shards: same values as a single-device init with the same seed. (A config with
    # few random initialisers: each costs seconds of XLA compile on CPU.)
    lean = dict(norm="rmsnorm", norm_bias=False, qkv_bias=False, mlp_bias=False, pool="gap", num_classes=0)
    cfg = config(parallel_block=True, qk_norm=False, posemb="sincos2d", **lean)
    mesh = parallel.make_mesh({"data": 2, "model": 4})
    created = parallel.create_sharded(
        lambda: models.ViT(cfg, rngs=nnx.Rngs(3)), mesh, rules=parallel.FSDP_RULES
    )
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: ViT(cfg, rngs=nnx.Rngs(3))))
    single = jax.jit(lambda: nnx.state(ViT(cfg, rngs=nnx.Rngs(3))))()
    pairs = zip(nnx.to_flat_state(nnx.state(created)), nnx.to_flat_state(single), strict=True)
    results["create_sharded"] = {
        "all_equal": all(np.array_equal(np.asarray(a[...]), np.asarray(b[...])) for (_, a), (_, b) in pairs),
        "specs": {
            "/".join(map(str, path)): str(v[...].sharding.spec)
            for path, v in nnx.to_flat_state(nnx.state(created))
        },
    }

    # Batch placement: the expert axis joins the data axes; an indivisible batch is refused.
    expert_mesh = parallel.make_mesh({"data": 2, "expert": 2, "model": 2})
    placed = parallel.shard_batch({"images": images, "labels": np.arange(BATCH)}, expert_mesh)
    try:
        parallel.shard_batch({"images": images[:6]}, parallel.make_mesh({"data": 4, "model": 2}))
        error = None
    except ValueError as caught:
        error = str(caught)
    results["batch"] = {
        "expert_mesh_specs": {key: str(value.sharding.spec) for key, value in placed.items()},
        "labels_shard_shape": list(placed["labels"].addressable_shards[0].data.shape),
        "indivisible_error": error,
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
