"""The web app in a real browser: Debian's Chromium driven by Playwright against `sharpkd serve`.

Playwright's own browser download does not work on these machines, so the test launches the
system Chromium (``apt-get install chromium``). Outside CI the test is skipped when either is
missing; in CI (``CI`` set) a missing browser is a failure, not a skip.
"""

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from conftest import running_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "blurry_cat.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _need(thing: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{thing} is missing in CI (.ci/run installs it)")
    pytest.skip(f"{thing} is not installed")


@pytest.fixture(scope="module")
def server():
    """`sharpkd serve` on a free loopback port, for the whole module."""
    with running_server() as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        _need("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        print(f"browser: {exe}, Chromium {b.version}")
        yield b
        b.close()


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $SHARPKD_SCREENSHOTS if set (docs), else the test's tmp folder."""
    d = Path(os.environ.get("SHARPKD_SCREENSHOTS", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


def wait_js(page, expression: str, timeout: float = 120.0) -> None:
    """Poll a JavaScript expression until it is true. (Playwright's wait_for_function evaluates its
    predicate with eval() inside the page, which the app's Content-Security-Policy forbids.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        page.wait_for_timeout(100)


def test_upload_sharpen_slide_and_download(server, browser, tmp_path):
    w, h = Image.open(EXAMPLE).size
    page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    console_errors = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(server + "/")
    page.set_input_files("#file", str(EXAMPLE))
    page.get_by_label("Student (fast)").check()
    page.click("#go")
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    wait_js(page, "document.getElementById('img-after').naturalWidth > 0")
    assert not console_errors  # the page works under its Content-Security-Policy (no blocked script/style/image)
    # the result image has the upload's size
    size = page.evaluate("[document.getElementById('img-after').naturalWidth, "
                         "document.getElementById('img-after').naturalHeight]")
    assert size == [w, h]
    # the scores are shown with numbers
    assert page.inner_text("#score-time").endswith("ms")
    before, after = (float(v.split()[0]) for v in page.inner_text("#score-edges").split("\u2192"))
    assert 0 < after < before  # the student narrows the example's edges
    assert "Done" in page.inner_text("#status")
    # the slider moves the before/after split
    page.fill("#slider", "20")
    assert "20%" in page.evaluate("document.getElementById('img-after').style.clipPath")
    # side-by-side view and the 100 % zoom
    page.click("#view-side")
    assert page.is_visible("#side-after") and not page.is_visible("#compare-box")
    page.click("#side-after", position={"x": 30, "y": 30})
    assert page.evaluate("document.getElementById('zoom-after').style.backgroundSize") == f"{w}px {h}px"
    page.screenshot(path=str(screenshot_dir(tmp_path) / "web_result.png"), full_page=True)
    # download: same size and format as the upload
    with page.expect_download() as info:
        page.click("#download")
    dl = info.value
    assert dl.suggested_filename == "blurry_cat_sharp.png"
    target = tmp_path / dl.suggested_filename
    dl.save_as(target)
    out = Image.open(target)
    assert out.size == (w, h) and out.format == "PNG"
    assert not np.array_equal(np.asarray(out.convert("RGB")), np.asarray(Image.open(EXAMPLE).convert("RGB")))
    page.close()


def test_compare_all_and_demo_mode(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server + "/")
    page.set_input_files("#file", str(EXAMPLE))
    page.click("#compare")
    wait_js(page, "document.querySelectorAll('#all-grid figure').length === 5")
    captions = page.locator("#all-grid figcaption").all_inner_texts()
    assert captions[0] == "original"
    assert [c.split(":")[0] for c in captions[1:]] == ["student", "kstudent", "teacher", "unsharp"]
    page.click("#tab-demo")
    sharp = tmp_path / "astronaut.png"  # the demo wants a sharp photo; the example cat is blurry
    Image.fromarray(skimage.data.astronaut()[:256, 128:384]).save(sharp)
    page.set_input_files("#demo-file", str(sharp))
    page.select_option("#demo-blur", "gaussian")
    page.fill("#demo-strength", "1.5")
    page.click("#demo-go")
    page.wait_for_selector("#demo-result:not([hidden])", timeout=60_000)
    blurred = float(page.inner_text("#demo-psnr-blurred"))
    sharpened = float(page.inner_text("#demo-psnr-sharpened"))
    assert sharpened > blurred
    page.screenshot(path=str(screenshot_dir(tmp_path) / "web_demo.png"), full_page=True)
    page.close()


def test_phone_width_and_error_message(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(server + "/")
    # nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.set_input_files("#file", str(EXAMPLE))
    page.click("#go")
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    # slider mode shows one copy of the photo pair, not the side-by-side images as well
    assert page.evaluate("getComputedStyle(document.getElementById('side-view')).display") == "none"
    bad = tmp_path / "not_a_photo.png"
    bad.write_bytes(b"this is text, not a PNG")
    page.set_input_files("#file", str(bad))
    page.click("#go")
    wait_js(page, "document.getElementById('status').textContent.startsWith('Could not')")
    assert "not an image" in page.inner_text("#status")
    assert page.evaluate("document.getElementById('result').hidden")  # the previous result is gone
    page.screenshot(path=str(screenshot_dir(tmp_path) / "web_phone_error.png"), full_page=True)
    page.close()
