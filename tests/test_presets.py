"""Presets: complete for every notebook, validation names parameter, value and what is allowed."""

from __future__ import annotations

import pytest

from sparse_experts.workbook import presets, runner


def test_every_notebook_is_registered_with_every_preset():
    names = [nb.name for nb in runner.discover()]
    assert sorted(presets.NOTEBOOK_KNOBS) == sorted(names)
    for name in names:
        for preset in presets.PRESET_NAMES:
            assert set(presets.PRESET_VALUES[name][preset]) == set(presets.NOTEBOOK_KNOBS[name]), (
                name,
                preset,
            )


@pytest.mark.parametrize("preset", presets.PRESET_NAMES)
def test_every_preset_resolves_and_validates(preset):
    """Dry run of each preset: every notebook's values pass their own validators (no data, no compute)."""
    for name in presets.NOTEBOOK_KNOBS:
        params = presets.resolve(name, preset=preset, seed=1)
        assert params.preset == preset and params.seed == 1
        assert all(params[k] is not None for k in presets.NOTEBOOK_KNOBS[name])


def test_none_means_preset_value_and_explicit_wins():
    p = presets.resolve("00_tour", preset="smoke")
    assert p.images_per_class == presets.PRESET_VALUES["00_tour"]["smoke"]["images_per_class"]
    p = presets.resolve("00_tour", preset="smoke", images_per_class=3)
    assert p.images_per_class == 3
    assert p.given["images_per_class"] == 3 and p.given["classes_shown"] is None


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
            "00_tour has no parameter 'learning_rate'; its parameters are: preset, seed",
        ),
    ],
)
def test_bad_values_name_parameter_value_and_allowed(kwargs, message):
    with pytest.raises(presets.ParameterError) as err:
        presets.resolve("00_tour", **kwargs)
    assert message in str(err.value)


def test_catalog_names_are_accepted_offline():
    p = presets.resolve("00_tour", preset="cpu", upstream="cifar100", downstream=["dtd", "oxford_flowers102"])
    assert p.upstream == "cifar100" and p.downstream == ("dtd", "oxford_flowers102")


@pytest.mark.parametrize(
    "check, good, bad",
    [
        (presets.real(0.0, 1.0), [0.0, 0.5, 1, 1.0], [-0.1, 1.01, float("nan"), "0.5", True]),
        (presets.real(0.0, low_open=True), [1e-9, 3.0], [0.0, -1.0, float("inf")]),
        (presets.integer(1, 3), [1, 3], [0, 4, 2.0, True]),
        (presets.choice("a", "b"), ["a", "b"], ["c", None]),
        (presets.boolean(), [True, False], [0, 1, "yes"]),
    ],
)
def test_validators(check, good, bad):
    for value in good:
        check("knob", value)
    for value in bad:
        with pytest.raises(presets.ParameterError, match="knob="):
            check("knob", value)


@pytest.mark.parametrize("preset", ["gpu", "tpu"])
def test_accelerator_presets_dry_run_catalog_datasets(preset, tmp_path):
    """gpu/tpu presets name real catalog datasets whose features fit the loader (no data, no network)."""
    import tensorflow_datasets as tfds

    from sparse_experts.datasets import splits

    names = set()
    for notebook, knobs in presets.NOTEBOOK_KNOBS.items():
        params = presets.resolve(notebook, preset=preset)
        for knob in knobs:
            value = params[knob]
            if knobs[knob].check in (presets.dataset_name, presets.dataset_list):
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
