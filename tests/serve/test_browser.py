"""The web page in a real browser: Debian's headless Chromium driven by Selenium against a live server.

Upload an image, wait for the overlay, check that the instances drawn are the JSON's (at the slider's threshold,
and that the slider filters without a new request), click a point and check the interactive mask is the server's
mask for that click, download the COCO JSON, and save a screenshot (``$POWERSAM_TEST_ARTIFACTS`` or the test's
temporary folder). Skips, saying why, where Chromium, chromedriver or Selenium is missing (``.ci/run`` installs
them as root).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from powersam.client import Client

CHROMEDRIVER = os.environ.get("POWERSAM_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900"]


@pytest.fixture()
def browser(tmp_path):
    if CHROMIUM is None or not Path(CHROMEDRIVER).is_file():
        pytest.skip(f"no Chromium/chromedriver here (chromium: {CHROMIUM}, driver: {CHROMEDRIVER}); "
                    "apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script: str, seconds: float = 60):
    """Poll a JS expression until it is truthy; fail with the page's status line otherwise."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        if driver.execute_script("return document.body.dataset.state;") == "error":
            pytest.fail(f"the page reports: {driver.find_element('id', 'status').text}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {script}; status: {driver.find_element('id', 'status').text!r}")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from powersam.data.synth import generate_dataset

    folder = generate_dataset(tmp_path_factory.mktemp("scene") / "ds", 1, seed=4, image_size=(240, 320))
    return next((folder / "images").glob("*.png"))


def test_page_detects_filters_and_segments(browser, live_server, scene, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    client = Client(live_server.url)
    metrics = live_server.app.state.metrics
    browser.get(live_server.url + "/")
    wait_for(browser, "document.getElementById('model-info').textContent.includes('powersam_s')")
    detects_before = metrics.count("/v1/detect", 200)
    browser.find_element("id", "file").send_keys(str(scene))
    wait_for(browser, "document.body.dataset.state === 'ready' && window.powersamPage.imageId")

    # what the page drew is what the server answers for this image at the slider's threshold
    floor = browser.execute_script("return window.powersamPage.floor;")
    slider = float(browser.execute_script("return document.getElementById('conf').value;"))
    served = client.predict(scene, conf=floor)
    assert browser.execute_script("return window.powersamPage.detect.count;") == len(served)
    drawn = int(browser.find_element("id", "canvas").get_attribute("data-drawn"))
    assert drawn == int((served.scores >= slider - 1e-6).sum()) > 0
    detects = metrics.count("/v1/detect", 200)
    assert detects == detects_before + 2  # the page's request and ours

    # the slider filters in the page, without another request
    browser.execute_script("const s = document.getElementById('conf'); s.value = 0.45;"
                           "s.dispatchEvent(new Event('input'));")
    assert int(browser.find_element("id", "canvas").get_attribute("data-drawn")) == int((served.scores >= 0.45).sum())
    assert metrics.count("/v1/detect", 200) == detects
    browser.execute_script(f"const s = document.getElementById('conf'); s.value = {slider};"
                           "s.dispatchEvent(new Event('input'));")

    # a click: the interactive mask appears and is the server's mask for that point
    canvas = browser.find_element("id", "canvas")
    before = browser.execute_script("return arguments[0].toDataURL();", canvas)
    assert canvas.get_attribute("data-interactive-pixels") == "0"
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", canvas)  # wholly in view: the
    width = canvas.size["width"]  # click offsets below are from its true centre
    ActionChains(browser).move_to_element_with_offset(canvas, int(width * 0.1), 10).click().perform()
    wait_for(browser, "window.powersamPage.segmentCalls === 1 && document.body.dataset.state === 'ready'")
    x, y, label = browser.execute_script("return window.powersamPage.points[0];")
    # the canvas is scaled to the page: page offsets map back to image pixels
    assert canvas.size["width"] > 320 and label == 1
    assert abs(x - 192) < 2 and abs(y - (120 + 10 * 240 / canvas.size["height"])) < 2
    want = client.segment(scene, points=[[x, y]], labels=[1])
    pixels = int(canvas.get_attribute("data-interactive-pixels"))
    assert pixels == int(want.masks.sum()) > 0
    page_rle = browser.execute_script("return window.powersamPage.proposal.rle;")
    from pycocotools import mask as mask_utils

    page_mask = mask_utils.decode({"size": page_rle["size"], "counts": page_rle["counts"].encode()}).astype(bool)
    np.testing.assert_array_equal(page_mask, want.masks[0])
    assert browser.execute_script("return arguments[0].toDataURL();", canvas) != before

    # zoom in: a second click (a session of two points) is decoded on a crop, as the API's "zoom" does it
    browser.find_element("id", "zoom").click()
    ActionChains(browser).move_to_element_with_offset(canvas, int(width * 0.1) + 3, 12).click().perform()
    wait_for(browser, "window.powersamPage.segmentCalls === 2 && document.body.dataset.state === 'ready'")
    points = browser.execute_script("return window.powersamPage.points;")
    zoomed = client.segment(scene, points=[p[:2] for p in points], labels=[p[2] for p in points], zoom=3)
    assert "zoomed in" in browser.find_element("id", "status").text
    assert int(canvas.get_attribute("data-interactive-pixels")) == int(zoomed.masks.sum())
    browser.find_element("id", "zoom").click()  # off again for what follows

    # add it as an instance and download the COCO JSON: the drawn instances plus the new one
    browser.find_element("id", "apply").click()
    assert int(canvas.get_attribute("data-drawn")) == drawn + 1
    browser.find_element("id", "dl-coco").click()
    deadline = time.monotonic() + 20
    while not list(browser.downloads.glob("*.coco.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    coco = json.loads(next(browser.downloads.glob("*.coco.json")).read_text())
    assert len(coco["annotations"]) == drawn + 1 and coco["images"][0]["width"] == 320
    assert [c["name"] for c in coco["categories"]] == client.class_names

    artefacts = Path(os.environ.get("POWERSAM_TEST_ARTIFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0);")
    shot = artefacts / "serve_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
