"""Does a report render? Load index.html in headless Chromium (no network, no GPU) and check the
DOM it produces and the files it links; optionally save a screenshot.

Used by `lyco-bench report --check-render` and by the tests (which skip without Chromium).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lyco_bench.analysis.report import check_report_files
from lyco_bench.errors import BadInput

CHROMIUM_NAMES = (
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
    "headless_shell",
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--allow-file-access-from-files",
]


@dataclass
class RenderCheck:
    ok: bool
    chromium: str
    dom_chars: int = 0
    images_in_dom: int = 0
    problems: list[str] = field(default_factory=list)
    screenshot: Path | None = None


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(chromium: str, args: list[str], *, profile: str, timeout: float) -> subprocess.CompletedProcess:
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    env = {**os.environ, "HOME": profile}  # keep Chromium's caches out of the user's home
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def check_render(
    index_html: str | Path,
    *,
    chromium: str | None = None,
    screenshot: Path | None = None,
    timeout: float = 60,
) -> RenderCheck:
    """Dump the DOM of `index_html` with headless Chromium; ok when the page has its title, the
    leaderboard table and as many <img> as the source, and every linked file exists."""
    index_html = Path(index_html).resolve()
    if not index_html.is_file():
        raise BadInput(f"{index_html}: report not found")
    chromium = chromium or find_chromium()
    if chromium is None:
        raise BadInput("chromium: not found on PATH (install it, e.g. `apt-get install chromium`)")
    problems = check_report_files(index_html)
    source = index_html.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="lyco-chromium-") as profile:
        dom = _run(chromium, ["--dump-dom", index_html.as_uri()], profile=profile, timeout=timeout)
        if screenshot is not None:
            screenshot = Path(screenshot).resolve()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            shot = _run(
                chromium, [f"--screenshot={screenshot}", "--window-size=1400,1000", index_html.as_uri()],
                profile=profile, timeout=timeout,
            )  # fmt: skip
            if shot.returncode != 0 or not screenshot.is_file():
                problems.append(f"screenshot failed (exit {shot.returncode})")
    text = dom.stdout
    if dom.returncode != 0 or not text.strip():
        problems.append(f"chromium --dump-dom failed (exit {dom.returncode}): {dom.stderr.strip()[-200:]}")
    elif "<h1>" not in text or 'id="leaderboard"' not in text:
        problems.append("rendered DOM lacks the title or the leaderboard table")
    images = text.count("<img")
    if text and images != source.count("<img"):
        problems.append(f"rendered DOM has {images} <img>, the page {source.count('<img')}")
    return RenderCheck(
        ok=not problems, chromium=chromium, dom_chars=len(text), images_in_dom=images, problems=problems,
        screenshot=screenshot if screenshot is not None and screenshot.is_file() else None,
    )  # fmt: skip
