"""Slider latency of the running dashboard in headless Chromium (prints JSON).

Starts ``streamlit run app.py``, opens the kernel explorer at the default size
(digits:3v8, P=100, 200 test, relu, depth 1), and for aNBK and aNTK moves the
gamma0 slider one step (0.05) at a time, timing key press -> redrawn heatmap.
Loading the page solves the starting gamma0 (cold). After each redraw the
dashboard solves the two slider neighbours in the background (then the rest of the range); a move made
after ``--pause`` seconds that cover those solves is a cache hit, a move made
sooner waits for the running one (or warm-starts from its neighbour 0.05 away).
Each move's solver line says which.

Needs the Debian chromium package and the playwright Python package.

With ``--fill-timeout`` it then waits for the background to solve the whole
slider range (the page's "Slider positions solved" line) and times jumps to
the ends of the range.

    python benchmarks/bench_dashboard.py [--moves 3] [--gamma0 0.5] [--pause 1.5] [--query "&beta=1.0"]
                                         [--fill-timeout 1200] [--methods anbk antk]
"""

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
HEATMAP = ("() => { const p = document.querySelector('.js-plotly-plot');"
           " if (!p || !p.data || !p.data[0] || !p.data[0].z) return null; const z = p.data[0].z;"
           " return z.bdata ? z.bdata : JSON.stringify(z); }")


def redraw_seconds(page, slider, key):
    """Seconds from pressing ``key`` on the focused slider to a changed heatmap, and the solver line."""
    before = page.evaluate(HEATMAP)
    slider.focus()
    t0 = time.perf_counter()
    slider.press(key)
    page.wait_for_function(f"(b) => (({HEATMAP})() !== null && ({HEATMAP})() !== b)"
                           " || document.body.innerText.includes('No adaptive kernel')", arg=before, timeout=600_000)
    seconds = round(time.perf_counter() - t0, 3)
    page.wait_for_timeout(500)  # the caption is drawn after the heatmap
    return seconds, page.get_by_text("Solver:").first.inner_text()


def fill_and_jump(page, slider, t_load, timeout):
    """Wait for the whole slider range to be solved in the background, then jump to its ends."""
    done = "() => /Slider positions solved: (\\d+) of \\1\\./.test(document.body.innerText)"
    try:
        page.wait_for_function(done, timeout=1000 * timeout, polling=1000)
    except Exception:  # playwright's TimeoutError: report how far it got
        line = page.get_by_text("Slider positions solved").first.inner_text()
        return {"fill_error": f"not filled within {timeout:g} s: {line}"}
    fill = round(time.perf_counter() - t_load, 1)
    page.wait_for_timeout(3000)  # the last background solve's fragment refresh and the CPU settle
    jumps, lines = [], []
    for key in ("End", "Home", "End"):
        seconds, line = redraw_seconds(page, slider, key)
        jumps.append(seconds)
        lines.append(line)
        page.wait_for_timeout(3000)
    return {"fill_seconds_from_load": fill, "jump_keys": ["End", "Home", "End"], "jump_seconds": jumps,
            "jump_solver_lines": lines}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--moves", type=int, default=3)
    ap.add_argument("--gamma0", type=float, default=0.15,
                    help="start; the default beta=1 aNBK converges up to gamma0 ~0.3 for relu")
    ap.add_argument("--pause", type=float, default=1.5,
                    help="seconds between a redraw and the next move (long enough: background solves done)")
    ap.add_argument("--query", default="", help="extra URL settings, e.g. '&beta=1.0&samples=4000'")
    ap.add_argument("--fill-timeout", type=float, default=0.0,
                    help="then wait up to this many seconds for every slider position to be solved in the "
                         "background and time jumps to the ends of the range (End, Home, End keys); 0: skip")
    ap.add_argument("--methods", nargs="+", default=["anbk", "antk"], choices=["anbk", "antk"])
    args = ap.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("needs the Debian chromium package")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port",
                               str(port), "--server.headless", "true"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    out = {"gamma0_start": args.gamma0, "query": args.query, "methods": {}}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            for method in args.methods:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                t0 = t_load = time.perf_counter()
                page.goto(f"{url}/?method={method}&gamma0={args.gamma0}{args.query}")
                page.wait_for_function(f"({HEATMAP})() !== null || document.body.innerText.includes('No adaptive kernel')",
                                       timeout=600_000)
                if page.evaluate(HEATMAP) is None:
                    out["methods"][method] = {"error": page.get_by_text("No adaptive kernel").first.inner_text()}
                    page.close()
                    continue
                first_load = time.perf_counter() - t0
                slider = page.get_by_role("slider", name="gamma0 (feature-learning strength)")
                moves, lines = [], []
                page.wait_for_timeout(1000 * args.pause)
                for _ in range(args.moves):
                    seconds, line = redraw_seconds(page, slider, "ArrowRight")
                    moves.append(seconds)
                    lines.append(line)
                    page.wait_for_timeout(1000 * args.pause)
                out["methods"][method] = {"first_load_seconds": round(first_load, 2), "move_seconds": moves,
                                          "solver_lines": lines, "pause_seconds": args.pause}
                if args.fill_timeout > 0:
                    out["methods"][method].update(fill_and_jump(page, slider, t_load, args.fill_timeout))
                page.close()
            browser.close()
    finally:
        server.terminate()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
