"""The HTML picture in a real browser: headless Chromium (Debian's ``chromium`` package, which ``.ci/run``
installs) loads the page with no console message, draws the warning band of a warned answer, and its screenshot
is not blank. Skipped, saying why, where no Chromium is installed."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import intgrads
from intgrads.engine.diagnostics import answer_warnings
from intgrads.pictures import render_answer
from intgrads.pictures.data import WARNING_FILL

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"no headless browser installed ({', '.join(BROWSERS)}); on Debian: apt-get install chromium")


def test_the_html_page_loads_clean_and_shows_the_warning_band(bundle, tmp_path):
    from matplotlib.image import imread

    browser = _browser()
    answer = intgrads.attribute(bundle, "an unexpectedly tender film, though the ending drags", n_steps=4, idgi=True)
    answer["warnings"] = answer["warnings"] or answer_warnings(
        delta=0.5, f_input=1.0, f_baseline=0.2, step_maxima=[1, 1], alphas=[0.2, 0.8], n_steps=4, finite=True,
        full_length=5, max_tokens=9, method="gausslegendre")
    page = render_answer(answer, tmp_path / "warned.html").path
    shot = tmp_path / "shot.png"
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                             "--v=0", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                             "--window-size=1200,900", page.as_uri()],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    pixels = (imread(shot)[..., :3] * 255).round().astype(int)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    band = np.array([int(WARNING_FILL[i:i + 2], 16) for i in (1, 3, 5)])
    band_rows = np.where((np.abs(pixels - band).sum(axis=2) <= 6).sum(axis=1) > 600)[0]
    assert band_rows.size > 10 and band_rows.min() < 200, "no warning band near the top of the page"
