"""The browser demo: its callbacks directly, and the page in a real headless Chromium."""

from __future__ import annotations

import shutil
import socket
import time

import numpy as np
import pytest

from conftest import run_cli
from usam import sam2_adapter
from usam.demo import MEANINGLESS_BANNER, NO_PROMPT_TEXT, DemoSession, Prompt
from usam.head_table import HEAD_NAMES
from usam.heads import random_heads
from usam.predictor import UncertainSAM


@pytest.fixture(scope="module")
def session(small_sam2):
    model = UncertainSAM(sam2_adapter.make_image_predictor(small_sam2), random_heads(HEAD_NAMES))
    return DemoSession(model, meaningless=True)


@pytest.fixture(scope="module")
def image():
    picture = np.full((96, 128, 3), 40, dtype=np.uint8)
    picture[30:70, 40:90] = (220, 60, 60)
    return picture


def test_click_gives_masks_and_every_estimate(session, image):
    view = session.segment(image, Prompt().add("positive", 60, 50))
    assert view.masks.shape == image.shape
    assert view.masks.dtype == np.uint8
    assert view.uncertainty.shape == image.shape
    assert not np.array_equal(view.masks, image)  # the mask tint and the click are drawn
    assert view.text.startswith(f"**{MEANINGLESS_BANNER}")
    for index in range(3):
        assert f"**mask {index}**" in view.text
    assert view.text.count("SAM score:") == 3
    assert "gain from more clicks" in view.text
    assert "usam's pick: mask" in view.text
    assert "next click:" in view.text


def test_negative_click_and_box_are_prompts(session, image):
    positive = Prompt().add("positive", 60, 50)
    both = positive.add("negative", 10, 10)
    assert both.labels == [1, 0]
    assert positive.labels == [1]
    assert session.segment(image, both).text.count("SAM score:") == 3
    one_corner = Prompt().add("box corner", 35, 25)
    assert one_corner.box is None
    assert session.segment(image, one_corner).text.endswith(NO_PROMPT_TEXT)
    box = one_corner.add("box corner", 95, 75)
    assert box.box.tolist() == [35, 25, 95, 75]
    view = session.segment(image, box)
    assert view.masks is not None
    assert "next click:" not in view.text
    assert box.add("box corner", 1, 2).box_corners == [(1.0, 2.0)]  # a third corner starts a new box


def test_no_image_or_prompt_asks_for_one(session, image):
    assert "Upload or pick an image" in session.segment(None, Prompt()).text
    view = session.segment(image, Prompt())
    assert view.uncertainty is None
    assert view.text.endswith(NO_PROMPT_TEXT)


def test_demo_without_gradio_names_the_extra(capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gradio", None)  # makes ``import gradio`` fail
    status, _, err = run_cli(["demo", "--random-weights"], capsys)
    assert status == 2
    assert "usam[demo]" in err
    assert "Traceback" not in err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _chrome_driver(tmp_path):
    """A headless Chromium from the system's packages driven by Selenium, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip(
            "no headless browser: install Debian's chromium and chromium-driver (install.sh --dev tries) to run the "
            "demo's browser test"
        )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200"):
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    return webdriver.Chrome(options=options, service=Service(driver_path))


def test_page_in_a_real_browser(session, tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'usam[demo]')")
    driver = _chrome_driver(tmp_path)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from usam.demo import build_app

    scene = np.full((128, 128, 3), 30, dtype=np.uint8)
    scene[32:96, 40:100] = (60, 200, 90)
    app = build_app(session, examples=[scene])
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(f"http://127.0.0.1:{port}/")
        assert "meaningless" in wait.until(expected_conditions.presence_of_element_located((By.TAG_NAME, "h2"))).text
        # pick the example image, then click on it
        wait.until(
            expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, ".gallery-item, button.example"))
        ).click()
        picture = wait.until(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "#usam-input img")))
        time.sleep(0.5)  # the image settles into its frame
        ActionChains(driver).move_to_element(picture).click().perform()
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "usam-estimates"), "SAM score"))
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#usam-masks img")))
        estimates = driver.find_element(By.ID, "usam-estimates").text
        assert "usam's pick: mask" in estimates
        assert "gain from more clicks" in estimates
        driver.save_screenshot(str(tmp_path / "demo.png"))
        assert (tmp_path / "demo.png").stat().st_size > 0
    finally:
        driver.quit()
        app.close()
