"""Real-browser test: headless Chromium (Debian's package, driven by Playwright) on the running app.

Runs when the Debian ``chromium`` package and the ``playwright`` Python package are
installed (``.ci/run`` installs chromium with apt-get); skipped otherwise.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.browser

# The first heatmap's data as a string: Plotly keeps z as given (a base64 typed-array spec or rows).
FIRST_HEATMAP = ("() => { const p = document.querySelector('.js-plotly-plot');"
                 " if (!p || !p.data || !p.data[0] || !p.data[0].z) return null; const z = p.data[0].z;"
                 " return z.bdata ? z.bdata : JSON.stringify(z); }")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    yield from _serve()


@pytest.fixture
def fresh_server():
    """A server of its own: which page its first request opens is what a test checks."""
    yield from _serve()


def _serve():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the Streamlit server did not start within 60 s")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.mark.skipif(CHROMIUM is None, reason="needs the Debian chromium package (apt-get install chromium)")
def test_slider_redraws_heatmap_in_real_browser(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    query = "?activation=linear&n_train=40&n_test=40&beta=1.0&gamma0=0.5"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        sent = []  # the browser's websocket messages to the server (reruns, widget changes)
        page.on("websocket", lambda ws: ws.on("framesent", lambda frame: sent.append(frame)))
        page.goto(server + "/" + query)
        page.wait_for_function(f"({FIRST_HEATMAP})() !== null", timeout=180_000)
        page.wait_for_timeout(3000)  # let the first run finish before touching a widget
        before = page.evaluate(FIRST_HEATMAP)

        slider = page.get_by_role("slider", name="gamma0 (feature-learning strength)")
        slider.focus()
        slider.press("ArrowRight")  # one step: gamma0 0.50 -> 0.55
        page.wait_for_function(f"(before) => ({FIRST_HEATMAP})() !== null && ({FIRST_HEATMAP})() !== before",
                               arg=before, timeout=180_000)
        after = page.evaluate(FIRST_HEATMAP)
        assert "gamma0=0.55" in page.url
        # the rest of the slider range is solved in the background; the live line (a fragment that
        # reruns every 2 s while the background works, with no user action) counts up to the whole range
        page.get_by_text("Slider positions solved: 40 of 40.").wait_for(timeout=180_000)
        page.wait_for_timeout(1000)
        # and then it stops polling: no message to the server in 6 s (it polled every 2 s before)
        quiet_from = len(sent)
        page.wait_for_timeout(6000)
        assert len(sent) == quiet_from, f"{len(sent) - quiet_from} messages after the range was solved"
        shot = tmp_path / "slider.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert after != before
    assert shot.stat().st_size > 10_000


@pytest.mark.skipif(CHROMIUM is None, reason="needs the Debian chromium package (apt-get install chromium)")
def test_a_link_to_a_page_opens_it_through_the_app_on_a_fresh_server(fresh_server):
    """A folder named pages/ made Streamlit run a first request for /deep_linear without app.py: the page
    alone, narrow, with its file names for navigation and an "app" entry (for every later session too)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(fresh_server + "/deep_linear?beta=10.0")
        page.get_by_role("heading", name="Deep linear networks").wait_for(timeout=120_000)
        nav = page.get_by_test_id("stSidebarNav")
        nav.get_by_text("Kernel explorer").wait_for(timeout=60_000)
        titles = nav.inner_text()
        browser.close()
    assert "Test loss vs gamma0" in titles and "Deep linear networks" in titles, titles
    assert "app" not in titles.split(), titles
