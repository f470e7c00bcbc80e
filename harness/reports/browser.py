"""A page as a person sees it: a screenshot taken by headless Chromium (the tests check the page paints what it says;
``docs/`` keeps screenshots regenerated from a run with the same call). Runs a program; imports nothing of the harness.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


class BrowserError(RuntimeError):
    """No Chromium here, or it failed to paint the page; the message says which and how."""


def chromium() -> str | None:
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def screenshot(page: Path, out: Path, width: int = 1200, height: int = 900, fragment: str = "",
               timeout_s: float = 90.0) -> Path:
    """Paint ``page`` (a local HTML file, scrolled to ``#fragment`` if given) into the PNG ``out``, ``width`` × ``height``
    pixels. Everything that reaches the network is switched off: the page must be self-contained."""
    program = chromium()
    if program is None:
        raise BrowserError("no chromium on PATH (apt-get install chromium)")
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="accumgate-chromium-") as profile:
        done = subprocess.run([program, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                               f"--screenshot={out}", url], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0 or not out.is_file():
        raise BrowserError(f"chromium could not paint {url} (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    return out
