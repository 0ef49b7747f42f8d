"""Test session set-up: offline network guard, a bounded hypothesis profile, shared fixtures."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import pytest
from flax import nnx
from hypothesis import HealthCheck, settings

from sparse_experts import models, offline
from sparse_experts.workbook import presets

# Compile without XLA backend optimisation, as the smoke preset does: about 3x faster compiles on CPU. Set
# before anything imports jax; subprocesses and notebook kernels inherit it.
if (smoke_flags := presets.PRESET_XLA_FLAGS["smoke"]) not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {smoke_flags}".strip()

# One persistent XLA compilation cache for the session, shared by every process the tests start (notebook
# kernels, subprocesses, launched processes): a notebook's "try this" reruns and the other runs that compile
# the same programs again read them back instead of compiling. An entry's key is the program's HLO with the
# jax version, backend, devices, compile options and XLA flags. The folder is new for each session and removed
# at exit, so no entry outlives the code that made it; a pytest started by a test reuses its session's folder
# (this variable); SPARSE_EXPERTS_TEST_XLA_CACHE=0 turns the cache off.
XLA_CACHE_ENV = "SPARSE_EXPERTS_TEST_XLA_CACHE"
if os.environ.get(XLA_CACHE_ENV) != "0":
    if not os.path.isdir(os.environ.get(XLA_CACHE_ENV, "")):
        os.environ[XLA_CACHE_ENV] = tempfile.mkdtemp(prefix="sparse-experts-tests-xla-cache-")
        atexit.register(shutil.rmtree, os.environ[XLA_CACHE_ENV], ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=os.environ[XLA_CACHE_ENV], JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
    )
    jax.config.update("jax_compilation_cache_dir", os.environ[XLA_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

# Nothing downloads in tests: every non-loopback connection fails, here and in every process the tests
# start (papermill kernels, subprocesses) through the sitecustomize on PYTHONPATH.
offline.enable_for_subprocesses()
offline.install()

# Property tests: a bounded number of examples (each new array shape is a new XLA compile), reproducible.
settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def run_on_fake_devices(script: str, devices: int = 8, timeout: int = 300, args: list[str] = ()) -> dict:
    """Run ``tests/<script>`` in a subprocess that sees ``devices`` fake CPU devices; return its JSON.

    The pytest process has one device and jax is already initialised, so multi-device checks run apart.
    LLVM optimisation level 0 cuts the subprocess's compile time by ~3x; its single-device references are
    compiled with the same flags, so comparisons are unaffected. The script prints one JSON object last.
    """
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).parent / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_vmoe():
    """A tiny real V-MoE for the analysis tests: 2 layers, MoE at layer 1, E=4 experts (k=2), 8x8 images, Y=5
    classes, a non-zero head so that logits differ between images."""
    config = models.vit_config(
        "mu/4", image_size=8, num_classes=5, depth=2, width=16, mlp_dim=32, num_heads=2,
        head_zero_init=False,
        moe=models.MoeConfig(num_experts=4, k=2, placement=(1,), capacity_factor=8.0, group_size=1),
    )  # fmt: skip
    return models.ViT(config, rngs=nnx.Rngs(0))
