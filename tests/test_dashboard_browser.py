"""The dashboard in a real browser: `workbench dashboard` on localhost, driven by headless Chromium.

The test traces 2048 tokens of real prose with SmolLM2 (attention maps for the last 128 queries of
a few layers), starts the dashboard on that saved trace, chooses heads in the page and checks that
the plotly attention map of the chosen head is drawn (an SVG with the heatmap image and the head in
its title). It saves ``artifacts/dashboard.png`` and writes the time from the click on a head to
the drawn chart into ``artifacts/dashboard_timing.json`` (printed, not asserted: no timed assertions).

Needs Debian's ``chromium`` and ``chromium-driver`` (scripts/setup.sh installs them).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
N_TOKENS, WINDOW = 2048, 128
LAYERS = [0, 3, 8, 15, 22, 29]

pytestmark = pytest.mark.slow

# JavaScript: is the attention map drawn for the wanted head? (title names it, heatmap image painted)
DRAWN_JS = """
const plot = document.querySelector('.st-key-attn_map .js-plotly-plot');
if (!plot) return false;
const title = plot.querySelector('.gtitle');
const img = plot.querySelector('.heatmaplayer image, .hm image');
return !!(title && img && title.textContent.startsWith(arguments[0]) && img.getAttribute('href'));
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trace_2048(smollm2, tmp_path_factory):
    """A saved 2048-token trace of real prose: received attention and maps of the last 128 queries."""
    from workbench.text import token_windows
    from workbench.tracer import Tracer

    ids = token_windows(smollm2.tokenizer, N_TOKENS, 1)
    tr = Tracer(smollm2, layers=LAYERS, stats=("received",), pattern_window=(N_TOKENS - WINDOW, N_TOKENS)).run(ids)
    d = tr.save(tmp_path_factory.mktemp("trace2048"))
    assert tr["pattern"].shape == (len(LAYERS), 1, 9, WINDOW, N_TOKENS)
    return d


@pytest.fixture(scope="module")
def server(trace_2048):
    """`workbench dashboard --headless` on a free localhost port, opened on the saved trace."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "dashboard", "--headless", "--port", str(port),
                             "--trace", str(trace_2048), "--census", str(ROOT / "reports" / "smollm2-135m")],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read().strip() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                pytest.fail(f"dashboard did not start (exit {proc.poll()}):\n{log.read().decode()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and anything it started (it runs in its own session / process group)."""
    import signal

    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian chromium / chromium-driver are missing: run scripts/setup.sh (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="wb-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1500,1400"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, predicate, timeout: float, what: str, poll: float = 0.01):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if predicate():
            return
        time.sleep(poll)
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "dashboard_failure.png"))
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (screenshot artifacts/dashboard_failure.png)")


def _head_label(driver, head: int):
    from selenium.webdriver.common.by import By

    for label in driver.find_elements(By.CSS_SELECTOR, ".st-key-head label"):
        if label.text.strip() == str(head):
            return label
    raise AssertionError(f"no radio option for head {head} in the page")


def test_choose_head_draws_attention_map(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(browser, lambda: browser.execute_script(DRAWN_JS, "layer 0 head 0"), 90, "the first attention map")
    # the layer selector defaults to the first recorded layer; choose heads and time each chart
    timings = []
    for head in (4, 7, 2):
        label = _head_label(browser, head)
        t0 = time.perf_counter()
        label.click()
        _wait(browser, lambda: browser.execute_script(DRAWN_JS, f"layer 0 head {head}"), 60, f"the map of head {head}")
        timings.append(time.perf_counter() - t0)
    # the drawn chart is a plotly SVG with the heatmap painted as an image, titled with the pooling note
    plot = browser.find_element(By.CSS_SELECTOR, ".st-key-attn_map .js-plotly-plot")
    assert plot.find_elements(By.CSS_SELECTOR, "svg.main-svg")
    title = plot.find_element(By.CSS_SELECTOR, ".gtitle").text
    assert title.startswith("layer 0 head 2") and "max-pooled 1x4" in title, title
    # the page shows no error message
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]')
    ARTIFACTS.mkdir(exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    result = {"n_tokens": N_TOKENS, "pattern_window": WINDOW, "choose_head_to_chart_s": timings,
              "median_s": statistics.median(timings), "chromium": CHROMIUM}
    (ARTIFACTS / "dashboard_timing.json").write_text(json.dumps(result, indent=1))
    print(f"\nchoose head -> attention map drawn ({N_TOKENS}-token trace): "
          + ", ".join(f"{t * 1000:.0f} ms" for t in timings) + f" (median {result['median_s'] * 1000:.0f} ms)")
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
