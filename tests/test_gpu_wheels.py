"""tools/gpu_wheels: which packages a GPU machine without network needs carried, checked offline (the
download itself is `make gpu-wheels`, run by hand; it needs the package index)."""

from __future__ import annotations

import pytest

from tools import envfile, gpu_wheels

# A made-up dependency graph: "app" needs "lib" everywhere, "old" only before Python 3.9, "win" only on
# Windows, "plot" only with an extra; "lib" needs "base", which the image has (and whose needs are its own).
GRAPH = {
    "app": [
        "lib>=1",
        'old; python_version < "3.9"',
        'win; sys_platform == "win32"',
        'plot; extra == "plots"',
        'new; python_version >= "3.12"',
    ],
    "lib": ["base"],
    "new": [],
    "base": ["deep"],
}


def requires(name):
    return GRAPH[name]


def test_closure_follows_needs_with_markers_of_the_target():
    found = gpu_wheels.closure(["app"], requires, stop=["base"])
    # Evaluated for CPython 3.12 on Linux, whatever runs the tool: "new" is in, "old"/"win"/"plot" out.
    assert found == {"app", "lib", "new", "base"}
    assert "deep" not in found  # the image's packages bring their own needs


def test_plan_drops_what_the_image_has_and_pins_the_rest():
    pins = {"app": "1.0", "lib": "2.0", "new": "3.0", "base": "4.0"}
    assert gpu_wheels.plan(["app"], pins, image=["base"], requires=requires) == {
        "app": "1.0",
        "lib": "2.0",
        "new": "3.0",
    }
    carried = gpu_wheels.plan(["app"], pins, image=["base"], carry_anyway=["base"], requires=lambda n: [])
    assert carried == {"app": "1.0"}  # carry_anyway takes a package off the image list
    with pytest.raises(ValueError, match="no requirements.txt pin for lib, new"):
        gpu_wheels.plan(["app"], {"app": "1.0"}, image=["base"], requires=requires)


def test_the_real_plan_carries_the_notebook_stack_but_not_jax():
    """On the lock's installed metadata: what the issue names is carried, the image's packages are not."""
    wanted = gpu_wheels.plan()
    for name in ("papermill", "nbclient", "ipykernel", "tensorflow-datasets", "array-record", "plotly",
                 "anywidget", "jupyter-client", "pyzmq", "tensorflow-metadata"):  # fmt: skip
        assert name in wanted, name
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "protobuf", "pytest"):
        assert name not in wanted, name
    pins = envfile.requirement_pins()
    assert all(pins[name] == version for name, version in wanted.items())


def test_report_counts_the_tree_against_the_carry_limit(tmp_path):
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(b"x" * 3 * 2**20)
    (tmp_path / "b-2.0-py3-none-any.whl").write_bytes(b"x" * 2**20)
    lines = []
    assert gpu_wheels.report(tmp_path, tree=2**20, limit_mib=5, log=lines.append)
    assert (
        lines[-1].startswith("2 wheels, 4.0 MiB; working tree 1.0 MiB; together 5.0 MiB")
        and "fits" in lines[-1]
    )
    assert not gpu_wheels.report(tmp_path, tree=2**20 + 1, limit_mib=5, log=lines.append)
    assert lines[-1].endswith("TOO BIG")
