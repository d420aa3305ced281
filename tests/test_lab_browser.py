"""JupyterLab in a real browser (issue 20, item 7): what a user meets after `make lab`.

Starts ``jupyter lab`` on 127.0.0.1 with a token, opens a committed notebook in headless Chromium and
checks that its figures render, then sets ``profile = "smoke"`` in notebook 02's parameters cell and
runs it through the server's ``crossholder`` kernel to the end, as a user would: results and figures
are *not* redirected, and the checkout's ``git status`` must be unchanged afterwards (issue 32,
item 5: a smoke run writes only under the ignored ``results/variants/smoke/`` and
``figures/variants/smoke/``).
Chromium and its driver come from Debian (``make browser``, run here only when they are missing);
where they cannot be installed the test is skipped with the reason. The server is rooted at a
temporary copy of ``notebooks/`` (the notebook the user edits lives there), so JupyterLab's autosave
can never write into the repository.
Every server, kernel and browser process the test starts is stopped, and the test checks it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JUPYTER = ROOT / ".venv" / "bin" / "jupyter"
BROWSER, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _browser_or_skip() -> None:
    if not (os.path.exists(BROWSER) and os.path.exists(DRIVER)):
        out = subprocess.run(["make", "-s", "browser"], cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0 or not (os.path.exists(BROWSER) and os.path.exists(DRIVER)):
            pytest.skip(f"Chromium and its driver (Debian: chromium, chromium-driver) could not be installed "
                        f"by `make browser`: {(out.stdout + out.stderr).strip()[-300:]}")
    pytest.importorskip("selenium", reason="selenium is in the dev dependencies (pip install -e '.[dev]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (our temporary folder)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and int(pid) != os.getpid():
            found.append(f"{pid}: {cmd[:160]}")
    return found


def _wait(predicate, timeout: float, what: str, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


# JupyterLab 4's application object (--LabApp.expose_app_in_browser): open, edit, run, inspect.
_OPEN = """
const [path, done] = [arguments[0], arguments[arguments.length - 1]];
const app = window.jupyterapp;
app.restored.then(() => app.commands.execute('docmanager:open', {path: path, factory: 'Notebook'}))
  .then(p => { window.__panel = p; return p.context.ready.then(() => p.sessionContext.ready); })
  .then(() => done('ok'))
  .catch(e => done('error: ' + e));
"""
_IMAGES = """
const imgs = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output img')];
return imgs.map(i => [i.complete, i.naturalWidth]);
"""
_SET_SOURCE = """
const panel = window.__panel;
const cells = panel.content.model.cells;
for (let k = 0; k < cells.length; k++) {
  const c = cells.get(k);
  if ((c.getMetadata('tags') || []).includes('parameters')) {
    c.sharedModel.setSource(c.sharedModel.getSource().replace(arguments[0], arguments[1]));
    return c.sharedModel.getSource();
  }
}
return null;
"""
_COMMAND = """
const panel = window.__panel;
const done = arguments[arguments.length - 1];
window.jupyterapp.shell.activateById(panel.id);
window.jupyterapp.commands.execute(arguments[0]).then(() => done(true)).catch(e => done('error: ' + e));
"""
_STATE = """
const panel = window.__panel;
const cells = panel.content.model.cells;
let pending = 0, errors = [], executed = 0, widgets = 0, warnings = [];
for (let k = 0; k < cells.length; k++) {
  const c = cells.get(k);
  if (c.type !== 'code') continue;
  if (c.executionCount === null) pending++; else executed++;
  for (const o of c.outputs.toJSON()) {
    if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
    if (o.data && o.data['application/vnd.jupyter.widget-view+json']) widgets++;
    const text = [].concat(o.text || []).join('');
    if (/IProgress|Warning/.test(text)) warnings.push(text.slice(0, 200));
  }
}
return {kernel: panel.sessionContext.session?.kernel?.status, kernelName: panel.sessionContext.kernelDisplayName,
        pending, executed, errors, widgets, warnings};
"""


@pytest.fixture
def lab(tmp_path, git_status):
    """A JupyterLab server on a temporary copy of notebooks/; results and figures where a user's go."""
    _browser_or_skip()
    shutil.copytree(ROOT / "notebooks", tmp_path / "lab" / "notebooks",
                    ignore=shutil.ignore_patterns("runs", ".ipynb_checkpoints"))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CROSSHOLDER_")},
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen([str(JUPYTER), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path / 'lab'}",
                               "--LabApp.expose_app_in_browser=True", "--ServerApp.open_browser=False",
                               *(["--allow-root"] if os.geteuid() == 0 else [])],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def _up():
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return server.poll() is not None and pytest.fail((tmp_path / "lab.log").read_text()[-2000:])

    try:
        _wait(_up, 60, "the JupyterLab server")
        yield {"base": base, "token": token, "tmp": tmp_path, "status": git_status(), "git_status": git_status}
    finally:
        try:   # the server shuts its kernels down, then exits
            req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(req, timeout=10)
            server.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
        log.close()
        _wait(lambda: not _own_processes(str(tmp_path)), 20, "the server's kernels to exit")


def test_jupyterlab_renders_figures_and_runs_a_notebook_at_smoke(lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--user-data-dir={lab['tmp'] / 'chromium'}", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.binary_location = BROWSER
    # the smoke run's own cache (ignored; an earlier smoke run leaves it): gone, so the notebook trains
    # and its progress bars show
    env = {k: v for k, v in os.environ.items() if k.startswith("CROSSHOLDER_")}
    try:
        for k in env:
            os.environ.pop(k)
        from crossholder import training
        for f in training.run_paths(training.final_config("mnist", "cross_holder", profile="smoke")).values():
            if "variants" in f.parts and "smoke" in f.parts:
                f.unlink(missing_ok=True)
    finally:
        os.environ.update(env)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    started = time.time()
    try:
        driver.set_script_timeout(120)
        driver.get(f"{lab['base']}/lab?token={lab['token']}")
        _wait(lambda: driver.execute_script("return !!(window.jupyterapp && "
                                            "window.jupyterapp.commands.hasCommand('docmanager:open') && "
                                            "window.jupyterapp.commands.hasCommand('notebook:run-all-cells'))"),
              90, "JupyterLab to load")
        # a committed notebook: its figures (PNG outputs) render
        assert driver.execute_async_script(_OPEN, "notebooks/04_robustness.ipynb") == "ok"
        images = _wait(lambda: [i for i in driver.execute_script(_IMAGES) if i[0] and i[1] > 0], 60,
                       "the committed figures of notebook 04 to render")
        assert len(images) >= 4, images
        # notebook 02 at smoke, run to the end on the crossholder kernel
        assert driver.execute_async_script(_OPEN, "notebooks/02_training.ipynb") == "ok"
        src = driver.execute_script(_SET_SOURCE, 'profile: str = "cpu"', 'profile: str = "smoke"')
        assert src is not None and 'profile: str = "smoke"' in src
        state = driver.execute_script(_STATE)
        assert state["kernelName"] == "Python (crossholder)", state
        # cleared first, so every code cell's execution count says whether this run reached it
        assert driver.execute_async_script(_COMMAND, "notebook:clear-all-cell-outputs") is True
        assert driver.execute_script(_STATE)["executed"] == 0, "outputs cleared before the run"
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells'); return true;")

        def _finished():
            s = driver.execute_script(_STATE)
            if s["errors"]:
                pytest.fail(f"notebook 02 failed in JupyterLab: {s['errors']}")
            return s if s["kernel"] == "idle" and s["pending"] == 0 and s["executed"] > 0 else None

        final = _wait(_finished, 600, "notebook 02 at smoke to run to the end", poll=2)
        assert final["widgets"] > 0, "progress bars render as widgets (ipywidgets)"
        assert not final["warnings"], final["warnings"]
    finally:
        driver.quit()
    assert lab["git_status"]() == lab["status"], "a smoke run in Lab leaves the checkout as it was"
    reg_path = ROOT / "results" / "variants" / "smoke" / "models.json"
    reg = json.loads(reg_path.read_text())
    assert reg["mnist/cross_holder"]["profile"] == "smoke", "the run took the value set in the parameters cell"
    assert reg_path.stat().st_mtime > started, "registered by this run"
    fig = ROOT / "figures" / "variants" / "smoke" / "training_mnist_cross_holder.png"
    assert fig.exists() and fig.stat().st_mtime > started
