"""Segmentation images and videos with ``ns-render``, and the live viewer in a real (headless) browser."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

from contrastive_lift_ns.drawing.palette import PALETTE
from contrastive_lift_ns.keys import Output
from contrastive_lift_ns.scripts.cli import load_run
from contrastive_lift_ns.scripts.export import ExportConfig

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _palette_colours(image: np.ndarray, min_pixels: int) -> int:
    """How many palette colours (not the background grey) cover at least ``min_pixels`` of an RGB image."""
    pixels = image.reshape(-1, 3).astype(np.int32)
    palette = (PALETTE[1:].numpy() * 255).round().astype(np.int32)
    distance = np.abs(pixels[:, None, :] - palette[None]).max(-1)
    nearest = distance.argmin(-1)
    close = distance.min(-1) <= 6
    counts = np.bincount(nearest[close], minlength=len(palette))
    return int((counts >= min_pixels).sum())


def test_ns_render_dataset_writes_instance_images(trained_run, tmp_path):
    result = subprocess.run(
        [str(BIN / "ns-render"), "dataset", "--load-config", str(trained_run.config), "--split", "test",
         "--rendered-output-names", "rgb", "instance", "raw-instance_id", "--output-path", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    instance_images = sorted((tmp_path / "test/instance").glob("*"))
    assert len(instance_images) == 5
    assert _palette_colours(np.array(Image.open(instance_images[0]).convert("RGB")), 10) >= 3
    assert len(list((tmp_path / "test/raw-instance_id").glob("*.npy.gz"))) == 5


def test_ns_render_interpolate_writes_a_segmentation_video(trained_run, tmp_path):
    video = tmp_path / "segmentation.mp4"
    result = subprocess.run(
        [str(BIN / "ns-render"), "interpolate", "--load-config", str(trained_run.config), "--rendered-output-names",
         "rgb", "instance", "--interpolation-steps", "2", "--output-path", str(video)],
        capture_output=True, text=True, timeout=600, env=ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert video.stat().st_size > 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _viewer_in_chromium(config: Path, tmp_path: Path):
    """An ns-viewer of the run and a headless Chromium on its page; yields (browser, a 120 s wait)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and chromedriver, "Debian's chromium and chromium-driver are installed by `make test`"
    port = _free_port()
    log = open(tmp_path / _VIEWER_LOG, "w")
    viewer = subprocess.Popen(
        [str(BIN / "ns-viewer"), "--load-config", str(config), "--viewer.websocket-host", "127.0.0.1",
         "--viewer.websocket-port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True,
    )  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}",
                 "--enable-unsafe-swiftshader"):  # fmt: skip
        options.add_argument(flag)
    browser = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert viewer.poll() is None, f"ns-viewer exited; {_tail(tmp_path)}"
                time.sleep(1)
        browser = webdriver.Chrome(service=Service(chromedriver), options=options)
        browser.get(f"http://127.0.0.1:{port}")
        wait = WebDriverWait(browser, 120)
        _render_small(browser, wait)
        yield browser, wait
    finally:
        if browser is not None:
            browser.quit()
        os.killpg(viewer.pid, signal.SIGTERM)
        viewer.wait(timeout=30)
        log.close()


_VIEWER_LOG = "ns-viewer.log"


def _tail(tmp_path: Path) -> str:
    """The end of the viewer's console, where a render thread's error would be."""
    return "ns-viewer's console ends: " + (tmp_path / _VIEWER_LOG).read_text(errors="replace")[-1500:]


def _render_small(browser, wait) -> None:
    """Sets the viewer's "Max res" slider one step above its minimum (164 px instead of 512): a CPU renders 512 px
    in tens of seconds, and nerfstudio runs the custom controls' callbacks only between renders. (At 64 px the
    JPEG frames blur the palette colours.)"""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    thumb = _labelled(browser, wait, "Max res").find_element(By.XPATH, ".//*[@role='slider']")
    thumb.send_keys(Keys.HOME, Keys.ARROW_RIGHT)
    wait.until(lambda _: thumb.get_attribute("aria-valuenow") == "164")


def _labelled(browser, wait, label: str):
    """The input element of a GUI field with this label."""
    from selenium.webdriver.common.by import By

    found = wait.until(lambda b: b.find_element(By.XPATH, f"//label[text()='{label}']"))
    by_id = browser.find_elements(By.ID, found.get_attribute("for"))
    # viser's text inputs carry an id of their own: take the input in the label's row
    return by_id[0] if by_id else found.find_element(By.XPATH, "./ancestor::div[.//input][1]//input")


def _options(browser, wait, label: str) -> List[str]:
    """The texts of a dropdown's options (it is opened to read them, then closed)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _labelled(browser, wait, label).click()
    # only the open dropdown's options show text (other dropdowns' may linger in the page, hidden)
    texts = wait.until(lambda b: [o.text for o in b.find_elements(By.XPATH, "//*[@role='option']") if o.text])
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    return texts


@pytest.mark.browser
def test_viewer_shows_the_instance_output_in_chromium(trained_run, tmp_path):
    from selenium.webdriver.common.by import By

    with _viewer_in_chromium(trained_run.config, tmp_path) as (browser, wait):
        _labelled(browser, wait, "Output type").click()
        option = wait.until(
            lambda b: [o for o in b.find_elements(By.XPATH, "//*[@role='option']") if o.text == "instance"]
        )
        option[0].click()
        # the custom controls are there too
        assert browser.find_elements(By.XPATH, "//*[text()='Recluster now']")
        colours = 0
        # renders refine from a coarse first frame; on a slow CI machine one frame has taken minutes
        deadline = time.time() + 600
        while time.time() < deadline:
            time.sleep(3)
            shot = tmp_path / "viewer.png"
            browser.save_screenshot(str(shot))
            render_area = np.array(Image.open(shot).convert("RGB"))[60:-10, :940]
            # the viewer streams JPEG frames, whose edges blur the palette: count the flat insides of objects
            colours = _palette_colours(render_area, 100)
            if colours >= 3:
                break
        assert colours >= 3, f"only {colours} palette colours in the render area (see {shot}; {_tail(tmp_path)})"


_OBJECTS = "Objects (id · pixels · confidence)"


@pytest.mark.browser
def test_a_merge_in_the_viewer_is_rendered_kept_on_reopening_and_exported_as_one_object(trained_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    _, pipeline, _ = load_run(trained_run.config)
    (a, *_), (b, *_) = sorted(pipeline.objects(), key=lambda row: -row[1])[:2]  # the two largest objects
    kept, gone = min(a, b), max(a, b)
    path = pipeline.corrections_path
    assert path is not None and not path.exists()
    try:
        with _viewer_in_chromium(trained_run.config, tmp_path) as (browser, wait):
            listed = _options(browser, wait, _OBJECTS)
            assert {kept, gone} <= {int(row.split(" ")[0]) for row in listed[1:]}
            selection = _labelled(browser, wait, "Selected objects")
            selection.send_keys(f"{a}, {b}", Keys.TAB)
            time.sleep(1)  # the text reaches the viewer before the button's click
            browser.find_element(By.XPATH, "//*[text()='Merge selected']").click()
            # nerfstudio runs the custom controls' callbacks under the lock its render thread holds while it
            # renders, which on a CPU can take minutes
            WebDriverWait(browser, 900, poll_frequency=2).until(lambda _: path.exists())
        assert json.loads(path.read_text())["corrections"] == [{"op": "merge", "ids": [kept, gone]}]

        # the rendered ids show one object: the merged id is gone, the kept one covers both
        _, pipeline, _ = load_run(trained_run.config)
        rendered = np.concatenate(
            [pipeline.model.get_outputs_for_camera(camera)[Output.INSTANCE_ID].long().ravel().numpy()
             for camera, _ in pipeline.datamanager.fixed_indices_eval_dataloader]
        )  # fmt: skip
        assert gone not in rendered and kept in rendered

        # a reopened viewer lists the merged object once
        with _viewer_in_chromium(trained_run.config, tmp_path) as (browser, wait):
            listed = {int(row.split(" ")[0]) for row in _options(browser, wait, _OBJECTS)[1:]}
        assert kept in listed and gone not in listed

        # cl-export writes one object for the two
        export = tmp_path / "export"
        ExportConfig(load_config=trained_run.config, output_dir=export, num_points=20_000).main()
        exported = {o["id"] for o in json.loads((export / "objects.json").read_text())["objects"]}
        assert kept in exported and gone not in exported
    finally:
        path.unlink(missing_ok=True)
