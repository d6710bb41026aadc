"""Warnings for the person running tsuika, printed once (by the main process only)."""

from __future__ import annotations

import os

from rich.console import Console
from rich.markup import escape


def warn(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        Console(stderr=True, soft_wrap=True).print(f"[yellow]warning:[/yellow] {escape(message)}")
