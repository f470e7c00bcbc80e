"""Pictures of the page's parts for people who will not open it (``docs/``, a CI summary): each part rendered alone
and painted by headless Chromium (``browser.screenshot``), the white below it trimmed. ``accumgate report
--screenshots DIR`` writes them from the runs it merged, so the pictures in ``docs/`` are regenerated from a run."""
from __future__ import annotations

import tempfile
from pathlib import Path

from .browser import screenshot
from .merge import Merged
from .render import render_html

# file name -> (the part of the page, unfold the grid's groups, window height: the most a picture shows)
PICTURES = {"properties.png": ("properties", False, 1400), "margins.png": ("margins", False, 1600),
            "grid.png": ("grid", True, 1400)}
WIDTH = 1400


def trim_white_bottom(path: Path, margin: int = 16) -> None:
    """Cut the blank rows under the content (a part shorter than the window)."""
    import matplotlib.image
    import numpy as np

    pixels = matplotlib.image.imread(path)
    rgb = pixels[..., :3]
    inked = np.nonzero((rgb < 0.98).any(axis=(1, 2)))[0]
    if len(inked):
        bottom = min(len(rgb), int(inked[-1]) + margin)
        matplotlib.image.imsave(path, pixels[:bottom])


def write_screenshots(merged: Merged, out: Path) -> list[Path]:
    written = []
    with tempfile.TemporaryDirectory(prefix="accumgate-pages-") as pages:
        for name, (section, unfold, height) in PICTURES.items():
            page = Path(pages) / f"{section}.html"
            page.write_text(render_html(merged, sections=(section,), unfold=unfold), encoding="utf-8")
            shot = screenshot(page, out / name, width=WIDTH, height=height)
            trim_white_bottom(shot)
            written.append(shot)
    return written
