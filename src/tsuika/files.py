"""Small file helpers shared by run folders and checkpoints (no tsuika imports: any layer may
use them)."""

from __future__ import annotations

import os
from pathlib import Path


def _read_umask() -> int:
    # `os.umask` can only be read by setting it, so set it back at once. Doing this once at
    # import keeps the window in which another thread could create a file with umask 0 tiny.
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK = _read_umask()


def match_umask(path: Path) -> None:
    """Give `path` the mode an ordinary new file gets (0666 minus the umask).

    safetensors' `save_file` creates its file with mode 0600, so without this the weights of
    a run shared with a group or copied to a web folder would be the one unreadable file.
    """
    os.chmod(path, 0o666 & ~_UMASK)
