"""Notes and warnings for the person running tsuika, printed once (by the main process
only), on stderr so that what a command prints on stdout stays machine-readable."""

from __future__ import annotations

import os

from rich.console import Console
from rich.markup import escape


def warn(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        Console(stderr=True, soft_wrap=True).print(f"[yellow]warning:[/yellow] {escape(message)}")


def say(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        Console(stderr=True, soft_wrap=True).print(escape(message))
