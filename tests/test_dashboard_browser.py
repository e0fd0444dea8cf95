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
    from workbench.tasks.text import token_windows
    from workbench.core.tracer import Tracer

    ids = token_windows(smollm2.tokenizer, N_TOKENS, 1)
    tr = Tracer(smollm2, layers=LAYERS, stats=("received",), pattern_window=(N_TOKENS - WINDOW, N_TOKENS)).run(ids)
    d = tr.save(tmp_path_factory.mktemp("trace2048"))
    assert tr["pattern"].shape == (len(LAYERS), 1, 9, WINDOW, N_TOKENS)
    return d


def _serve(*extra: str):
    """Start `workbench dashboard --headless` on a free localhost port (with ``extra`` arguments and the
    committed census), yield its URL once its health check answers, and stop it afterwards."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "dashboard", "--headless", "--port", str(port),
                             *extra, "--census", str(ROOT / "reports" / "smollm2-135m")],
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


@pytest.fixture(scope="module")
def server(trace_2048):
    """`workbench dashboard --headless` on a free localhost port, opened on the saved trace."""
    yield from _serve("--trace", str(trace_2048))


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
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if predicate():
                return
        except StaleElementReferenceException:  # Streamlit re-rendered the element under us: look again
            pass
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


# --- the researcher's path: preset -> trace -> attention -> ACT intervention -> census ---------------

#: a test run writes its screenshots under artifacts/ (a test must not rewrite committed files);
#: WORKBENCH_UPDATE_SCREENSHOTS=1 writes them to docs/screenshots/ to refresh the README's pictures
SCREENSHOTS = ROOT / "docs" / "screenshots" if os.environ.get("WORKBENCH_UPDATE_SCREENSHOTS") == "1" \
    else ARTIFACTS / "screenshots"
PROMPT = "The capital of France is Paris. The capital of Italy is"  # the dashboard's default prompt
ACT_HEADS = [(10, 0), (7, 6)]  # the Intervention tab's default heads; the first is compared

PLOT_JS = """
const plot = document.querySelector(arguments[0] + ' .js-plotly-plot');
if (!plot) return null;
const t = plot.querySelector('.gtitle');
return t ? t.textContent : null;
"""

# the before / after heatmaps of the compared head, as drawn (plotly keeps its data on the graph div)
MAPS_JS = """
const plot = document.querySelector('.st-key-iv_fig_1 .js-plotly-plot');
const rows = (z) => (z && z.bdata) ? z : Array.from(z, (r) => Array.from(r));
return [rows(plot.data[0].z), rows(plot.data[1].z)];
"""


def _z(v):
    """A heatmap's z as drawn: nested lists, or plotly's typed-array form {dtype, bdata, shape}."""
    import base64

    import numpy as np

    if isinstance(v, dict):
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).astype(np.float64)
        return a.reshape([int(x) for x in str(v["shape"]).split(",")]) if v.get("shape") else a
    return np.asarray(v, dtype=np.float64)


@pytest.fixture(scope="module")
def plain_server():
    """`workbench dashboard --headless` with no trace (the user picks the preset and traces a prompt)."""
    yield from _serve()


def _button(driver, text: str):
    """The visible button with this text (retried while Streamlit re-renders the page under us)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(20):
        try:
            for b in driver.find_elements(By.CSS_SELECTOR, "button"):
                if b.text.strip() == text and b.is_displayed():
                    return b
        except StaleElementReferenceException:
            pass
        time.sleep(0.25)
    raise AssertionError(f"no visible button {text!r}")


def _click(driver, text: str) -> None:
    """Click the button with this text, finding it again if the page re-rendered it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(5):
        try:
            _button(driver, text).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.25)
    raise AssertionError(f"button {text!r} kept going stale")


def _label(driver, text: str):
    from selenium.webdriver.common.by import By

    for la in driver.find_elements(By.CSS_SELECTOR, "label"):
        if la.text.strip() == text and la.is_displayed():
            return la
    raise AssertionError(f"no visible option {text!r}")


def _tab(driver, name: str) -> None:
    """Click the tab with this name (Streamlit tabs are role=tab buttons)."""
    ok = driver.execute_script("""const t = [...document.querySelectorAll('[role=tab], [data-baseweb=tab]')]
        .find(e => e.textContent.trim() === arguments[0]); if (t) { t.click(); return true; } return false;""", name)
    assert ok, f"no tab {name!r}"


def _shot(driver, name: str) -> Path:
    """A small PNG of the page (palette-quantised) under :data:`SCREENSHOTS`."""
    from PIL import Image

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(exist_ok=True)
    raw = ARTIFACTS / f"{name}.raw.png"
    driver.save_screenshot(str(raw))
    out = SCREENSHOTS / f"{name}.png"
    Image.open(raw).convert("RGB").quantize(colors=128).save(out, optimize=True)
    return out


def _eager_rows(lm, act: bool, beta: float = 0.4):
    """Eager attention of head 10.0 on the prompt, float64: softmax of the model's own q.k, in a plain run
    (``act`` False) or under ACT on both default heads (then calibrated: sink set {k : s_k > 0.1} minus the
    first key found, beta on the sinks, the rest rescaled)."""
    import contextlib

    import torch

    from workbench.core.attention import attention_hooks
    from workbench.interventions.act import ACTCalibration

    layer, head = ACT_HEADS[0]
    got = {}

    class Capture:
        def on_attention(self, call):
            if call.layer == layer:
                got["q"] = call.query[0, head].double()
                got["k"] = call.key[0, head // call.n_rep].double()
                got["scale"] = call.scale

    ids = lm.encode(PROMPT)
    ctx = ACTCalibration(ACT_HEADS, beta=beta).applied() if act else contextlib.nullcontext()
    with ctx, attention_hooks(Capture()), torch.no_grad():
        lm.model(input_ids=ids, use_cache=False)
    n = ids.shape[1]
    s = (got["q"] @ got["k"].T) * got["scale"]
    a = torch.softmax(s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")), -1)
    if not act:
        return a
    recv = a.sum(0) / torch.arange(n, 0, -1, dtype=torch.float64)
    sinks = recv > 0.1
    sinks[int(sinks.nonzero()[0])] = False
    a_s = a[:, sinks].sum(-1, keepdim=True)
    return torch.where(sinks, beta * a, a * (1 - beta * a_s) / (1 - a_s))


def test_preset_trace_attention_act_census(plain_server, browser, smollm2):
    """The acceptance path of issue 17, with screenshots of each tab and the timings of a widget change,
    a trace and an ACT run (printed and written to artifacts/dashboard_path_timing.json, not asserted)."""
    import numpy as np
    from selenium.webdriver.common.by import By

    browser.set_window_size(1400, 1000)
    browser.get(plain_server)
    _wait(browser, lambda: any(b.text.strip() == "Load model" for b in browser.find_elements(By.CSS_SELECTOR, "button")),
          90, "the page")
    # the text LM preset is the default, labelled (the selected option is an input's value or a div's text)
    shown = """return [...document.querySelectorAll(arguments[0] + ' *')].some(e =>
        ((e.value || '') + ' ' + (e.textContent || '') + ' ' + (e.getAttribute('title') || '')).includes(arguments[1]));"""
    _wait(browser, lambda: browser.execute_script(shown, ".st-key-model_choice", "smollm2-135m · text LM"), 60,
          "the default preset")
    t0 = time.perf_counter()
    _click(browser, "Load model")
    _wait(browser, lambda: "smollm2-135m (text LM)" in browser.execute_script(
        "return document.querySelector(\"section[data-testid='stSidebar']\").textContent"),
          180, "the loaded model")
    load_s = time.perf_counter() - t0
    _label(browser, "run a prompt").click()
    _wait(browser, lambda: any(b.text.strip() == "Trace" for b in browser.find_elements(By.CSS_SELECTOR, "button")), 60,
          "the prompt form")
    t0 = time.perf_counter()
    _click(browser, "Trace")
    _wait(browser, lambda: (browser.execute_script(PLOT_JS, ".st-key-attn_map") or "").startswith("layer 0 head 0"), 120,
          "the traced attention map")
    trace_s = time.perf_counter() - t0
    ticks = [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".st-key-attn_map .xtick text")]
    assert "·capital" in ticks and "·Paris" in ticks, ticks
    assert not any(m in t for t in ticks for m in ("Ġ", "Ċ")), ticks
    # a widget change that needs no model call: another head
    widget_s = []
    for head in (4, 7):
        label = _head_label(browser, head)
        t0 = time.perf_counter()
        label.click()
        _wait(browser, lambda: (browser.execute_script(PLOT_JS, ".st-key-attn_map") or "").startswith(f"layer 0 head {head}"),
              60, f"the map of head {head}")
        widget_s.append(time.perf_counter() - t0)
    browser.execute_script("window.scrollTo(0, 0)")
    shots = [_shot(browser, "dashboard_attention")]

    # the Intervention tab: ACT (the default intervention) on the default heads; the compared head is 10.0
    _tab(browser, "Intervention")
    _wait(browser, lambda: any(b.text.strip() == "Run intervention" for b in browser.find_elements(By.CSS_SELECTOR, "button")),
          60, "the intervention form")
    _wait(browser, lambda: browser.execute_script(shown, ".st-key-iv_name", "act calibration"), 30,
          "ACT as the default intervention")
    t0 = time.perf_counter()
    _click(browser, "Run intervention")
    _wait(browser, lambda: (browser.execute_script(PLOT_JS, ".st-key-iv_fig_1") or "").startswith("head 10.0 attention"),
          240, "the before / after maps")
    act_s = time.perf_counter() - t0
    before, after = (_z(m) for m in browser.execute_script(MAPS_JS))
    ref, eager_before = _eager_rows(smollm2, act=True), _eager_rows(smollm2, act=False)
    assert after.shape == tuple(ref.shape)
    assert np.abs(after - ref.numpy()).max() < 1e-5  # after = the eager calibrated attention
    assert np.abs(before - eager_before.numpy()).max() < 1e-5
    assert np.abs(after - before).max() > 1e-2  # and it differs from before
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]')
    browser.execute_script("document.querySelector('.st-key-iv_fig_1').scrollIntoView({block: 'end'})")
    time.sleep(0.5)
    shots.append(_shot(browser, "dashboard_intervention"))

    # the Census tab of the committed folder
    _tab(browser, "Census")
    _wait(browser, lambda: browser.execute_script(PLOT_JS, ".st-key-census_grid") is not None, 60, "the census heatmap")
    shots.append(_shot(browser, "dashboard_census"))
    result = {"load_model_s": load_s, "trace_s": trace_s, "widget_change_s": widget_s, "act_run_s": act_s,
              "act_new_tokens": 10, "max_abs_after_minus_eager_act": float(np.abs(after - ref.numpy()).max()),
              "max_abs_after_minus_before": float(np.abs(after - before).max()),
              "screenshots": [str(s.relative_to(ROOT)) for s in shots]}
    (ARTIFACTS / "dashboard_path_timing.json").write_text(json.dumps(result, indent=1))
    print("\n" + json.dumps(result, indent=1))
    assert all(s.stat().st_size > 10_000 for s in shots)
