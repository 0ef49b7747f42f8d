"""Keep ``environment.yml`` (conda/mamba) and ``requirements.txt`` (pip, the lock) on the same pins.

``requirements.txt`` is the truth; :func:`write` mirrors it into ``environment.yml`` and
``tests/test_environment.py`` checks that the two agree.
"""

from __future__ import annotations

import re
from pathlib import Path

from sparse_experts import paths

_PIN = re.compile(r"^\s*(?:-\s+)?([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins(path: Path | None = None) -> dict[str, str]:
    """``{normalised name: version}`` of every ``name==version`` line of ``requirements.txt``."""
    path = path or paths.repo_root() / "requirements.txt"
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            if not (match := _PIN.match(line)):
                raise ValueError(f"{path}: line {line!r} is not an exact pin name==version")
            pins[_normalise(match[1])] = match[2]
    return pins


def environment_pins(path: Path | None = None) -> dict[str, str]:
    """The pins listed under ``pip:`` in ``environment.yml``."""
    path = path or paths.repo_root() / "environment.yml"
    text = path.read_text()
    pip_section = text[text.index("- pip:") :] if "- pip:" in text else ""
    matches = (_PIN.match(line.strip()) for line in pip_section.splitlines())
    return {_normalise(m[1]): m[2] for m in matches if m}


def write(path: Path | None = None) -> Path:
    """Mirror the pins of ``requirements.txt`` into ``environment.yml``."""
    path = path or paths.repo_root() / "environment.yml"
    lines = [
        "# conda/mamba: `mamba env create -f environment.yml && conda activate sparse-experts`.",
        "# Same exact pins as requirements.txt (mirrored by `make lock`; a test checks they agree).",
        "name: sparse-experts",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        "  - python=3.11",
        "  - pip",
        "  - pip:",
    ]
    lines += [f"      - {name}=={version}" for name, version in sorted(requirement_pins().items())]
    lines.append("      - -e .")
    path.write_text("\n".join(lines) + "\n")
    return path
