"""The ``gpu_embedded`` preset (one GPU on the embedded data, what ``.ci/gpu`` runs), dry-run without a GPU:
every dataset it names is embedded (no network needed on the GPU machine), images at the sets' full size,
model shapes by abstract evaluation and training memory per device (``models.memory_plan``) within
``presets.PRESET_DEVICES["gpu_embedded"]``, evaluation in whole routing groups on the real split sizes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sparse_experts import datasets, models
from sparse_experts.workbook import cache, presets, zoo
from sparse_experts.workbook.configs import base

PRESET = "gpu_embedded"
BUDGET = presets.PRESET_DEVICES[PRESET]
CI_NOTEBOOKS = ("00_tour", "01_vit22b_recipe", "02_train_vmoe", "03_routing_explorer", "04_adaptive_compute")


def _dataset_values(notebook: str) -> list[str]:
    module, params = presets.NOTEBOOKS[notebook], presets.resolve(notebook, preset=PRESET)
    names = []
    for field in dataclasses.fields(module.Config):
        if field.metadata["check"] in (base.dataset_name, base.dataset_list):
            value = params[field.name]
            names += [value] if isinstance(value, str) else list(value)
    return names


def _training_bytes(config: models.VitConfig, batch_size: int) -> int:
    """A training step's bytes on one device: ``models.memory_plan`` for a dense ViT. It does not size MoE
    activations yet, so an MoE model is bounded by its dense twin's activations times the expert slots per
    token (k x capacity factor for top-k, the factor alone otherwise; at least 1): an MoE layer's buffers and
    expert hidden units are that multiple of the dense MLP's, attention is unchanged. Plus the model's own
    parameters, gradients and Adam moments."""
    mesh = {"data": BUDGET["devices"]}
    if config.moe is None:
        return models.memory_plan(config, mesh, batch_size).total
    twin = models.memory_plan(config.replace(moe=None), mesh, batch_size)
    choices = config.moe.k if config.moe.router == "top_k" else 1  # expert choice and Soft MoE: k unused
    slots_per_token = max(1.0, choices * config.moe.capacity_factor)
    state_bytes = models.param_count(config) * jnp.dtype(config.param_dtype).itemsize * (1 + 1 + 2)
    return int(state_bytes + slots_per_token * twin.activations)


def test_the_preset_is_registered_with_a_device_budget():
    assert PRESET in presets.PRESET_NAMES and PRESET in presets.PRESET_DESCRIPTIONS
    assert BUDGET["devices"] == 1 and BUDGET["memory_gib"] > 0


@pytest.mark.parametrize("notebook", sorted(presets.NOTEBOOKS))
def test_names_only_embedded_datasets_at_full_size(notebook):
    """Nothing to download or prepare by hand: every dataset is embedded, none a reduced stand-in, and
    images are fed at the set's own size."""
    embedded = set(datasets.list_datasets())
    for name in _dataset_values(notebook):
        assert name in embedded, (notebook, name)
        assert not name.endswith("_small"), (notebook, name, "a reduced stand-in")
    params = presets.resolve(notebook, preset=PRESET)
    if "image_size" in params:  # full resolution: the images are not shrunk or padded
        assert params["image_size"] == datasets.info(params["dataset"]).image_shape[0], notebook


def test_catalog_gpu_preset_is_unchanged_beside_it():
    """The catalog-data configuration stays for runtimes with network."""
    assert presets.resolve("02_train_vmoe", preset="gpu").dataset == "cifar100"
    assert presets.resolve("00_tour", preset="gpu").upstream == "cifar100"


def test_recipe_notebook_fits_one_gpu():
    """01: shapes by abstract evaluation; the learning-rate sweep's copies side by side fit the device."""
    p = presets.resolve("01_vit22b_recipe", preset=PRESET)
    num_classes = datasets.info(p.dataset).num_classes
    config = models.vit_config(p.model, image_size=p.image_size, num_classes=num_classes)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: models.ViT(config, rngs=nnx.Rngs(0))))
    images = jax.ShapeDtypeStruct((p.batch_size, p.image_size, p.image_size, 3), jnp.float32)
    logits, stats = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, return_stats=True), state, images)
    assert logits.shape == (p.batch_size, num_classes) and stats["attn_max_logit"].shape == (config.depth,)
    plan = models.memory_plan(config, {"data": BUDGET["devices"]}, p.batch_size).per_device_bytes()
    sweep_bytes = len(p.learning_rates) * plan["total"]
    assert sweep_bytes < BUDGET["memory_gib"] * 2**30, f"sweep needs {sweep_bytes / 2**30:.1f} GiB"


def test_train_vmoe_models_fit_one_gpu_and_evaluate_in_whole_groups():
    """02: each model's forward shapes (abstract), the seeds trained side by side within the device's memory,
    and evaluation on the embedded set's real validation/test sizes in whole routing groups."""
    p = zoo.models_of_run(Path("no-such-folder"), PRESET).params
    info = datasets.info(p["dataset"])
    assert p["dataset"] == "shapes_upstream" and info.splits["train"] >= 50_000
    assert {"dense", "vmoe_every2_k2"} <= set(p["models"])  # the main pair, compared in notebook 02
    images = jax.ShapeDtypeStruct((p["batch_size"], p["image_size"], p["image_size"], 3), jnp.float32)
    for name in p["models"]:
        config = zoo.model_config(name, p)
        graphdef, state = nnx.split(
            nnx.eval_shape(lambda config=config: models.ViT(config, rngs=nnx.Rngs(0)))
        )
        logits = jax.eval_shape(lambda s, x, g=graphdef: nnx.merge(g, s)(x), state, images)
        assert logits.shape == (p["batch_size"], info.num_classes), name
        copies = len(zoo.seeds_of(name, p))  # the seeds of one model train as one vmapped program
        need = copies * _training_bytes(config, p["batch_size"])
        assert need < BUDGET["memory_gib"] * 2**30, (name, copies, need / 2**30)
        for split in ("validation", "test"):
            cache.check_eval_split(zoo.spec(name, p), split, num_examples=info.splits[split])


@pytest.mark.parametrize("notebook", ["03_routing_explorer", "04_adaptive_compute"])
def test_readers_of_notebook_02_ask_for_images_that_exist(notebook):
    p = presets.resolve(notebook, preset=PRESET)
    upstream = presets.resolve("02_train_vmoe", preset=PRESET)
    assert p.eval_images <= datasets.info(upstream.dataset).splits["test"], notebook


def test_ci_notebooks_all_have_the_preset():
    for notebook in CI_NOTEBOOKS:
        assert presets.resolve(notebook, preset=PRESET).preset == PRESET
