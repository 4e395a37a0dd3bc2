"""`eval --html`: one self-contained page, rendered in a real headless browser (Debian's
`chromium`; `.ci/run` installs it) and checked for what it shows."""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from batch.cli import main
from tests.eval_rows import gold_rows, native_rows, write_jsonl

CHROMIUM = shutil.which("chromium")
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,1400",
]
# Run by the browser after layout: what is drawn, measured, written into the page for --dump-dom.
PROBE = """<script>
addEventListener("load", () => {
  const all = (s) => [...document.querySelectorAll(s)];
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    text: document.body.innerText,
    heat: all("table.heat td").map((td) => [td.textContent, getComputedStyle(td).backgroundColor]),
    bars: all("table.dist .bar").map((bar) => Math.round(bar.getBoundingClientRect().width)),
    pageWidth: document.documentElement.scrollWidth,
  });
  document.body.append(probe);
});
</script>"""


def write_page(tmp_path: Path) -> Path:
    output = write_jsonl(tmp_path / "run.out.jsonl", native_rows())
    gold = write_jsonl(tmp_path / "gold.jsonl", gold_rows())
    page = tmp_path / "report.html"
    gates = ["--min", "label=0.5", "--min", "label.kappa=0.5"]
    assert main(["eval", str(output), "--gold", str(gold), "--html", str(page), *gates]) == 1
    return page


def test_the_page_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    page = write_page(tmp_path).read_text()
    for loader in ("src=", "href=", "url(", "@import", "<link", "<script", "<iframe", "//"):
        assert loader not in page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
    )


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_the_browser_shows_figures_heat_maps_bars_gates_and_examples(tmp_path: Path) -> None:
    page = write_page(tmp_path)
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = browser(tmp_path, "--dump-dom", probed.as_uri()).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found is not None, dom[-2000:]
    shown: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    text = shown["text"]
    assert "Label quality" in text
    assert "7 reference rows; 6 with an output row; 1 failed (counted wrong)" in text
    assert "Failed: r6" in text and "No output row: r7" in text
    assert re.search(r"label\.accuracy\s+0\.500\s+≥ 0\.5\s+holds", text)
    assert re.search(r"label\.kappa\s+0\.280\s+≥ 0\.5\s+FAILED", text)
    assert "accuracy 50.0% (3/6)" in text and "kappa 0.280" in text and "MAE 1.400" in text
    assert "bird → fish: 1 row" in text and "r5: a text about r5" in text
    assert "0.95\N{EN DASH}1\t1\t100.0%" in text  # accuracy by confidence band
    # The label heat map, row by row (bird, cat, dog, fish x bird, cat, dog, fish, failed):
    # empty cells grey, the diagonal green and the rest red, by the share of the row.
    heat = shown["heat"][:20]
    assert [n for n, _ in heat] == list("00010020010110000000")
    grey = "rgb(244, 246, 248)"
    assert heat[0][1] == grey and heat[3][1] == "rgba(200, 30, 40, 0.9)"
    assert heat[6][1] == "rgba(23, 140, 70, 0.65)" and heat[9][1] == "rgba(200, 30, 40, 0.4)"
    # Distribution bars (reference, output) per value, 160 px for the largest count (3).
    assert shown["bars"] == [53, 0, 160, 160, 107, 53, 0, 53, 0, 53]
    assert shown["pageWidth"] <= 1100  # nothing runs off the side of the window


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_the_screenshot_is_a_drawn_page(tmp_path: Path) -> None:
    page = write_page(tmp_path)
    shot = tmp_path / "report.png"
    browser(tmp_path, f"--screenshot={shot}", page.as_uri())
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1100, 1400)
    assert len(png) > 30_000  # a blank page of that size compresses to a few kilobytes
