"""Presets and notebook configs: complete for every notebook; errors name the parameter, value and allowed."""

from __future__ import annotations

import dataclasses

import pytest

from sparse_experts.workbook import presets, runner
from sparse_experts.workbook.configs import base, tour


def test_every_notebook_has_a_config_with_every_preset():
    names = [nb.name for nb in runner.discover()]
    assert sorted(presets.NOTEBOOKS) == sorted(names)
    for name in names:
        module = presets.NOTEBOOKS[name]
        assert module.Config.notebook == name
        knobs = set(module.Config.knob_names()) - {"preset", "seed"}
        assert set(module.EXPECTED_SECONDS) == set(presets.PRESET_NAMES), name
        for preset in presets.PRESET_NAMES:
            assert set(module.PRESETS[preset]) == knobs, (name, preset)


def test_every_knob_states_what_it_means_and_its_check():
    for name, module in presets.NOTEBOOKS.items():
        for field in dataclasses.fields(module.Config):
            assert field.metadata["doc"] and callable(field.metadata["check"]), (name, field.name)


def test_cpu_expected_times_are_the_readme_measurements():
    expected = {name: presets.expected_seconds(name, "cpu") for name in presets.NOTEBOOKS}
    assert expected == {
        "00_tour": 40,
        "01_vit22b_recipe": 330,
        "02_train_vmoe": 1500,
        "03_routing_explorer": 60,
        "04_adaptive_compute": 120,
        "05_ensembles": 2400,
        "06_expert_models": 1710,
        "07_scale_out": 420,
    }


@pytest.mark.parametrize("preset", presets.PRESET_NAMES)
def test_every_preset_resolves_and_validates(preset):
    """Dry run of each preset: every notebook's values pass their own checks (no data, no compute)."""
    for name, module in presets.NOTEBOOKS.items():
        config = presets.resolve(name, preset=preset, seed=1)
        assert isinstance(config, module.Config)
        assert config.preset == preset and config.seed == 1
        assert all(getattr(config, k) is not None for k in module.Config.knob_names())


def test_none_means_preset_value_and_explicit_wins():
    p = presets.resolve("00_tour", preset="smoke")
    assert p.images_per_class == tour.PRESETS["smoke"]["images_per_class"]
    p = presets.resolve("00_tour", preset="smoke", images_per_class=3, classes_shown=None)
    assert p.images_per_class == 3 and p.classes_shown == tour.PRESETS["smoke"]["classes_shown"]
    assert p["images_per_class"] == 3 and dict(p)["images_per_class"] == 3 and "classes_shown" in p
    with pytest.raises(KeyError, match="00_tour has no parameter 'nope'"):
        p["nope"]


def test_configs_are_frozen_and_checked_on_construction():
    p = presets.resolve("00_tour", preset="smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.images_per_class = 5
    with pytest.raises(presets.ParameterError, match="images_per_class=0"):
        dataclasses.replace(p, images_per_class=0)
    with pytest.raises(TypeError, match="learning_rate"):  # the dataclass itself refuses an unknown knob
        tour.Config(**p, learning_rate=0.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(preset="nosuch"),
            "preset='nosuch' is not allowed; expected one of 'smoke', 'cpu', 'gpu', 'tpu'",
        ),
        (dict(seed=-1), "seed=-1"),
        (dict(seed=1.5), "seed=1.5"),
        (dict(images_per_class=0), "images_per_class=0 is not allowed; expected an integer in [1, 16]"),
        (dict(images_per_class="4"), "images_per_class='4'"),
        (
            dict(upstream="nosuch_dataset"),
            "upstream='nosuch_dataset' is not allowed; expected an embedded dataset",
        ),
        (dict(downstream="shapes_novel"), "downstream='shapes_novel'"),
        (dict(downstream=["shapes_novel", "bogus"]), "downstream[1]='bogus'"),
        (
            dict(learning_rate=0.1),
            "00_tour has no parameter 'learning_rate'; its parameters are: preset, seed, upstream, down",
        ),
    ],
)
def test_bad_values_name_parameter_value_and_allowed(kwargs, message):
    with pytest.raises(presets.ParameterError) as err:
        presets.resolve("00_tour", **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "notebook, kwargs, message",
    [
        ("01_vit22b_recipe", dict(plan_model_axis=3), "plan_model_axis=3 is not allowed; expected a divisor"),
        (
            "01_vit22b_recipe",
            dict(image_size=9),
            "image_size=9 is not allowed; expected a multiple of the patch",
        ),
        ("01_vit22b_recipe", dict(learning_rates=[1e-3, 1e-2]), "learning_rates=[0.001, 0.01]"),
        ("01_vit22b_recipe", dict(model="huge/3"), "model='huge/3' is not allowed; expected a ViT size"),
        ("02_train_vmoe", dict(width=66), "width=66 is not allowed; expected a multiple of num_heads=4"),
        (
            "02_train_vmoe",
            dict(warmup_steps=2000),
            "warmup_steps=2000 is not allowed; expected at most steps=1800",
        ),
        ("02_train_vmoe", dict(models=["dense", "nosuch"]), "models=['dense', 'nosuch']"),
        ("02_train_vmoe", dict(label="fine"), "label='fine' is not allowed; expected one of 'label'"),
        ("03_routing_explorer", dict(k=9), "k=9 is not allowed; expected an integer in [1, num_experts=8]"),
        ("03_routing_explorer", dict(layer=2), "layer=2 is not allowed; expected -1 or an MoE layer"),
        ("03_routing_explorer", dict(eval_images=2001), "a multiple of notebook 02's group_size=8"),
        (
            "03_routing_explorer",
            dict(batch_priority=1),
            "batch_priority=1 is not allowed; expected True or False",
        ),
        ("04_adaptive_compute", dict(capacity_factors=[0.5, 0.5]), "capacity_factors=[0.5, 0.5]"),
        ("04_adaptive_compute", dict(eval_batch_size=1001), "eval_batch_size=1001 is not allowed"),
        ("04_adaptive_compute", dict(claim_threshold=1.5), "expected a finite number in [0, 1]"),
    ],
)
def test_each_notebook_names_the_bad_knob(notebook, kwargs, message):
    with pytest.raises(presets.ParameterError) as err:
        presets.resolve(notebook, preset="cpu", **kwargs)
    assert message in str(err.value)


def test_catalog_names_are_accepted_offline():
    p = presets.resolve("00_tour", preset="cpu", upstream="cifar100", downstream=["dtd", "oxford_flowers102"])
    assert p.upstream == "cifar100" and p.downstream == ("dtd", "oxford_flowers102")


def test_unknown_notebook_lists_the_known_ones():
    with pytest.raises(presets.ParameterError, match="'99_nosuch' has no config .* known notebooks: 00_tour"):
        presets.resolve("99_nosuch")


@pytest.mark.parametrize(
    "check, good, bad",
    [
        (base.real(0.0, 1.0), [0.0, 0.5, 1, 1.0], [-0.1, 1.01, float("nan"), "0.5", True]),
        (base.real(0.0, 16.0, low_open=True), [1e-9, 3.0], [0.0, -1.0, float("inf")]),
        (base.integer(1, 3), [1, 3], [0, 4, 2.0, True]),
        (base.one_of("a", "b"), ["a", "b"], ["c", None]),
        (base.boolean, [True, False], [0, 1, "yes"]),
        (
            base.positive_list(2, 16.0),
            [[0.5, 1], (2.0, 16.0)],
            [[1.0], [0.0, 1.0], [1.0, 1.0], "ab", [1, True]],
        ),
        (base.positive_list(3, 10.0, min_spread=100), [[1e-3, 1e-2, 1e-1]], [[1e-2, 1e-1, 5e-1], [1, 2, 20]]),
        (base.names_from(("x", "y")), [["x"], ("x", "y")], [[], "x", ["x", "x"], ["z"]]),
    ],
)
def test_checks(check, good, bad):
    for value in good:
        check("knob", value)
    for value in bad:
        with pytest.raises(presets.ParameterError, match="knob="):
            check("knob", value)


def test_checks_normalise_values():
    assert base.positive_list(2, 16.0)("f", [1, 0.5]) == (0.5, 1.0)
    assert base.real(0.0, 1.0)("r", 1) == 1.0 and isinstance(base.real(0.0, 1.0)("r", 1), float)
    assert presets.resolve("04_adaptive_compute", capacity_factors=[1, 0.5]).capacity_factors == (0.5, 1.0)


@pytest.mark.parametrize("preset", ["gpu", "tpu"])
def test_accelerator_presets_dry_run_catalog_datasets(preset, tmp_path):
    """gpu/tpu presets name real catalog datasets whose features fit the loader (no data, no network)."""
    import tensorflow_datasets as tfds

    from sparse_experts.datasets import splits

    names = set()
    for notebook, module in presets.NOTEBOOKS.items():
        params = presets.resolve(notebook, preset=preset)
        for field in dataclasses.fields(module.Config):
            value = params[field.name]
            if field.metadata["check"] in (base.dataset_name, base.dataset_list):
                names.update([value] if isinstance(value, str) else value)
    assert names, "the accelerator presets name no datasets"
    for name in sorted(names):
        features = tfds.builder(name, data_dir=str(tmp_path)).info.features
        assert features["image"].shape[-1] == 3, (name, features["image"].shape)
        assert features["label"].num_classes >= 2, name
        # A split plan with published sizes: every workbook split is known and non-empty before preparing.
        planned = splits.sizes(splits.plan(name), splits.RAW_SIZES[splits.base_name(name)])
        assert set(planned) == set(splits.SPLITS) and min(planned.values()) > 0, (name, planned)


@pytest.mark.parametrize("preset", ["gpu", "tpu"])
def test_recipe_notebook_dry_run_fits_the_accelerator(preset, tmp_path):
    """01 under gpu/tpu: model shapes by abstract evaluation and the LR sweep's memory against the device."""
    import jax
    import jax.numpy as jnp
    import tensorflow_datasets as tfds
    from flax import nnx

    from sparse_experts import models

    p = presets.resolve("01_vit22b_recipe", preset=preset)
    budget = presets.PRESET_DEVICES[preset]
    features = tfds.builder(p.dataset, data_dir=str(tmp_path)).info.features
    config = models.vit_config(p.model, image_size=p.image_size, num_classes=features["label"].num_classes)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: models.ViT(config, rngs=nnx.Rngs(0))))
    images = jax.ShapeDtypeStruct((p.batch_size, p.image_size, p.image_size, 3), jnp.float32)
    logits, stats = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, return_stats=True), state, images)
    assert logits.shape == (p.batch_size, features["label"].num_classes)
    assert stats["attn_max_logit"].shape == (config.depth,)
    plan = models.memory_plan(config, {"data": budget["devices"]}, p.batch_size).per_device_bytes()
    copies = len(p.learning_rates)  # the sweep trains one copy per learning rate side by side
    sweep_bytes = copies * plan["total"]
    assert sweep_bytes < budget["memory_gib"] * 2**30, (
        f"{preset}: the LR sweep needs {sweep_bytes / 2**30:.1f} GiB per device, "
        f"more than {budget['memory_gib']} GiB"
    )
