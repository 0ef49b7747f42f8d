"""Real-browser check of an interactive notebook: do its widgets and plots render and react in JupyterLab?

``python -m tools.browser_check [--notebook notebooks/03_routing_explorer.ipynb] [--out outputs/browser-check]
[--preset smoke]`` (``make browser-check``) copies the notebook into the out folder with ``preset`` injected
after its ``parameters`` cell (papermill's parameterisation, nothing executed), starts JupyterLab on
127.0.0.1 with a kernel that runs this Python, opens the notebook in the system Chromium through the PyPI
``playwright`` package (no browser download) and runs all cells. It fails if a plot or slider is missing, a
widget did not render, a cell raised (the notebook is saved from the page and its outputs read back), or if
pressing ArrowRight on a slider changes no plot's data (nor its pixels). Screenshots and ``summary.json`` go
to the out folder; JupyterLab and the browser are always shut down.

Exit status 0 when the check passes, 1 when it fails (the reasons are printed and in the summary), 2 when it
cannot run (no Chromium, no playwright).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import nbformat
from papermill.parameterize import parameterize_notebook

from sparse_experts import paths
from sparse_experts.workbook import presets

DEFAULT_NOTEBOOK = "notebooks/03_routing_explorer.ipynb"
DEFAULT_OUT = "outputs/browser-check"
KERNEL_NAME = "sparse-experts-check"
KERNEL_INFO = {"display_name": "Python 3 (check)", "language": "python"}
CHROMIUM_ARGS = (
    "--no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync"
).split()
# JupyterLab settings for the check: every cell stays in the page (windowing off), no news or update pop-ups.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
WIDGET_FAILURES = ("Loading widget...", "Error displaying widget", "Failed to load model class")
ERROR_WIDGET = ".jupyter-widgets-error-widget"


class CheckFailed(Exception):
    """The notebook did not render or react as it should (the message says how)."""


class CannotRun(Exception):
    """The check cannot run here: no Chromium, or no playwright (exit status 2)."""


def find_chromium(given: str | None = None) -> str | None:
    """The Chromium executable: ``given``, ``$CHROMIUM``, /usr/bin/chromium, or chromium on PATH."""
    for candidate in (given, os.environ.get("CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def prepare_notebook(source: Path, target: Path, preset: str | None) -> bool:
    """Copy ``source`` to ``target`` with ``preset`` injected after the ``parameters`` cell (papermill's
    parameterisation) and the check's kernelspec; return whether a parameters cell was found."""
    nb = nbformat.read(source, as_version=4)
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, **KERNEL_INFO}
    for cell in nb.cells:  # papermill reads cell.metadata.tags on every cell
        cell.metadata.setdefault("tags", [])
    nb.metadata.setdefault("papermill", {})
    has_parameters = any("parameters" in cell.metadata.tags for cell in nb.cells)
    if preset is not None and has_parameters:
        nb = parameterize_notebook(nb, {"preset": preset}, kernel_name=KERNEL_NAME, language="python")
    for cell in nb.cells:  # start clean: no stale outputs or widget state
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return has_parameters


def _write_lab_config(root: Path) -> dict[str, str]:
    """A kernelspec for this Python and the lab settings, under ``root``; returns the environment to add."""
    kernel_dir = root / "jupyter" / "kernels" / KERNEL_NAME
    kernel_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], **KERNEL_INFO}
    (kernel_dir / "kernel.json").write_text(json.dumps(spec))
    settings = root / "settings"
    for name, value in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    jupyter_path = os.pathsep.join(p for p in [str(root / "jupyter"), os.environ.get("JUPYTER_PATH")] if p)
    return {"JUPYTER_PATH": jupyter_path, "JUPYTERLAB_SETTINGS_DIR": str(settings)}


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (127.0.0.1 only)
        return json.loads(response.read())


class Lab:
    """A JupyterLab server on 127.0.0.1 in its own process group; a context manager that always stops it."""

    def __init__(self, root_dir: Path, scratch: Path, env: dict[str, str], log: Path):
        with socket.socket() as s:  # a free port
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.root_dir, self.scratch, self.env, self.log_path = root_dir, scratch, env, log
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Lab:
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
            f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.port_retries=0", f"--LabApp.workspaces_dir={self.scratch / 'workspaces'}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--ServerApp.terminals_enabled=False",
        ]  # fmt: skip
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in __exit__)
        self.process = subprocess.Popen(
            command, env={**os.environ, **self.env}, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.root_dir,
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CheckFailed(
                    f"JupyterLab exited with status {self.process.returncode}; see {self.log_path}"
                )
            with contextlib.suppress(OSError, ValueError):
                _get_json(self.api("status"))
                return self
            time.sleep(0.5)
        raise CheckFailed(f"JupyterLab did not answer on {self.base} within 90 s; see {self.log_path}")

    def api(self, path: str) -> str:
        return f"{self.base}/api/{path}?token={self.token}"

    def idle(self) -> bool:
        """Whether the server has kernels and all are idle (False while the API does not answer)."""
        try:
            kernels = _get_json(self.api("kernels"))
        except (OSError, ValueError):  # urllib's HTTPError and URLError are OSErrors
            return False
        return bool(kernels) and all(k.get("execution_state") == "idle" for k in kernels)

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(OSError):
                request = urllib.request.Request(self.api("shutdown"), method="POST", data=b"")
                urllib.request.urlopen(request, timeout=5).close()  # noqa: S310
            for signum in (None, signal.SIGTERM, signal.SIGKILL):  # ask, then signal the server's own group
                if signum is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.process.pid, signum)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=15 if signum is None else 10)
                    break
        self.log.close()


_PLOT_STATE_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(el => {
  const pick = t => ({x: t.x, y: t.y, z: t.z, marker: t.marker, text: t.text, type: t.type});
  try { return JSON.stringify([(el.data || []).map(pick), el.layout && el.layout.title]); }
  catch (e) { return String(e); }
})"""


def _wait(condition, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _saved_errors(path: Path) -> tuple[list[str], int, int] | None:
    """Error outputs of the saved notebook (``ename: evalue`` per cell), code cells run, code cells; None
    while the file is still being written (empty or partial JSON)."""
    try:
        nb = nbformat.read(path, as_version=4)
    except (nbformat.reader.NotJSONError, ValueError, OSError):
        return None
    errors, ran, code = [], 0, 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        code += 1
        ran += cell.get("execution_count") is not None
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append(f"cell {i}: {output.get('ename')}: {output.get('evalue')}")
    return errors, ran, code


def run_check(
    notebook: Path,
    out: Path,
    *,
    preset: str | None = "smoke",
    chromium: str | None = None,
    timeout: float = 300.0,
    slider_index: int = 0,
) -> dict[str, Any]:
    """Run the check (see the module docstring); return the summary (also written to ``out/summary.json``).
    Raises :class:`CannotRun` without Chromium or playwright; for a failing notebook, ``summary["ok"]`` is
    False and ``summary["failures"]`` says why."""
    try:  # imported here: an optional development dependency that only this check needs
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        raise CannotRun("the playwright package is missing: pip install playwright") from err
    executable = find_chromium(chromium)
    if executable is None:
        raise CannotRun(
            "no Chromium found (tried --chromium, $CHROMIUM, /usr/bin/chromium, chromium on PATH); install "
            "the system package: `apt-get install -y chromium` (as root), then rerun"
        )
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    summary: dict[str, Any] = {
        "ok": False, "notebook": str(notebook), "preset": preset, "failures": [], "timings_s": {},
        "screenshots": [], "chromium": executable,
    }  # fmt: skip
    failures, timings = summary["failures"], summary["timings_s"]

    def mark(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = round(now - since, 2)
        return now

    target = out / notebook.name
    summary["parameters_cell"] = prepare_notebook(notebook, target, preset)
    scratch = Path(tempfile.mkdtemp(prefix="browser-check-"))
    env = _write_lab_config(scratch)
    env["SPARSE_EXPERTS_OUTPUT_DIR"] = str(out / "run")
    if preset is not None:
        env["SPARSE_EXPERTS_PRESET"] = preset
        if flags := presets.PRESET_XLA_FLAGS.get(preset):
            env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    try:
        t = time.monotonic()
        with Lab(out, scratch, env, out / "jupyterlab.log") as lab, sync_playwright() as pw:
            t = mark("server_start", t)
            browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                console_errors: list[str] = []
                page.on("pageerror", lambda e: console_errors.append(str(e)))

                def remaining() -> float:
                    return max(5.0, timeout - (time.monotonic() - started))

                workspace = f"check-{secrets.token_hex(4)}"
                page.goto(
                    f"{lab.base}/lab/workspaces/{workspace}/tree/{target.name}?reset&token={lab.token}",
                    timeout=remaining() * 1000,
                )
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=remaining() * 1000)
                _wait(lab.idle, remaining(), "the kernel to start (execution_state idle)")
                t = mark("page_and_kernel_ready", t)
                page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
                page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

                def prompts() -> list[str]:
                    return page.locator(".jp-InputArea-prompt").all_inner_texts()

                # queued cells show [*] at once, run cells [n]: wait for either, then for no [*] left
                run_started = lambda: any(re.search(r"\[[0-9*]+\]", p) for p in prompts())  # noqa: E731
                _wait(run_started, min(60.0, remaining()), "Run All Cells to start")
                finished = lambda: not any("*" in p for p in prompts()) and lab.idle()  # noqa: E731
                _wait(
                    finished, remaining(), "every cell to finish (no [*] prompt, kernel idle)", interval=0.5
                )
                t = mark("run_all", t)
                missing = []
                for selector in (".js-plotly-plot", ".widget-slider"):
                    try:
                        page.wait_for_selector(
                            selector, state="attached", timeout=min(30.0, remaining()) * 1000
                        )
                    except PlaywrightError:
                        missing.append(selector)
                        failures.append(f"no {selector} in the page after every cell ran")

                def widget_problems() -> list[str]:
                    text = page.locator(".jp-Notebook").inner_text()
                    error_widgets = page.locator(ERROR_WIDGET).count()
                    return [f for f in WIDGET_FAILURES if f in text] + [ERROR_WIDGET] * error_widgets

                with contextlib.suppress(CheckFailed):
                    _wait(lambda: not widget_problems(), min(30.0, remaining()), "widgets to render")
                for problem in widget_problems():
                    if problem != ERROR_WIDGET:
                        failures.append(f"a widget did not render: the page shows {problem!r}")
                for i, error in enumerate(page.locator(ERROR_WIDGET).all()):  # ipywidgets' failed-widget view
                    error.scroll_into_view_if_needed()
                    error.click()  # a click swaps the icon for the JavaScript error message
                    page.wait_for_timeout(300)
                    message = " ".join((error.text_content() or "").split())
                    message = message.replace("[Open Browser Console for more detailed log - Double click to "
                                              "close this message] ", "")  # fmt: skip
                    _screenshot(page, out / f"widget-error-{i}.png", summary)
                    failures.append(f"a widget did not render: {message[:400]}")
                t = mark("widgets_render", t)
                summary["plots"] = page.locator(".js-plotly-plot").count()
                summary["sliders"] = page.locator(".widget-slider").count()
                if 0 < summary["sliders"] <= slider_index:
                    failures.append(
                        f"--slider-index {slider_index} but the page has {summary['sliders']} slider(s)"
                    )
                    missing.append(".widget-slider")
                if missing:
                    _screenshot(page, out / "before.png", summary)
                else:  # move a slider; a plot must react
                    _move_slider(
                        page, page.locator(".widget-slider").nth(slider_index), out, summary, remaining()
                    )
                # read the outputs back: save from the page, then look for error outputs
                mtime = target.stat().st_mtime_ns
                page.locator(".jp-Notebook").click(position={"x": 5, "y": 5})
                page.keyboard.press("Control+s")
                with contextlib.suppress(CheckFailed):
                    _wait(lambda: target.stat().st_mtime_ns != mtime, 15, "the notebook to be saved")
                if target.stat().st_mtime_ns == mtime:
                    failures.append("could not save the notebook from the page to read its outputs")
                else:  # the save may still be in progress once the mtime moves: wait for a whole file
                    errors, ran, code = _wait(
                        lambda: _saved_errors(target), 30, "the saved notebook to be complete JSON"
                    )
                    summary["cells_run"] = f"{ran}/{code}"
                    failures.extend(f"error output in {e}" for e in errors)
                    if ran < code and not errors:
                        failures.append(f"only {ran} of {code} code cells ran")
                summary["page_errors"] = console_errors
            finally:
                browser.close()
    except CheckFailed as e:
        failures.append(str(e))
    except PlaywrightError as e:  # the page or browser misbehaved: a failed check, with the first line
        failures.append(f"browser: {str(e).strip().splitlines()[0]}")
    except BaseException as e:  # a crash (or Ctrl-C) is never recorded as a pass
        failures.append(f"the check itself stopped: {type(e).__name__}: {e}")
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        timings["total"] = round(time.monotonic() - started, 2)
        summary["ok"] = not failures
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _screenshot(element, path: Path, summary: dict[str, Any]) -> None:
    element.screenshot(path=str(path))
    summary["screenshots"].append(str(path))


def _move_slider(page, slider, out: Path, summary: dict[str, Any], timeout: float) -> None:
    """Press ArrowRight on ``slider``; a failure unless its readout and a plot (data or pixels) change."""
    slider.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    _screenshot(page, out / "before.png", summary)
    plots_before = page.evaluate(_PLOT_STATE_JS)
    pixels_before = [p.screenshot() for p in page.locator(".js-plotly-plot").all()]
    readout = slider.locator(".widget-readout")
    value_before = readout.inner_text() if readout.count() else None
    slider.locator(".noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    pressed = time.monotonic()

    def plot_changed() -> int | None:  # 1 + the index of the first plot whose data changed
        after = page.evaluate(_PLOT_STATE_JS)
        return next(
            (i + 1 for i, (a, b) in enumerate(zip(plots_before, after, strict=False)) if a != b), None
        )

    changed, detected_by = None, "plot data"
    with contextlib.suppress(CheckFailed):
        changed = _wait(plot_changed, min(60.0, timeout), "a plot to change", interval=0.5)
    page.wait_for_timeout(1000)  # let plotly finish drawing
    value_after = readout.inner_text() if readout.count() else None
    summary["slider_value"] = [value_before, value_after]
    plots = page.locator(".js-plotly-plot").all()[: len(pixels_before)]
    if changed is None:  # data unchanged: compare pixels as a last resort
        changed = next((i + 1 for i, p in enumerate(plots) if p.screenshot() != pixels_before[i]), None)
        detected_by = "pixels"
    summary["timings_s"]["slider_reaction"] = round(time.monotonic() - pressed, 2)
    _screenshot(page, out / "after.png", summary)
    if value_before == value_after:
        summary["failures"].append(f"the slider did not move (readout stayed {value_before!r})")
    if changed is None:
        summary["failures"].append("no plot changed after the slider moved")
    else:
        (out / "plot-before.png").write_bytes(pixels_before[changed - 1])
        summary["screenshots"].append(str(out / "plot-before.png"))
        _screenshot(plots[changed - 1], out / "plot-after.png", summary)
        summary.update(change_detected_by=detected_by, changed_plot=changed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--notebook", default=DEFAULT_NOTEBOOK, help=f"notebook to check ({DEFAULT_NOTEBOOK})"
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"screenshots and summary.json ({DEFAULT_OUT})")
    parser.add_argument("--preset", default="smoke", help="injected into the parameters cell; 'none' to keep")
    parser.add_argument("--chromium", default=None, help="Chromium executable (default: found on the system)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole check (300)")
    parser.add_argument("--slider-index", type=int, default=0, help="which .widget-slider to move (0)")
    args = parser.parse_args(argv)
    notebook = paths.repo_root() / args.notebook  # an absolute path stays as it is
    out = (paths.repo_root() / args.out).resolve()
    if not notebook.is_file():
        print(f"browser-check: --notebook {notebook} does not exist", file=sys.stderr)
        return 2
    try:
        summary = run_check(
            notebook, out, preset=None if args.preset == "none" else args.preset, chromium=args.chromium,
            timeout=args.timeout, slider_index=args.slider_index,
        )  # fmt: skip
    except CannotRun as e:
        print(f"browser-check: {e}", file=sys.stderr)
        return 2
    status = "PASSED" if summary["ok"] else "FAILED"
    total = summary["timings_s"].get("total")
    print(f"browser-check {status}: {notebook.name} in {total} s; {out}/summary.json")
    for failure in summary["failures"]:
        print(f"  - {failure}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
