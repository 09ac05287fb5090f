"""End to end in a real browser: Voila serves a notebook that builds a small map and opens
``s.mlspec.gui()``; headless chromium (Debian's, installed by ``.ci/browser.sh``) sets a
parameter, clicks Run and checks what is rendered, and takes screenshots.

Set ``MLSPEC_GUI_SCREENSHOTS=docs/_static/gui`` to write the screenshots used by the docs.
Nothing here skips: without chromium, Voila or playwright the test fails and says why.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

NOTEBOOK = [
    "%matplotlib widget",
    """\
import warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
import hyperspy.api as hs
hs.set_log_level("ERROR")
import hyperspy_mlspec
hs.preferences.General.show_progressbar = False
s = hyperspy_mlspec.data.eels_map((12, 12), n_channels=96, rare_phase=True,
                                  rare_fraction=0.03, random_state=0)
s""",
    "panel = s.mlspec.gui(n_components=3)\npanel",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def voila(tmp_path_factory):
    """A Voila server on 127.0.0.1 rendering the notebook; yields its URL."""
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: run .ci/browser.sh (apt-get install chromium) first")
    work = tmp_path_factory.mktemp("voila")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in NOTEBOOK]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, work / "panel.ipynb")
    port = _free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("ETS_TOOLKIT", "QT_QPA_PLATFORM", "MPLBACKEND")}  # a Jupyter session
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)  # the kernel imports this checkout
    env.update(JUPYTER_RUNTIME_DIR=str(work / "runtime"), JUPYTER_CONFIG_DIR=str(work / "cfg"),
               JUPYTER_PLATFORM_DIRS="1", MPLBACKEND="module://ipympl.backend_nbagg",
               OMP_NUM_THREADS="1")
    log = open(work / "voila.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "voila", "panel.ipynb", "--no-browser", f"--port={port}",
         "--Voila.ip=127.0.0.1", "--VoilaConfiguration.show_tracebacks=True",
         "--Voila.port_retries=0"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 60:
            if proc.poll() is not None:
                raise AssertionError("voila exited:\n" + (work / "voila.log").read_text())
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("voila did not start:\n" + (work / "voila.log").read_text())
        yield url, work
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _image_has_content(path: Path) -> bool:
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    return img.shape[0] > 100 and img.shape[1] > 100 and float(np.std(img[..., :3])) > 0.02


def test_panel_in_a_real_browser(voila):
    from playwright.sync_api import expect, sync_playwright

    url, work = voila
    shots = Path(os.environ.get("MLSPEC_GUI_SCREENSHOTS") or work / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 2200})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, timeout=120_000)
            panel = page.locator(".mlspec-panel")
            expect(panel).to_be_visible(timeout=120_000)
            status = page.locator(".mlspec-status")
            expect(status).to_have_text("idle")
            # set a parameter the way a user does: type into the field, leave it
            epochs = page.locator(".mlspec-opt-epochs input")
            epochs.fill("4")
            epochs.press("Enter")
            epochs.blur()
            panel.screenshot(path=str(shots / "panel.png"))
            page.locator(".mlspec-run-button").click()
            expect(status).to_have_text("done", timeout=120_000)
            message = page.locator(".mlspec-message")
            expect(message).to_contain_text("3 components in s.learning_results")
            expect(message).to_contain_text("4 epoch(s)")
            # the live loss curve and the progress bar reached the last epoch
            assert page.locator(".mlspec-loss_plot svg polyline").count() >= 1
            expect(page.locator(".mlspec-progress_text")).to_contain_text("epoch 4/4")
            # HyperSpy's decomposition plots, rendered by ipympl in the result area
            canvases = page.locator(".mlspec-result .jupyter-matplotlib canvas")
            expect(canvases.first).to_be_visible(timeout=60_000)
            assert page.locator(".mlspec-result .jupyter-matplotlib").count() >= 2
            page.wait_for_timeout(1500)  # let the figures draw before the screenshot
            page.screenshot(path=str(shots / "panel_result.png"), full_page=True)
            # another method: the anomaly map opens the anomaly explorer in the result area
            page.locator(".mlspec-opt-method select").select_option("anomaly_map")
            expect(page.locator(".mlspec-opt-threshold")).to_be_visible()
            epochs.fill("0")  # epochs derived from the data
            epochs.press("Enter")
            page.locator(".mlspec-run-button").click()
            expect(message).to_contain_text("anomalous pixel(s)", timeout=120_000)
            expect(status).to_have_text("done")
            explorer = page.locator(".mlspec-result .mlspec-anomaly-explorer")
            expect(explorer).to_be_visible(timeout=60_000)
            expect(explorer).to_contain_text("anomalous pixel(s) of 144")
            assert page.locator(".mlspec-result .jupyter-matplotlib").count() >= 2
            page.wait_for_timeout(1500)
            page.screenshot(path=str(shots / "anomaly_explorer.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    for name in ("panel.png", "panel_result.png", "anomaly_explorer.png"):
        assert _image_has_content(shots / name), name
