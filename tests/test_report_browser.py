"""The HTML report in a real headless browser (Chromium driven by Selenium): sorting by a click
on a header reorders the rows, the column chooser hides a column, the full table opens from its
link, every image loads, nothing is logged to the console as an error, and the first view fits a
laptop screen (1366 px wide: the table's scrollWidth within its box, the page without sideways
scrolling). Skips, saying what is missing, where no Chromium, chromedriver or Selenium is installed
(`make dev-browser` installs them)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from lyco_bench.analysis.render_check import find_chromium
from lyco_bench.analysis.report import write_report
from lyco_bench.analysis.results import metric_label
from lyco_bench.analysis.uncertainty import BootstrapSettings
from tests.helpers import IMG, hand_results

pytestmark = pytest.mark.e2e  # a browser and a bootstrap of 14 labels: `make test-fast` skips it
LAPTOP = (1366, 768)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", f"--window-size={LAPTOP[0]},{LAPTOP[1]}",
]  # fmt: skip
# a study's usual label set: every headline metric in every prompt class, leakage and quality
EXTRA_LABELS = [
    ("image_similarity", "dinov2", "resize", "train"), ("image_similarity", "dinov2", "resize", "trigger"),
    ("text_similarity", "clip", "", "train"), ("text_similarity", "clip", "", "trigger"),
    ("text_similarity", "clip", "", "style"), ("vendi", "dinov2", "", "alter"), ("vendi", "dinov2", "", "train"),
    ("style_loss_base", "vgg19", "", "style"), ("intrusion", "dinov2", "resize", "agnostic"),
    ("clip_iqa", "clip", "", "alter"),
]  # fmt: skip
LONG_NAMES = {"A": "lora8a4-attnonly-lr5e-4", "B": "loha4a2-attnonly", "C": "lokrf4-lr5e-4", "D": "lora8a4"}


def _driver():
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium installed (apt-get install chromium chromium-driver)")
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None:
        pytest.skip("no chromedriver installed (apt-get install chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='lyco-browser-')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    driver.set_page_load_timeout(60)
    return driver


def study_results(tmp_path: Path) -> pd.DataFrame:
    """The hand-made results with a study's usual metric labels and long configuration names."""
    results = hand_results(tmp_path)
    img = results[results["metric"] == IMG]
    extra = []
    for i, (metric, encoder, mode, prompt_class) in enumerate(EXTRA_LABELS):
        rows = img.copy()
        rows["metric"], rows["encoder"], rows["mode"], rows["prompt_class"] = (
            metric,
            encoder,
            mode,
            prompt_class,
        )
        rows["label"] = metric_label(metric, encoder, mode, prompt_class)
        rows["value"] = rows["value"] + 0.01 * i
        extra.append(rows)
    results = pd.concat([results, *extra], ignore_index=True)
    results["config"] = results["config"].map(lambda c: LONG_NAMES.get(c, c))
    return results


def study_costs(results: pd.DataFrame) -> pd.DataFrame:
    """What training each checkpoint cost, as sweep.collect.run_costs reads it from run records."""
    runs = results[results["algo"] != "base"].drop_duplicates("checkpoint")
    return pd.DataFrame({"config": runs["config"], "seed": runs["seed"], "epoch": runs["epoch"],
                         "train_seconds": runs["trainable_params"] * 0.9, "peak_memory_bytes": 3.1e9,
                         "unmerged_overhead": runs["trainable_params"] / 4e4})  # fmt: skip


def image_folder(root: Path, color: tuple[int, int, int]) -> Path:
    rows = []
    for prompt_class in ("alter", "trigger"):
        for i in range(3):
            (root / prompt_class).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (48, 48), tuple(min(255, c + 30 * i) for c in color)).save(
                root / prompt_class / f"{i}.png"
            )
            rows.append(
                {"file": f"{prompt_class}/{i}.png", "prompt_class": prompt_class, "category": "anime",
                 "concept": "abukuma", "subclass": "", "prompt_index": 0, "image_index": i}
            )  # fmt: skip
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root / "manifest.parquet"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    manifests = {"base": image_folder(tmp / "base", (20, 20, 180)),
                 "lora8a4-s23-e010": image_folder(tmp / "ck", (180, 20, 20))}  # fmt: skip
    figure = tmp / "tradeoff_anime_epoch.png"
    Image.new("RGB", (300, 200), (10, 120, 200)).save(figure)
    results = study_results(tmp / "scores")
    return write_report(
        study_name="browser", results=results, out_dir=tmp / "report", figures=[figure],
        image_manifests=manifests, bootstrap=BootstrapSettings(n_resamples=200, seed=0),
        costs=study_costs(results),
    )  # fmt: skip


def _column(driver, table: str, index: int) -> list[str]:
    script = (
        "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'),"
        " r => r.cells[arguments[1]].getAttribute('data-v') || r.cells[arguments[1]].textContent.trim())"
    )
    return driver.execute_script(script, f"#{table}", index)


def _header_index(driver, table: str, text: str) -> int:
    heads = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' thead th'), h => h.textContent.trim())", f"#{table}"
    )  # fmt: skip
    return next(i for i, h in enumerate(heads) if h.startswith(text))


def test_report_in_a_real_browser(report):
    driver = _driver()
    try:
        driver.get(report.as_uri())
        # the first view fits a laptop screen: no sideways scrolling of the table or the page
        widths = driver.execute_script(
            "const t = document.getElementById('leaderboard');"
            "return [t.scrollWidth, t.parentElement.clientWidth, document.documentElement.scrollWidth, window.innerWidth]"
        )  # fmt: skip
        assert widths[0] <= widths[1] and widths[2] <= widths[3] == LAPTOP[0], widths
        heads = [h.split("\n")[0] for h in _column_heads(driver)]
        assert heads[2:8] == [
            "fidelity",
            "controllability",
            "diversity",
            "preservation",
            "leakage",
            "quality",
        ]
        # sorting: a click on "params" orders the rows by parameter count, a second click reverses
        col = _header_index(driver, "leaderboard", "params")
        configs = _header_index(driver, "leaderboard", "config")
        before = _column(driver, "leaderboard", configs)
        header = driver.find_elements("css selector", "#leaderboard thead th")[col]
        header.click()
        up = _column(driver, "leaderboard", configs)
        assert up != before and up[:4] == [LONG_NAMES[c] for c in "ABCD"]  # 1000, 2000, 3000, 4000 parameters
        assert up[-1] == "base"  # no parameter count: last in either direction
        assert header.get_attribute("aria-sort") == "ascending"
        header.click()
        assert _column(driver, "leaderboard", configs)[:4] == up[:4][::-1]
        # the column chooser hides a column
        driver.find_element("css selector", "details.choose[data-for='leaderboard'] summary").click()
        boxes = driver.find_elements("css selector", "details.choose[data-for='leaderboard'] input")
        boxes[col].click()
        assert not header.is_displayed()
        # every metric column one click away
        driver.find_element("css selector", "nav a[href='#full']").click()
        assert driver.execute_script("return document.getElementById('full').open") is True
        assert len(driver.find_elements("css selector", "#full-leaderboard thead th")) > len(heads)
        # every image loads (lazy ones scrolled to first)
        sizes = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "const imgs = Array.from(document.images);"
            "Promise.all(imgs.map(i => { i.loading = 'eager'; i.scrollIntoView(); return i.decode().catch(() => null); }))"
            ".then(() => done(imgs.map(i => [i.getAttribute('src'), i.naturalWidth])));"
        )  # fmt: skip
        assert len(sizes) == 4 and all(width > 0 for _, width in sizes), sizes  # figure, grid ×2, Pareto
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        driver.quit()


def _column_heads(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#leaderboard thead th'), h => h.innerText.trim())"
    )
