"""Meshes, partition rules, placement and memory plans (sparse_experts.parallel).

The main pytest process sees one CPU device, so the multi-device checks (sharded forward == single-device
forward on 8 fake devices, direct sharded creation, batch placement) run once, together, in a subprocess
(tests/_sharded_forward.py) started with XLA_FLAGS=--xla_force_host_platform_device_count=8. Everything
else is abstract: partition specs and memory plans need mesh *sizes*, not devices.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_fake_devices
from flax import nnx
from jax.sharding import AxisType, PartitionSpec

from sparse_experts import models, parallel
from sparse_experts.models import ViT, VitConfig, param_count, vit_config
from sparse_experts.parallel import FSDP_RULES, TP_RULES

P = PartitionSpec
HERE = pathlib.Path(__file__).parent


def tiny(**overrides) -> VitConfig:
    return vit_config("mu/4", **{**dict(image_size=16, num_classes=8), **overrides})


def specs(config: VitConfig, rules, mesh_shape) -> dict[str, PartitionSpec]:
    """{"encoder/blocks/0/mlp/wi": spec, ...} of an abstract model of this config."""
    model = nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0)))
    state = parallel.partition_specs(model, rules, mesh_shape)
    return {"/".join(map(str, path)): v.get_value() for path, v in nnx.to_flat_state(state)}


# ---------------------------------------------------------------------------------------------------------
# Meshes
# ---------------------------------------------------------------------------------------------------------
def test_default_mesh_puts_every_device_on_data_with_auto_axes():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data", "expert", "model")
    assert dict(mesh.shape) == {"data": jax.device_count(), "expert": 1, "model": 1}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert dict(parallel.make_mesh({"model": -1}).shape) == {"data": 1, "expert": 1, "model": 1}


@pytest.mark.parametrize(
    "shape, message",
    [
        ({"data": 2, "model": 4}, "has 8 devices but there are 1"),
        ({"batch": 1}, "unknown axes ['batch']"),
        ({"data": 0}, "data=0 must be a positive integer"),
        ({"data": -1, "model": -1}, "at most one -1"),
    ],
)
def test_bad_mesh_shapes_say_what_is_wrong(shape, message):
    with pytest.raises(ValueError, match="mesh shape") as error:
        parallel.make_mesh(shape)
    assert message in str(error.value)


def test_data_axes_include_expert_only_when_it_is_used():
    assert parallel.data_axes({"data": 4, "model": 2}) == ("data",)
    assert parallel.data_axes({"data": 2, "expert": 4}) == ("data", "expert")
    assert parallel.num_data_shards({"data": 2, "expert": 4, "model": 2}) == 8


# ---------------------------------------------------------------------------------------------------------
# Partition rules
# ---------------------------------------------------------------------------------------------------------
def test_known_parameters_get_megatron_specs_and_fsdp_adds_data():
    mesh = {"data": 2, "model": 4}
    tp, fsdp = specs(tiny(), TP_RULES, mesh), specs(tiny(), FSDP_RULES, mesh)
    # MLP kernels [D, H] and [H, D]; attention [D, A, Q] and [A, Q, D]; head [D, Y]; biases; norms.
    assert tp["encoder/blocks/0/mlp/wi"] == P(None, "model")
    assert fsdp["encoder/blocks/0/mlp/wi"] == P("data", "model")
    assert tp["encoder/blocks/0/mlp/wo"] == P("model")
    assert fsdp["encoder/blocks/0/mlp/wo"] == P("model", "data")
    assert tp["encoder/blocks/0/attn/query"] == P(None, "model")
    assert fsdp["encoder/blocks/0/attn/out"] == P("model", None, "data")
    assert tp["head"] == P(None, "model") and fsdp["head"] == P("data", "model")
    assert tp["encoder/blocks/0/mlp/bi"] == P("model")
    assert tp["encoder/norm/scale"] == P() and fsdp["encoder/norm/scale"] == P("data")
    assert tp["patch_kernel"] == P()


def test_parallel_block_fused_kernels_and_scanned_layers():
    found = specs(
        tiny(parallel_block=True, scan_layers=True, qk_norm=True), FSDP_RULES, {"data": 2, "model": 4}
    )
    assert found["encoder/blocks/in_kernel"] == P(None, "data", "model")  # [L, D, 3D + H]
    assert found["encoder/blocks/out_kernel"] == P(None, "model", "data")  # [L, D + H, D]
    assert found["encoder/blocks/q_norm/scale"] == P()  # [L, Q]: heads are never split inside


def test_indivisible_axes_fall_back_to_replication():
    # 3 heads on 2 "model" devices: attention weights stay whole; the MLP (H = 256) is still split.
    found = specs(tiny(width=48, num_heads=3), TP_RULES, {"data": 4, "model": 2})
    assert found["encoder/blocks/0/attn/query"] == P()
    assert found["encoder/blocks/0/mlp/wi"] == P(None, "model")
    # 10 classes on 4 model devices: the head's class axis is replicated.
    assert specs(tiny(num_classes=10), TP_RULES, {"model": 4})["head"] == P()
    # Several mesh axes: trailing ones are dropped until the size divides.
    spec_for = parallel.partition_spec_for
    assert spec_for(("embed",), (6,), FSDP_RULES, {"data": 2, "expert": 4}) == P("data")
    assert spec_for(("embed",), (8,), FSDP_RULES, {"data": 2, "expert": 4}) == P(("data", "expert"))
    assert spec_for(("embed",), (5,), FSDP_RULES, {"data": 2, "expert": 4}) == P()


def test_expert_weights_leave_room_for_expert_parallelism():
    spec_for = parallel.partition_spec_for
    axes, shape = ("expert", "embed", "mlp"), (8, 64, 256)  # stacked expert weights [E, D, H]
    assert spec_for(axes, shape, TP_RULES, {"data": 2, "expert": 4}) == P("expert")
    assert spec_for(axes, shape, TP_RULES, {"expert": 4, "model": 2}) == P("expert", None, "model")
    # With FSDP, D would use ("data", "expert"), but "expert" is already taken by E.
    assert spec_for(axes, shape, FSDP_RULES, {"data": 2, "expert": 2, "model": 2}) == P(
        "expert", "data", "model"
    )


def test_partition_specs_read_flax_metadata_and_replicate_the_unannotated():
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"), eager_sharding=False)
    annotated = nnx.eval_shape(lambda: nnx.Linear(4, 8, kernel_init=init, rngs=nnx.Rngs(0)))
    plain = nnx.eval_shape(lambda: nnx.Linear(4, 8, rngs=nnx.Rngs(0)))
    assert parallel.partition_specs(annotated, TP_RULES, {"model": 2})["kernel"].get_value() == P(
        None, "model"
    )
    assert parallel.partition_specs(plain, TP_RULES, {"model": 2})["kernel"].get_value() == P()
    # Without mesh sizes the rules apply as written (no fallback, size-1 axes kept).
    assert parallel.partition_spec_for(("embed", "mlp"), (4, 8), FSDP_RULES) == P(("data", "expert"), "model")


def test_unknown_logical_axes_and_bad_metadata_raise():
    with pytest.raises(ValueError, match="logical axis 'vocab' has no partition rule"):
        parallel.partition_spec_for(("vocab",), (8,), TP_RULES, {"model": 2}, where="embedding")
    with pytest.raises(ValueError, match=r"logical axes \('embed',\) do not match its shape \(4, 8\)"):
        parallel.partition_spec_for(("embed",), (4, 8), TP_RULES)
    with pytest.raises(ValueError, match="not in the mesh"):
        parallel.partition_spec_for(("mlp",), (8,), (("mlp", "tensor"),), {"model": 2})


def test_shardings_and_placement_on_one_device():
    mesh = parallel.make_mesh()
    model = nnx.eval_shape(lambda: ViT(tiny(), rngs=nnx.Rngs(0)))
    shardings = parallel.param_shardings(model, mesh, FSDP_RULES)
    assert {s.mesh for s in jax.tree.leaves(shardings)} == {mesh}
    batch = parallel.shard_batch({"images": jnp.zeros((3, 16, 16, 3)), "labels": np.arange(3)}, mesh)
    assert batch["images"].sharding.spec == P("data", None, None, None)
    assert batch["labels"].shape == (3,)
    with pytest.raises(ValueError, match=r"batch\['step'\] is a scalar"):
        parallel.shard_batch({"step": 3}, mesh)


# ---------------------------------------------------------------------------------------------------------
# Memory plans
# ---------------------------------------------------------------------------------------------------------
def test_memory_plan_adds_up_and_prints():
    config = tiny()
    plan = models.memory_plan(config, {"data": 1}, 8, "adam")
    assert plan.param_count == param_count(config)
    assert plan.params == plan.params_unsharded == 4 * param_count(config)  # float32, one device
    assert plan.optimizer_state == 2 * plan.params and plan.gradients == plan.params
    assert plan.total == plan.params + plan.optimizer_state + plan.gradients + plan.activations
    assert models.memory_plan(config, {"data": 1}, 8, "sgd").optimizer_state == 0
    assert models.memory_plan(config, {"data": 1}, 8, "momentum").optimizer_state == plan.params
    bf16 = models.memory_plan(tiny(param_dtype="bfloat16"), {"data": 1}, 8, moment_dtype="float32")
    assert bf16.params * 2 == plan.params and bf16.optimizer_state == plan.optimizer_state
    data = plan.to_dict()
    assert data["total"] == plan.total and data["num_devices"] == 1 and json.dumps(data)
    text = str(plan)
    for row in ["parameters", "optimizer state", "gradients", "activations", "total", "GiB"]:
        assert row in text
    assert "GiB per device" in plan.summary()
    assert plan.per_device_bytes() == dict(plan.rows()) and plan.per_device_bytes()["total"] == plan.total


def test_memory_plan_scales_with_the_mesh():
    config = vit_config("B/16")
    plans = {m: models.memory_plan(config, {"data": 2, "model": m}, 64) for m in (1, 2, 4)}
    # Replicated bytes R plus sharded bytes S / model: each doubling of "model" halves S exactly.
    assert plans[1].params - plans[2].params == 2 * (plans[2].params - plans[4].params) > 0
    # The sharded part is nearly everything in a ViT (only norms, embed biases, patches are replicated).
    assert plans[4].params < 0.27 * plans[1].params
    # Doubling the data axis halves the images per device, hence the activations.
    wide = models.memory_plan(config, {"data": 4, "model": 2}, 64)
    assert plans[2].activations == 2 * wide.activations and wide.params == plans[2].params
    # Remat keeps one input per layer instead of everything.
    assert models.memory_plan(config, {"data": 2}, 64, remat=True).activations < plans[1].activations / 4


def test_memory_plan_activation_sizes_by_hand():
    # One image, one layer: N = 2 tokens (1 patch + class), D = 4, H = 8, A = 1, X = 16 pixels per patch,
    # float32 (c = f = 4 bytes), a sequential block, no head.
    config = vit_config(
        "mu/4", image_size=4, width=4, mlp_dim=8, num_heads=1, depth=1, num_classes=0, channels=1
    )
    N, D, H, A, X, c, f = 2, 4, 8, 1, 16, 4, 4
    stream = 2 * N * D * c + 2 * N * D * (f + c)  # block input, mid residual; two norms
    attention = 4 * N * D * c + A * N * N * f  # q, k, v, heads; attention weights
    mlp = 3 * N * H * c  # pre-gelu, tanh, gelu
    layer = stream + attention + mlp
    outside = (X + N * D + D) * c + N * D * (f + c)  # patches, final norm input and its value/output, pooled
    assert (layer, outside) == (528, 176)
    assert models.activation_bytes(config, images=1) == (layer + layer // 2 + outside, layer)
    assert models.activation_bytes(config, images=3, remat=True)[0] == 3 * (
        N * D * c + layer + layer // 2 + outside
    )
    # Split 2 ways over the heads and the MLP hidden: only those parts shrink.
    halved = models.activation_bytes(config, images=1, model_shards={"heads": 2, "mlp": 2})[1]
    assert halved == stream + attention // 2 + mlp // 2


def test_activation_estimate_is_close_to_xla_buffer_assignment():
    """A real measurement: XLA's temp buffers of a jitted gradient (activations and backward transients)."""
    config = vit_config("mu/4", image_size=32, num_classes=10, depth=2)  # N = 65 tokens, D = 64, H = 256
    graphdef, state = nnx.split(nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0))))

    def loss(state, images):
        return jnp.mean(nnx.merge(graphdef, state)(images) ** 2)

    images = jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.float32)
    measured = jax.jit(jax.grad(loss)).lower(state, images).compile().memory_analysis().temp_size_in_bytes
    planned = models.memory_plan(config, {"data": 1}, 16).activations
    assert 0.8 < planned / measured < 1.2, (planned, measured)  # 0.93 with jax 0.10.2 on CPU


def test_memory_plan_of_vit_22b_is_instant():
    config = vit_config("22B/14")
    start = time.perf_counter()
    fsdp = models.memory_plan(config, {"data": 256, "model": 4}, 4096, rules=FSDP_RULES)
    tp = models.memory_plan(config, {"data": 256, "model": 4}, 4096, rules=TP_RULES)
    assert time.perf_counter() - start < 10  # about 0.2 s; generous for a loaded CI machine
    assert fsdp.num_devices == 1024 and fsdp.images_per_device == 16
    assert 21.6e9 < fsdp.param_count < 21.8e9
    # Megatron splits nearly every parameter 4 ways; FSDP + Megatron about 1024 ways.
    assert tp.params == pytest.approx(4 * fsdp.param_count / 4, rel=0.01)
    assert fsdp.params == pytest.approx(4 * fsdp.param_count / 1024, rel=0.03)


def test_memory_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="optimizer='lion' is unknown"):
        models.memory_plan(tiny(), {"data": 1}, 8, "lion")
    with pytest.raises(ValueError, match="batch_size=10 is not divisible by the 4 data shards"):
        models.memory_plan(tiny(), {"data": 2, "expert": 2}, 10)
    with pytest.raises(ValueError, match="unknown axes"):
        models.memory_plan(tiny(), {"pipeline": 2}, 8)


# ---------------------------------------------------------------------------------------------------------
# 8 fake devices, one subprocess
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eight_devices() -> dict:
    return run_on_fake_devices("_sharded_forward.py", devices=8, timeout=300)


@pytest.mark.parametrize(
    "case",
    [
        "data2_model4_parallel_tp",
        "data2_model4_sequential_fsdp",
        "data4_model2_parallel_fsdp",
        "data4_model2_sequential_tp",
    ],
)
def test_sharded_forward_equals_single_device(eight_devices, case):
    result = eight_devices[case]
    assert result["max_abs_diff"] < 1e-5, result
    assert result["max_abs_logit"] > 0.5  # a real signal, not zeros
    assert result["batch_spec"] == "P('data', None, None, None)"
    # The plan's parameter bytes per device are what the placed shards hold.
    assert result["param_bytes_per_device"] == result["planned_param_bytes"]
    # The placed arrays carry the planned specs (MLP kernel [D, H]; fused kernel [L, D, 3D + H] when scanned).
    fsdp = "fsdp" in case
    if "sequential" in case:
        expected = "P('data', 'model')" if fsdp else "P(None, 'model')"
        assert result["specs"]["encoder/blocks/0/mlp/wi"] == expected
    else:
        expected = "P(None, 'data', 'model')" if fsdp else "P(None, None, 'model')"
        assert result["specs"]["encoder/blocks/in_kernel"] == expected


def test_create_sharded_matches_single_device_init(eight_devices):
    result = eight_devices["create_sharded"]
    assert result["all_equal"]
    assert result["specs"]["encoder/blocks/0/in_kernel"] == "P('data', 'model')"
    assert result["specs"]["encoder/blocks/0/out_kernel"] == "P('model', 'data')"


def test_batches_split_over_data_and_expert(eight_devices):
    result = eight_devices["batch"]
    assert result["expert_mesh_specs"] == {
        "images": "P(('data', 'expert'), None, None, None)",
        "labels": "P(('data', 'expert'),)",
    }
    assert result["labels_shard_shape"] == [2]  # 8 images over 4 data shards
    assert "leading batch axis must be divisible by the 4 data shards" in result["indivisible_error"]
