"""Test session set-up: offline network guard, a bounded hypothesis profile, shared fixtures."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from sparse_experts import offline, presets

# Compile without XLA backend optimisation, as the smoke preset does: about 3x faster compiles on CPU. Set
# before anything imports jax; subprocesses and notebook kernels inherit it.
if presets.PRESET_XLA_FLAGS["smoke"] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {presets.PRESET_XLA_FLAGS['smoke']}".strip()

# Nothing downloads in tests: every non-loopback connection fails, here and in every process the tests
# start (papermill kernels, subprocesses) through the sitecustomize on PYTHONPATH.
offline.enable_for_subprocesses()
offline.install()

# Property tests: a bounded number of examples (each new array shape is a new XLA compile), reproducible.
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
