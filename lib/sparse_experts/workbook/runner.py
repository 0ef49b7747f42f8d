"""Run the workbook's notebooks headlessly with papermill, in order, under one preset.

    python -m sparse_experts.workbook run [--preset cpu] [--only 02 ...] [--out DIR] [-p name=value ...]
    python -m sparse_experts.workbook list

Everything is checked before the first notebook starts: the preset, the ``--only`` selection, and every
``-p`` parameter, which must be declared in the notebook's ``parameters`` cell (papermill itself only warns)
and hold a value its config allows. Each notebook gets a progress line with its run time, flagged (not
failed) when over :data:`OVER_TIME_FACTOR` times the expected time its config states for the preset.

Outputs go to ``outputs/<preset>/`` (or ``--out``): the executed notebook ``<name>.ipynb``, its figures
``<name>.json``, ``status.json`` and ``index.html``. A notebook executes into a staging folder and only a
success that saved its figures is moved into place, so a failed or interrupted run never replaces a good
output; it is kept as ``<name>.failed.ipynb`` and the run stops there, exiting non-zero. The executed
notebook keeps its outputs but not the state of its live widgets (sliders, ``FigureWidget``): that state
is only useful to a running kernel, and it made notebook 03 weigh 16 MB; each widget's static figure is in
the notebook below it.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import functools
import html
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import papermill
import plotly
from papermill.exceptions import PapermillExecutionError

from sparse_experts import offline, paths
from sparse_experts.atomic import write_json_atomic, write_text_atomic
from sparse_experts.workbook import fmt, presets
from sparse_experts.workbook.session import OUTPUT_DIR_ENV

# The workbook's notebooks and the question each answers (the tour and the README show this map).
NOTEBOOK_QUESTIONS: dict[str, str] = {
    "00_tour": "What is in this workbook, and what do the datasets look like?",
    "01_vit22b_recipe": "What does each ViT-22B ingredient buy, why does QK-norm matter, "
    "and what would 22B parameters cost?",
    "02_train_vmoe": "Does a sparse V-MoE reach dense accuracy at lower inference compute?",
    "03_routing_explorer": "Which patches go to which expert, what gets dropped, and do experts specialise?",
    "04_adaptive_compute": "How much accuracy does each unit of compute buy when capacity is cut "
    "at test time, with and without BPR?",
    "05_ensembles": "Can cheap kNN ranking pick which pre-trained models to fine-tune and ensemble "
    "for a small task?",
    "06_expert_models": "Does an expert chosen by a cheap proxy beat the generalist, and can adapters "
    "hold many experts in one model?",
    "07_scale_out": "Does the same code run expert-parallel across devices and processes, and how do "
    "costs grow with scale?",
}


# A run is flagged as over time beyond this multiple of its expected time. The expected cpu times are single
# measurements on a 2-core machine (README); the margin keeps ordinary machine-to-machine variation from
# flagging every run, while a notebook that clearly outgrew its budget is marked.
OVER_TIME_FACTOR = 1.5


# The figure in which a notebook saves ``{headline key: what it is, over which seeds and images}``.
HEADLINE_LABELS = "headline_labels"
# The figure in which a notebook saves its main plot (:func:`figure_record`), drawn small on the index page.
MAIN_FIGURE = "main_figure"
# {key: "percent" | "points" | "noise"}: how the index prints a headline fraction (87.1%), a difference of
# fractions (+1.6 points) or a noise half-width (± 1.3 points)
HEADLINE_UNITS = "headline_units"
THUMBNAIL = dict(
    width=320, height=230, showlegend=False, font=dict(size=8), margin=dict(l=36, r=6, t=18, b=28)
)


def figure_record(fig) -> dict[str, Any]:
    """A plotly figure as plain JSON (``data``, ``layout``) for :data:`MAIN_FIGURE`."""
    return json.loads(fig.to_json())


class WorkbookError(Exception):
    """A problem with what the runner was asked to do (reported without a traceback)."""


@dataclass(frozen=True)
class Notebook:
    path: Path

    @property
    def name(self) -> str:
        return self.path.stem


def discover(notebooks_dir: Path | None = None) -> list[Notebook]:
    """Every ``NN_name.ipynb`` in the notebooks folder, in order of its number."""
    folder = notebooks_dir or paths.notebooks_dir()
    found = [Notebook(p) for p in sorted(folder.glob("[0-9][0-9]_*.ipynb"))]
    if not found:
        raise WorkbookError(f"no notebooks named NN_*.ipynb in {folder}")
    return found


def select(notebooks: list[Notebook], only: Sequence[str] | None) -> list[Notebook]:
    """Keep the notebooks named by number (``02``) or name (``02_train_vmoe``), in workbook order."""
    if not only:
        return notebooks
    chosen = []
    for wanted in (w for item in only for w in item.split(",") if w):
        matches = [nb for nb in notebooks if wanted in (nb.name.split("_", 1)[0], nb.name)]
        if not matches:
            raise WorkbookError(
                f"--only {wanted!r} matches no notebook; available: " + ", ".join(nb.name for nb in notebooks)
            )
        chosen += matches
    return [nb for nb in notebooks if nb in chosen]


def parse_assignments(items: Sequence[str] | None) -> dict[str, Any]:
    """``name=value`` pairs; values are Python literals (``3``, ``0.1``, ``[1, 2]``, ``None``) or strings."""
    params: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise WorkbookError(f"-p {item!r} must look like name=value")
        name, raw = item.split("=", 1)
        name = name.strip()
        if not name.isidentifier():
            raise WorkbookError(f"-p {item!r}: {name!r} is not a parameter name")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        params[name] = value
    return params


def declared_parameters(notebook: Notebook) -> list[str]:
    """Names declared in the notebook's ``parameters`` cell (papermill's own parser)."""
    try:
        declared = papermill.inspect_notebook(str(notebook.path))
    except ValueError as err:  # e.g. no kernelspec in the notebook's metadata
        raise WorkbookError(f"{notebook.name}: cannot read its parameters: {err}") from err
    if not declared:
        raise WorkbookError(f"{notebook.name} has no cell tagged 'parameters'")
    return list(declared)


PROMPT_TAG = "try-this"  # the markdown cell of a notebook's "try this" prompts carries this tag


def prompts(notebook: Notebook) -> list[dict[str, Any]]:
    """The knobs of each "try this" prompt of ``notebook``: one dict per bullet (``- ...``) of its cells
    tagged :data:`PROMPT_TAG`, from the bullet's `` `-p name=value` `` parts (values read as
    :func:`parse_assignments` reads them; quotes around ``name=value`` are dropped). The notebook test runs
    each prompt under smoke."""
    found = []
    for cell in nbformat.read(notebook.path, as_version=4).cells:
        if cell.cell_type != "markdown" or PROMPT_TAG not in cell.metadata.get("tags", []):
            continue
        for bullet in re.split(r"\n(?=- )", "\n" + cell.source):
            parts = [_unquote(part) for part in re.findall(r"`-p ([^`]+)`", bullet)]
            if parts and bullet.lstrip("\n").startswith("- "):
                found.append(parse_assignments(parts))
    return found


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else text


def check_request(notebooks: list[Notebook], preset: str, params: dict[str, Any]) -> None:
    """Every check that can fail before compute: declared parameters and allowed values (the preset too)."""
    if "preset" in params:
        raise WorkbookError("pass the preset with --preset, not -p preset=...")
    for nb in notebooks:
        declared = declared_parameters(nb)
        for name in params:
            if name not in declared:
                raise WorkbookError(
                    f"parameter {name!r} is not declared by {nb.name}; its parameters are: "
                    + ", ".join(declared)
                )
        expected = list(presets.knob_names(nb.name))
        if declared != expected:
            raise WorkbookError(
                f"{nb.name} declares parameters {declared}, but its config declares {expected}"
            )
        presets.resolve(nb.name, preset=preset, **params)


def run(
    preset: str = presets.DEFAULT_PRESET,
    only: Sequence[str] | None = None,
    out: Path | None = None,
    params: dict[str, Any] | None = None,
    notebooks_dir: Path | None = None,
    log=None,
) -> list[dict[str, Any]]:
    """Execute the selected notebooks in order; return their status records. Raises on the first failure."""
    log = log or functools.partial(print, flush=True)
    params = dict(params or {})
    presets.check_preset(preset)  # before anything else, so that it is the first error reported
    notebooks = select(discover(notebooks_dir), only)
    check_request(notebooks, preset, params)  # before anything touches the output folder

    out = Path(out) if out is not None else paths.outputs_root() / preset
    out.mkdir(parents=True, exist_ok=True)
    status_path = out / "status.json"
    status = _read_status(status_path)
    if offline.requested():
        offline.enable_for_subprocesses()

    total = len(notebooks)
    log(f"workbook: preset={preset}, {total} notebook(s) -> {out}")
    for i, nb in enumerate(notebooks, 1):
        log(f"[{i}/{total}] {nb.name} ...")
        record = _run_one(nb, preset, params, out)
        record.update(over_time(record, presets.expected_seconds(nb.name, preset)))
        status[nb.name] = record
        write_json_atomic(status_path, status)
        write_index(out, preset, status)
        line = f"[{i}/{total}] {nb.name} {record['status']} in {record['wall_time_s']:.1f} s"
        if record["status"] != "ok":
            log(line + f"\n{record['error']}")
            raise NotebookFailed(record)
        if record["over_time"]:
            line += (
                f": OVER TIME, expected about {record['expected_s']:g} s under {preset} "
                f"({record['wall_time_s'] / record['expected_s']:.1f}x)"
            )
        log(line)
    log(f"workbook: done; index at {out / 'index.html'}")
    return [status[nb.name] for nb in notebooks]


def over_time(record: dict[str, Any], expected: float | None) -> dict[str, Any]:
    """``expected_s`` (None: not measured) and ``over_time``: whether a successful run took more than
    :data:`OVER_TIME_FACTOR` times the expected time."""
    late = (
        expected is not None
        and record["status"] == "ok"
        and record["wall_time_s"] > OVER_TIME_FACTOR * expected
    )
    return {"expected_s": expected, "over_time": late}


class NotebookFailed(WorkbookError):
    def __init__(self, record: dict[str, Any]):
        self.record = record
        super().__init__(record["error"])


def _run_one(nb: Notebook, preset: str, params: dict[str, Any], out: Path) -> dict[str, Any]:
    staging = out / ".staging" / f"{nb.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    executed, figures = staging / f"{nb.name}.ipynb", staging / f"{nb.name}.json"
    previous_env = {name: os.environ.get(name) for name in (OUTPUT_DIR_ENV, "XLA_FLAGS")}
    os.environ[OUTPUT_DIR_ENV] = str(staging)
    extra_flags = presets.PRESET_XLA_FLAGS.get(preset)
    if extra_flags and extra_flags not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {extra_flags}".strip()
    parameters = {"preset": preset, **params}
    started = time.perf_counter()
    record: dict[str, Any] = {
        "notebook": nb.name,
        "preset": preset,
        "parameters": parameters,
        "started": _now(),
        "status": "ok",
    }
    try:
        try:
            papermill.execute_notebook(
                str(nb.path),
                str(executed),
                parameters=parameters,
                kernel_name="python3",
                cwd=str(nb.path.parent),
                progress_bar=False,
                log_output=False,
                store_widget_state=False,  # 03's FigureWidgets would add megabytes of state (#19)
            )
        except PapermillExecutionError as err:
            source_index = _source_cell_index(executed, err.cell_index)
            record.update(
                status="failed",
                error=f"{nb.name} failed at cell {source_index} (0-based; cell {err.cell_index} of the "
                f"executed notebook, which holds papermill's injected parameters): {err.ename}: {err.evalue}",
                cell_index=source_index,
            )
        except KeyboardInterrupt:  # never leave a half output in place of a good one
            _keep_failed(executed, out, nb)
            raise
        except Exception as err:  # a dead kernel, a kernel that never started, ...
            record.update(status="failed", error=f"{nb.name}: {type(err).__name__}: {err}", cell_index=None)
        else:
            if not figures.exists():
                error = f"{nb.name} ran but did not save its figures (call run.save(...))"
                record.update(status="failed", error=error, cell_index=None)
        record.update(wall_time_s=round(time.perf_counter() - started, 2), finished=_now())
        if record["status"] == "failed":
            _keep_failed(executed, out, nb)
        else:
            os.replace(executed, out / executed.name)
            os.replace(figures, out / figures.name)
            (out / f"{nb.name}.failed.ipynb").unlink(missing_ok=True)
        return record
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for name, value in previous_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _source_cell_index(executed: Path, executed_index: int) -> int:
    """Map a cell index of the executed notebook back to the source (papermill inserts one cell)."""
    try:
        cells = nbformat.read(executed, as_version=4).cells
    except (OSError, ValueError):
        return executed_index
    injected = sum("injected-parameters" in c.metadata.get("tags", []) for c in cells[: executed_index + 1])
    return executed_index - injected


def _keep_failed(executed: Path, out: Path, nb: Notebook) -> None:
    if executed.exists():
        os.replace(executed, out / f"{nb.name}.failed.ipynb")


def _read_status(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_index(out: Path, preset: str, status: dict[str, Any]) -> Path:
    """``index.html``: every notebook with its status, run time, labelled headline numbers and main figure."""
    try:
        names = [nb.name for nb in discover()]
    except WorkbookError:
        names = []
    names += [n for n in status if n not in names]
    rows, pictures = [], {}
    for name in names:
        rec = status.get(name)
        figures_file = out / f"{name}.json"
        headline = commit = picture = ""
        if figures_file.exists():
            saved = json.loads(figures_file.read_text())
            main = saved["figures"].get(MAIN_FIGURE)
            if main:
                key = f"figure-{len(pictures)}"
                pictures[key] = main
                picture = f'<div id="{key}"></div><div class=cap>{html.escape(_title_of(main))}</div>'

            labels = saved["figures"].get(HEADLINE_LABELS) or {}
            units = saved["figures"].get(HEADLINE_UNITS) or {}
            headline = "<br>".join(
                _headline_line(k, saved["figures"].get(k), labels.get(k), units.get(k))
                for k in saved.get("headline", [])
            )
            commit = (saved.get("provenance", {}).get("git", {}).get("commit") or "")[:10]
        if rec is None:
            state, seconds, error = "not run", "", ""
        else:
            state = rec["status"]
            seconds = f"{rec['wall_time_s']:.1f}"
            if rec.get("over_time"):
                seconds += f"<div class=over>over time: expected about {rec['expected_s']:g} s</div>"
            error = html.escape(rec.get("error", "")) if state != "ok" else ""
        files = {f"{name}.ipynb": "notebook", f"{name}.json": "figures", f"{name}.failed.ipynb": "failed run"}
        links = [f'<a href="{file}">{label}</a>' for file, label in files.items() if (out / file).exists()]
        note = " (last good output kept)" if state == "failed" and figures_file.exists() else ""
        rows.append(
            f'<tr class="{state.replace(" ", "-")}"><td>{html.escape(name)}'
            f"<div class=q>{html.escape(NOTEBOOK_QUESTIONS.get(name, ''))}</div></td><td>{state}{note}"
            f"<div class=err>{error}</div></td><td>{seconds}</td><td>{headline}</td><td>{picture}</td>"
            f"<td>{commit}</td><td>{' '.join(links)}</td></tr>"
        )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Sparse Experts Workbook: {preset}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.4em .7em;vertical-align:top;text-align:left}}
tr.ok td:nth-child(2){{color:#17702a}} tr.failed td:nth-child(2){{color:#b00020}}
.err{{font-family:monospace;font-size:.85em;white-space:pre-wrap;max-width:40em}}
.q{{color:#555;font-size:.85em;max-width:22em}} .over{{color:#a05a00;font-size:.85em}}
.cap{{color:#555;font-size:.8em;max-width:320px}}</style></head>
<body><h1>Sparse Experts Workbook: preset <code>{html.escape(preset)}</code></h1>
<p>{html.escape(presets.PRESET_DESCRIPTIONS.get(preset, ""))}. Updated {_now()}.</p>
<table><tr><th>notebook</th><th>status</th><th>run time (s)</th><th>headline numbers</th>
<th>main figure</th><th>commit</th><th>files</th></tr>
{chr(10).join(rows)}
</table>{_picture_script(out, pictures)}</body></html>
"""
    return write_text_atomic(out / "index.html", page)


def _title_of(figure: dict[str, Any]) -> str:
    title = figure.get("layout", {}).get("title")
    text = title.get("text", "") if isinstance(title, dict) else (title or "")
    return str(text).replace("<br>", " ")


def _picture_script(out: Path, pictures: dict[str, Any]) -> str:
    """The script that draws each notebook's main figure small (plotly.js, copied next to the page so that
    it works offline), or nothing when no notebook saved one."""
    if not pictures:
        return ""
    library = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = out / "plotly.min.js"
    if not target.exists() or target.stat().st_size != library.stat().st_size:
        shutil.copyfile(library, target)
    small = {key: {"data": f.get("data", []), "layout": _small_layout(f.get("layout", {}))}
             for key, f in pictures.items()}  # fmt: skip
    payload = json.dumps(small).replace("</", "<\\/")
    return (
        '\n<script src="plotly.min.js"></script>\n<script>\n'
        f"for (const [id, f] of Object.entries({payload})) "
        "Plotly.newPlot(id, f.data, f.layout, {staticPlot: true});\n</script>"
    )


def _small_layout(layout: dict[str, Any]) -> dict[str, Any]:
    """A main figure's layout drawn as a thumbnail: :data:`THUMBNAIL`, no title, panel titles and other
    annotations in a small font so they do not run into each other."""
    notes = [{**note, "font": {**note.get("font", {}), "size": 7}} for note in layout.get("annotations", [])]
    return {**layout, **THUMBNAIL, "title": "", "annotations": notes}


def _headline_line(key: str, value: Any, label: str | None, unit: str | None = None) -> str:
    """One headline figure: its label (what it is, over which seeds and images; the key on hover) or, for
    a notebook that gives none, its key; then its value, in its ``unit`` (see :data:`HEADLINE_UNITS`)."""
    name = f'<span title="{html.escape(key)}">{html.escape(label)}</span>' if label else html.escape(key)
    return f"{name}: <b>{html.escape(_fmt(value, unit))}</b>"


def _fmt(value: Any, unit: str | None = None) -> str:
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and unit in ("percent", "points", "noise")
    ):
        if unit == "noise":
            return f"± {100 * float(value):.1f} points"
        return fmt.percent(value) if unit == "percent" else fmt.points(value)
    return fmt.number(value, digits=4) if isinstance(value, float) else fmt.number(value)


def list_notebooks(log=print) -> None:
    for nb in discover():
        try:
            declared = ", ".join(declared_parameters(nb))
        except WorkbookError as err:
            declared = str(err)
        try:
            cpu = presets.expected_seconds(nb.name, "cpu")
        except presets.ParameterError:
            cpu = None
        log(f"{nb.name}: {declared}" + (f" (cpu: about {cpu:g} s)" if cpu else ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sparse_experts.workbook", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute notebooks with papermill")
    p_run.add_argument(
        "--preset", default=presets.DEFAULT_PRESET, help="one of " + ", ".join(presets.PRESET_NAMES)
    )
    p_run.add_argument("--only", action="append", help="notebook number or name (repeatable, or comma list)")
    p_run.add_argument("--out", type=Path, help="output folder (default outputs/<preset>)")
    p_run.add_argument("-p", dest="params", action="append", metavar="NAME=VALUE", help="notebook parameter")
    sub.add_parser("list", help="list notebooks and their parameters")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            list_notebooks()
            return 0
        run(args.preset, args.only, args.out, parse_assignments(args.params))
    except NotebookFailed:
        return 1
    except (WorkbookError, presets.ParameterError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
