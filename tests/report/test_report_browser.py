"""The report page in a real headless Chromium (Selenium): loads from file:// without console errors, sliders,
filters, pagination and a screenshot with content. Skipped only when no browser can be started."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradcam.report import PAGE_SIZE, write_html_report
from report.report_support import EVALUATED_METHODS, FAILED_ERROR, NASTY_LABEL, copy_run, fake_run

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    """Headless Chromium through the system's chromedriver (no download); skip when none starts."""
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not Path(chromedriver).is_file() or browser is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (see .ci/run)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        chrome = webdriver.Chrome(service=webdriver.ChromeService(executable_path=chromedriver), options=options)
    except WebDriverException as error:
        pytest.skip(f"no headless browser could be started ({browser}, {chromedriver}): {error.msg}")
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def page(explained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the real explain run with its fake failed item and the label holding </script>."""
    out = copy_run(explained, tmp_path_factory.mktemp("page") / "run")
    return write_html_report(out).path


def open_page(driver: webdriver.Chrome, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.rendered"))


def cards(driver: webdriver.Chrome) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#grid article.card")


def card_names(driver: webdriver.Chrome) -> list[str]:
    """The file names of the cards shown (their titles are the inputs' paths)."""
    return [Path(card.find_element(By.TAG_NAME, "h3").text).name for card in cards(driver)]


def severe(driver: webdriver.Chrome) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_page_loads_from_file_without_console_errors(driver: webdriver.Chrome, page: Path) -> None:
    driver.get_log("browser")  # drop what came before
    open_page(driver, page)
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script(
            "return [...document.images].filter(i => i.getBoundingClientRect().top < innerHeight)"
            ".every(i => i.complete)"
        )
    )
    assert severe(driver) == []
    assert card_names(driver) == ["cameraman.jpg", "coffee.jpg", "broken.jpg"]
    headings = [h.get_attribute("textContent") for h in driver.find_elements(By.CSS_SELECTOR, ".cls h4")]
    assert NASTY_LABEL in headings  # shown as text, not markup
    assert driver.find_elements(By.CSS_SELECTOR, "#grid b") == []
    figures = cards(driver)[0].find_elements(By.CSS_SELECTOR, "figure.map")
    methods = [(f.get_attribute("data-label"), f.get_attribute("data-method")) for f in figures]
    assert methods == [(NASTY_LABEL, "gradcam"), (NASTY_LABEL, "counterfactual"),
                       ("harmonica", "gradcam"), ("harmonica", "counterfactual")]  # fmt: skip
    loaded = driver.execute_script(
        "return [...document.querySelectorAll('#grid article:first-child img')].map(i => i.naturalWidth)"
    )
    assert loaded and all(width > 0 for width in loaded)


def test_slider_sets_the_maps_opacity(driver: webdriver.Chrome, page: Path) -> None:
    open_page(driver, page)
    figure = driver.find_elements(By.CSS_SELECTOR, "figure.map")[0]
    slider = figure.find_element(By.CSS_SELECTOR, "input.opacity")
    heat = figure.find_element(By.CSS_SELECTOR, "img.heat")

    def opacity(element) -> float:
        return float(driver.execute_script("return getComputedStyle(arguments[0]).opacity", element))

    assert opacity(heat) == pytest.approx(0.5)
    slider.send_keys(Keys.HOME)
    assert opacity(heat) == 0.0
    slider.send_keys(Keys.END)
    assert opacity(heat) == 1.0
    for _ in range(3):
        slider.send_keys(Keys.ARROW_LEFT)
    assert opacity(heat) == pytest.approx(0.97)
    other = driver.find_elements(By.CSS_SELECTOR, "figure.map img.heat")[1]
    assert opacity(other) == pytest.approx(0.5)  # each map has its own slider
    driver.find_element(By.ID, "all-opacity").send_keys(Keys.HOME)  # and one moves them all
    assert {opacity(h) for h in driver.find_elements(By.CSS_SELECTOR, "img.heat")} == {0.0}


def test_class_and_method_filters(driver: webdriver.Chrome, page: Path) -> None:
    open_page(driver, page)
    box = driver.find_element(By.ID, "class")

    def search(text: str) -> None:  # replace the box's text as a person would (input events on every key)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        if text:
            box.send_keys(text)

    search("ESPRESSO")
    assert card_names(driver) == ["coffee.jpg"]
    labels = {f.get_attribute("data-label") for f in driver.find_elements(By.CSS_SELECTOR, "figure.map")}
    assert labels == {"espresso"}
    search("</script>")
    assert card_names(driver) == ["cameraman.jpg"]
    search("no such class")
    assert cards(driver) == [] and "No item matches" in driver.find_element(By.ID, "grid").text
    search("")
    assert card_names(driver) == ["cameraman.jpg", "coffee.jpg", "broken.jpg"]
    Select(driver.find_element(By.ID, "method")).select_by_value("counterfactual")
    methods = {f.get_attribute("data-method") for f in driver.find_elements(By.CSS_SELECTOR, "figure.map")}
    assert methods == {"counterfactual"} and len(cards(driver)) == 2  # the failed item has no maps


def test_failed_filter_shows_only_failed_items(driver: webdriver.Chrome, page: Path) -> None:
    open_page(driver, page)
    driver.find_element(By.ID, "failed").click()
    shown = cards(driver)
    assert len(shown) == 1 and "failed" in shown[0].get_attribute("class").split()
    assert shown[0].find_element(By.CSS_SELECTOR, ".error").text == FAILED_ERROR
    assert driver.find_element(By.ID, "failed-count").text == "(1)"
    driver.find_element(By.ID, "failed").click()
    assert len(cards(driver)) == 3


def test_pagination(driver: webdriver.Chrome, explained: Path, tmp_path: Path) -> None:
    out = copy_run(explained, tmp_path / "run")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["items"] = manifest["items"] * 50  # 100 items (thumbnails shared) + 1 failed
    (out / "manifest.json").write_text(json.dumps(manifest))
    open_page(driver, write_html_report(out).path)
    info = driver.find_element(By.CSS_SELECTOR, ".page-info")
    assert len(cards(driver)) == PAGE_SIZE == 48
    assert info.text == "items 1–48 of 101, page 1 of 3"
    assert driver.find_element(By.CSS_SELECTOR, ".prev").get_attribute("disabled") is not None
    driver.find_element(By.CSS_SELECTOR, ".next").click()
    assert len(cards(driver)) == 48 and info.text == "items 49–96 of 101, page 2 of 3"
    driver.find_element(By.CSS_SELECTOR, ".next").click()
    assert len(cards(driver)) == 5 and info.text == "items 97–101 of 101, page 3 of 3"
    assert driver.find_element(By.CSS_SELECTOR, ".next").get_attribute("disabled") is not None
    driver.find_element(By.ID, "class").send_keys("cup")  # a filter goes back to page 1 of its own count
    assert len(cards(driver)) == 48 and info.text == "items 1–48 of 50, page 1 of 2"
    lazy = driver.execute_script("return [...document.querySelectorAll('#grid img')].map(i => i.loading)")
    assert set(lazy) == {"lazy"}
    assert severe(driver) == []


def test_screenshot_has_content(driver: webdriver.Chrome, page: Path, tmp_path: Path) -> None:
    open_page(driver, page)
    first = cards(driver)[0]
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script(
            "return [...arguments[0].querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)", first
        )
    )
    driver.find_element(By.ID, "all-opacity").send_keys(Keys.END)  # the maps opaque: jet's own colours
    shot = tmp_path / "card.png"
    first.screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[0] > 150 and pixels.shape[1] > 700
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 2000  # photos and jet maps, not a blank or one-colour page
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 500  # the hot end of jet where the classes are


def test_ten_thousand_items_stay_small_and_load_quickly(
    driver: webdriver.Chrome, explained: Path, tmp_path: Path
) -> None:
    """10,000 items of 2 classes x 2 methods and 5 predictions each: under 3.5 MB of page (measured 2.8 MB with
    full input paths) and the first page shown in well under 5 s (measured 0.5-0.8 s on 2 shared cores)."""
    out = copy_run(explained, tmp_path / "run")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["items"] = [manifest["items"][i % 2] for i in range(10_000)]
    (out / "manifest.json").write_text(json.dumps(manifest))
    path = write_html_report(out).path
    assert path.stat().st_size < 3.5e6
    open_page(driver, path)
    loaded = driver.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd")
    assert loaded < 5000
    assert len(cards(driver)) == 48
    info = driver.find_element(By.CSS_SELECTOR, ".page-info").text
    assert info == "items 1–48 of 10001, page 1 of 209"
    assert severe(driver) == []


# ---------------------------------------------------------------------- a real `gradcam evaluate --html` page


def visible(driver: webdriver.Chrome, selector: str) -> list[str]:
    """``data-method`` of the elements matching ``selector`` that are displayed."""
    return [e.get_attribute("data-method") for e in driver.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()]


def test_real_evaluation_page_has_table_curves_and_examples(driver: webdriver.Chrome, evaluated_run: Path) -> None:
    driver.get_log("browser")
    driver.get((evaluated_run / "report.html").resolve().as_uri())
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    )
    assert severe(driver) == []
    summary = json.loads((evaluated_run / "summary.json").read_text())
    names = [row["method"] for row in summary["methods"]]
    assert names[: len(EVALUATED_METHODS)] == list(EVALUATED_METHODS)
    assert visible(driver, "table.metrics tbody tr") == names  # methods, then the baselines
    titles = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "table.metrics tbody th")]
    assert titles == [row["title"] for row in summary["methods"]]
    first = driver.find_elements(By.CSS_SELECTOR, "table.metrics tbody tr")[0]
    cells = [td.text for td in first.find_elements(By.TAG_NAME, "td")]
    assert f"{summary['methods'][0]['deletion_auc']:.3f}" in cells  # the numbers of summary.json
    curves = json.loads((evaluated_run / "curves.json").read_text())
    assert visible(driver, "svg.curves polyline") == list(curves) * 2  # deletion and insertion
    assert driver.find_element(By.CSS_SELECTOR, "svg.curves").size["width"] > 300
    examples = visible(driver, ".examples figure")
    assert set(examples) == {p.stem for p in (evaluated_run / "examples").glob("*.png")} >= set(EVALUATED_METHODS)
    widths = driver.execute_script("return [...document.querySelectorAll('.examples img')].map(i => i.naturalWidth)")
    assert all(width > 100 for width in widths)
    assert driver.find_element(By.CSS_SELECTOR, 'img[src="methods.png"]').get_property("naturalWidth") > 100


def test_real_evaluation_page_method_filter_hides_rows(driver: webdriver.Chrome, evaluated_run: Path) -> None:
    driver.get((evaluated_run / "report.html").resolve().as_uri())
    box = driver.find_element(By.ID, "method-filter")
    box.send_keys("counterf")
    assert visible(driver, "table.metrics tbody tr") == ["counterfactual"]
    assert visible(driver, "svg.curves polyline") == ["counterfactual"] * 2
    assert visible(driver, ".legend span") == ["counterfactual"]
    assert visible(driver, ".examples figure") == ["counterfactual"]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("baseline")  # titles match too ("Baseline: random map", ...)
    assert visible(driver, "table.metrics tbody tr") == ["center", "whole-image", "random"]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    assert len(visible(driver, "table.metrics tbody tr")) == 5
    assert severe(driver) == []


def test_a_zero_map_says_so_under_it(driver: webdriver.Chrome, tmp_path: Path) -> None:
    out = fake_run(tmp_path / "run", items=2)
    np.save(out / "map1.npy", np.zeros((300, 400), np.float32))
    open_page(driver, write_html_report(out).path)
    notes = [
        [n.text for n in card.find_elements(By.CSS_SELECTOR, "figure.map .zero-note") if n.is_displayed()]
        for card in cards(driver)
    ]
    assert notes == [[], ["map is zero"]]
