"""Headless Chromium for the report's browser test: find it, open a page from disk, return
the DOM after loading and every console message. The flags keep Chromium off the network
(this machine has none) and out of the user's profile."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",  # root in CI containers
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def open_page(page: Path, profile: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """(DOM after load, console messages and uncaught errors) of a file opened in Chromium."""
    binary = chromium()
    assert binary is not None
    url = page.resolve().as_uri()
    base = [binary, *FLAGS, f"--user-data-dir={profile}"]
    done = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    )
    if screenshot is not None:
        subprocess.run(
            [*base, f"--screenshot={screenshot}", "--window-size=1100,1600", url],
            capture_output=True,
            timeout=120,
            check=True,
        )
    console = [
        line
        for line in done.stderr.splitlines()
        if re.search(r"CONSOLE|Uncaught|Failed to load resource", line)
    ]
    return done.stdout, console
