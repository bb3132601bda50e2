"""report.html as a person sees it: rendered by a real browser (headless Chromium, Debian's package).

Proves the page opens offline on its own (a copy outside output/data, no network), that the three embedded
pictures actually decode and show (their distinctive colours are on the screenshot), and that the per-class
table's values are in the rendered DOM.
"""

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.docker_helpers import ensure_debian_package
from tests.test_outputs import _written_run

pytestmark = pytest.mark.slow

# Colours only one picture of the page has: the confusion matrix's cells for a share of 0.90 (matplotlib's
# "Blues" at 0.9; two such cells), the mIOU curve's tab:green (training curves) and the legend's tab:orange
# for class 1 (prediction examples).
BLUES_AT_90 = (8, 74, 145)
TAB_GREEN = (44, 160, 44)
TAB_ORANGE = (255, 127, 14)


def _chromium(*args: str) -> subprocess.CompletedProcess:
    browser = ensure_debian_package("chromium", "chromium")
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def _pixels_near(screenshot: np.ndarray, colour, tolerance: int = 12) -> int:
    return int((np.abs(screenshot.astype(int) - np.array(colour)).max(axis=2) <= tolerance).sum())


def test_chromium_renders_the_report_with_its_pictures_and_tables(tmp_path):
    report, _ = _written_run(tmp_path / "output_data")
    alone = tmp_path / "mailed" / "report.html"  # the page on its own, away from the PNG files
    alone.parent.mkdir()
    shutil.copy(str(report), str(alone))
    shot = tmp_path / "shot.png"
    _chromium("--window-size=1200,2600", f"--screenshot={shot}", alone.as_uri())
    screenshot = np.asarray(Image.open(str(shot)).convert("RGB"))

    assert (screenshot < 200).any(axis=2).mean() > 0.05, "the page looks blank"
    assert _pixels_near(screenshot, BLUES_AT_90) > 2000, "the confusion matrix picture is not shown"
    assert _pixels_near(screenshot, TAB_GREEN) > 50, "the training curves picture is not shown"
    assert _pixels_near(screenshot, TAB_ORANGE) > 50, "the prediction examples picture is not shown"

    dom = _chromium("--dump-dom", alone.as_uri()).stdout
    assert "<h2>Per-class scores (epoch 1)</h2>" in dom
    # dog: IoU 18/27, Dice 36/45 at the best epoch, 14.3 % of the labelled pixels
    assert '<td class="name">dog</td><td>0.6667</td><td>0.8000</td><td>14.3%</td>' in dom
    assert dom.count("<img ") == 3
