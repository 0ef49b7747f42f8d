"""Wheels for a GPU machine with no network: what the workbook needs there and its image lacks.

    python -m tools.gpu_wheels                 # -> .whl/ (git-ignored): cp312 manylinux x86_64 wheels + sizes
    python -m tools.gpu_wheels --list          # only print what would be fetched (no network)
    make gpu-wheels

The GPU machine's image (Python 3.12 with jax, flax, optax, orbax, numpy, pandas, pytest ...) has no
papermill, nbclient, ipykernel, tensorflow-datasets, array_record, plotly or anywidget. This tool takes the
dependency closure of :data:`DIRECT` from the installed metadata of the environment it runs in (the venv
made from the lock), with environment markers evaluated for CPython 3.12 on Linux x86_64, drops what the
image already has (:data:`IMAGE_PACKAGES`, unless named in ``--carry-anyway``), pins each to its
``requirements.txt`` version, and downloads the wheels with pip for that platform; a package published only
as a source archive is built here into a pure-Python wheel. It prints every wheel with its size and the
total against the device tool's carry limit, which counts the whole working tree that travels (tracked and
untracked-not-ignored files) plus the carried folder, and exits 1 when they do not fit.

On the GPU machine (``.ci/gpu`` does this when ``.whl/`` is there)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/lib
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

from sparse_experts import paths
from tools.envfile import requirement_pins

# What the notebooks and the GPU CI import that the image lacks (each one's needs come with it).
DIRECT = (
    "papermill", "nbclient", "nbformat", "ipykernel", "tensorflow-datasets", "array-record",
    "importlib-resources", "plotly", "anywidget", "ipywidgets",
)  # fmt: skip

# The GPU image's Python packages (the device tool's package list for its 'cuda' image, read 2026-11-17):
# carried only when named in --carry-anyway (for another version than the image's).
IMAGE_PACKAGES = frozenset(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
    cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
    execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
    httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
    jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
    lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
    mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
    networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
    nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
    nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
    nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
    opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
    pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
    pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
    pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
    scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
    shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
    torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
    typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
    zipp""".split()
)

# The device tool carries at most this much per call: the working tree that travels plus carried folders.
CARRY_LIMIT_MIB = 64
PYTHON_VERSION = "3.12"
# pip matches a manylinux tag's glibc version exactly, so every one a wheel of the lock may carry is listed.
PLATFORMS = tuple(f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)) + ("manylinux2014_x86_64",)
DEFAULT_DEST = ".whl"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_environment(python_version: str = PYTHON_VERSION) -> dict[str, str]:
    """Marker values of CPython ``python_version`` on Linux x86_64 (the GPU machine), not of this one."""
    env = default_environment()
    env.update(
        python_version=python_version, python_full_version=f"{python_version}.0", sys_platform="linux",
        platform_system="Linux", platform_machine="x86_64", implementation_name="cpython",
        platform_python_implementation="CPython", os_name="posix",
    )  # fmt: skip
    return env


def requirements_of(name: str) -> list[str]:
    """The ``Requires-Dist`` lines of the installed distribution ``name``."""
    return list(metadata.distribution(name).requires or [])


def closure(
    direct: Iterable[str],
    requires=requirements_of,
    environment: Mapping[str, str] | None = None,
    stop: Iterable[str] = (),
) -> set[str]:
    """Normalised names of ``direct`` and everything they need on the target (markers evaluated there;
    optional extras left out). Names in ``stop`` (what the target has) are listed but not followed."""
    env = dict(environment or target_environment())
    stop = {normalise(n) for n in stop}
    seen: set[str] = set()
    todo = [normalise(n) for n in direct]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in stop:
            continue
        for line in requires(name):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                todo.append(normalise(req.name))
    return seen


def plan(
    direct: Iterable[str] = DIRECT,
    pins: Mapping[str, str] | None = None,
    image: Iterable[str] = IMAGE_PACKAGES,
    carry_anyway: Iterable[str] = (),
    requires=requirements_of,
) -> dict[str, str]:
    """``{name: pinned version}`` of the packages to carry: the closure of ``direct`` less ``image`` (except
    ``carry_anyway``), each at its ``requirements.txt`` pin. A needed package without a pin is an error."""
    pins = dict(requirement_pins() if pins is None else pins)
    keep = {normalise(n) for n in carry_anyway}
    skip = {normalise(n) for n in image} - keep
    needed = sorted(closure(direct, requires, stop=skip) - skip)
    unpinned = [n for n in needed if n not in pins]
    if unpinned:
        raise ValueError(f"no requirements.txt pin for {', '.join(unpinned)}; add them to the lock first")
    return {name: pins[name] for name in needed}


def _pip(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(command, capture_output=True, text=True)


def download(wanted: Mapping[str, str], dest: Path, log=print) -> None:
    """Binary wheels of ``wanted`` for the target into ``dest``, in one pip call; a package pip finds no
    such wheel for is built here from its source archive, and must give a pure-Python wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    pending = dict(wanted)
    target = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    target += [arg for p in PLATFORMS for arg in ("--platform", p)]
    while pending:
        specs = [f"{name}=={version}" for name, version in pending.items()]
        done = _pip("download", "--no-deps", *target, "-d", str(dest), *specs)
        if done.returncode == 0:
            return
        missing = re.search(r"No matching distribution found for ([A-Za-z0-9._-]+)==", done.stderr)
        if not missing or normalise(missing[1]) not in pending:
            raise RuntimeError(f"pip download failed:\n{done.stderr[-3000:]}")
        name = normalise(missing[1])
        version = pending.pop(name)
        log(f"{name}=={version}: no {PYTHON_VERSION} manylinux wheel; building it from source here")
        built = _pip("wheel", "--no-deps", "-w", str(dest), f"{name}=={version}")
        if built.returncode != 0:
            raise RuntimeError(f"pip wheel {name}=={version} failed:\n{built.stderr[-3000:]}")
        pure = [w for w in dest.glob("*.whl") if normalise(w.name.split("-")[0]) == name]
        if not pure or not all(w.name.endswith("-none-any.whl") for w in pure):
            raise RuntimeError(f"{name}=={version} built no pure-Python wheel ({pure}); it cannot travel")


def tree_bytes(root: Path | None = None) -> int:
    """Bytes of what the device tool sends besides carried folders: tracked files and untracked files git
    does not ignore."""
    root = root or paths.repo_root()
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    return sum((root / f).stat().st_size for f in listed if f and (root / f).is_file())


def report(dest: Path, tree: int, limit_mib: float = CARRY_LIMIT_MIB, log=print) -> bool:
    """Print each wheel and the totals; True when the wheels plus the tree fit under ``limit_mib``."""
    wheels = sorted(dest.glob("*.whl"), key=lambda w: -w.stat().st_size)
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        log(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
    fits = total + tree <= limit_mib * 2**20
    log(
        f"{len(wheels)} wheels, {total / 2**20:.1f} MiB; working tree {tree / 2**20:.1f} MiB; together "
        f"{(total + tree) / 2**20:.1f} MiB of the {limit_mib:g} MiB carry limit: "
        + ("fits" if fits else "TOO BIG")
    )
    return fits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_wheels", description=__doc__.split("\n")[0])
    parser.add_argument("--dest", type=Path, default=None, help=f"wheel folder (default {DEFAULT_DEST}/)")
    parser.add_argument("--list", action="store_true", help="print the packages and stop (no network)")
    parser.add_argument("--carry-anyway", nargs="*", default=[], metavar="NAME", help="carry these too")
    parser.add_argument("--limit-mib", type=float, default=CARRY_LIMIT_MIB, help="carry limit in MiB")
    args = parser.parse_args(argv)
    wanted = plan(carry_anyway=args.carry_anyway)
    print(f"{len(wanted)} packages the GPU image lacks: " + " ".join(f"{n}=={v}" for n, v in wanted.items()))
    if args.list:
        return 0
    dest = args.dest or paths.repo_root() / DEFAULT_DEST
    for wheel in dest.glob("*.whl"):  # two versions of a package stop the install on the GPU machine
        name, version = wheel.name.split("-")[:2]
        if wanted.get(normalise(name)) != version:
            wheel.unlink()
    download(wanted, dest)
    return 0 if report(dest, tree_bytes(), args.limit_mib) else 1


if __name__ == "__main__":
    sys.exit(main())
