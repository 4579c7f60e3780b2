"""Screenshot of the web page of a running ``powersam serve`` with an image uploaded (the README's picture).

    powersam serve runs/demo/powersam_s.pt --port 8765 &
    python scripts/serve_screenshot.py http://127.0.0.1:8765 IMAGE --out docs/img/serve.png [--conf 0.3] \
        [--click X,Y ...]

Drives Debian's headless Chromium with Selenium (``apt-get install chromium chromium-driver``; ``pip install
selenium``): open the page, upload IMAGE, wait until the overlay is drawn, set the confidence slider, save the
window; each ``--click X,Y`` (image pixels) adds a positive point, so the picture also shows an interactive
mask. Prints how many instances the page drew, so the caption can say what the picture shows.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900"]


def wait_for(driver, script: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if driver.execute_script(f"return {script};"):
            return
        if driver.execute_script("return document.body.dataset.state;") == "error":
            raise RuntimeError(f"the page reports: {driver.find_element('id', 'status').text}")
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {script}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="base URL of a running `powersam serve`")
    parser.add_argument("image", type=Path, help="image to upload")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--conf", type=float, default=None, help="confidence slider value (default: the page's)")
    parser.add_argument("--click", action="append", default=[], metavar="X,Y",
                        help="a positive point in image pixels (repeatable: one interactive mask from all of them)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the overlay")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not Path(CHROMEDRIVER).is_file():
        print("needs Chromium and chromedriver: apt-get install chromium chromium-driver", file=sys.stderr)
        return 2
    if not args.image.is_file():
        print(f"{args.image}: no such image", file=sys.stderr)
        return 2
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(args.url.rstrip("/") + "/")
        wait_for(driver, "document.getElementById('model-info').textContent.length > 0", 30)
        driver.find_element("id", "file").send_keys(str(args.image.resolve()))
        wait_for(driver, "document.body.dataset.state === 'ready' && window.powersamPage.imageId", args.timeout)
        if args.conf is not None:
            driver.execute_script(f"const s = document.getElementById('conf'); s.value = {args.conf};"
                                  "s.dispatchEvent(new Event('input'));")
        canvas = driver.find_element("id", "canvas")
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", canvas)
        for calls, click in enumerate(args.click, start=1):
            x, y = (float(v) for v in click.split(","))
            width, height = driver.execute_script("return [arguments[0].width, arguments[0].height];", canvas)
            # offsets from the element's centre, in CSS pixels of the scaled canvas
            dx = (x / width - 0.5) * canvas.size["width"]
            dy = (y / height - 0.5) * canvas.size["height"]
            ActionChains(driver).move_to_element_with_offset(canvas, int(dx), int(dy)).click().perform()
            wait_for(driver, f"window.powersamPage.segmentCalls === {calls} && "
                             "document.body.dataset.state === 'ready'", args.timeout)
        drawn = canvas.get_attribute("data-drawn")
        found = driver.execute_script("return window.powersamPage.detect.count;")
        conf = driver.execute_script("return document.getElementById('conf').value;")
        driver.execute_script("window.scrollTo(0, 0);")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
    finally:
        driver.quit()
    print(f"{args.out}: {drawn} instances drawn at confidence {conf} ({found} returned by /v1/detect)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
