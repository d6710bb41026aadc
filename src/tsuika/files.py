"""Every file tsuika writes goes through here, so that three promises hold in one place:

- **Never half a file.** A file is written to a fresh temporary name beside its target and
  renamed onto it when complete; a folder (a saved model, a checkpoint, an export) is filled
  in a fresh hidden folder and renamed. A crash or Ctrl-C leaves the old file or nothing.
- **Never through a link.** A symbolic link planted in a run folder (`report.html.tmp` →
  a file elsewhere) must not make tsuika write outside the folder it was asked to write in.
  Temporary names are created exclusively (`O_EXCL`: an existing name or link fails), a
  target that is a link is refused, appends open with `O_NOFOLLOW`, and `--resume` refuses a
  run folder that holds any link.
- **Ordinary permissions.** New files get 0666 minus the umask, as any program's do, even
  where the writer (`mkstemp`, safetensors) makes them private.

A test (tests/test_safe_writes.py) reads the source and fails when a file is written anywhere
else, except inside the blocks `atomic_file` and `fresh_folder` hand out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from tsuika.errors import TsuikaError


def user_cache_folder() -> Path:
    """tsuika's own cache folder for this user (`TSUIKA_CACHE`, else ~/.cache/tsuika): converted
    bundled models and the activation store (`tsuika.feed.store`)."""
    return Path(os.environ.get("TSUIKA_CACHE") or Path.home() / ".cache" / "tsuika")


def _read_umask() -> int:
    # `os.umask` can only be read by setting it, so set it back at once. Doing this once at
    # import keeps the window in which another thread could create a file with umask 0 tiny.
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK = _read_umask()


def match_umask(path: Path) -> None:
    """Give `path` the mode an ordinary new file (or folder) gets: 0666 (0777) minus the umask.

    safetensors' `save_file` and `mkstemp` create files with mode 0600, so without this the
    weights of a run shared with a group or copied to a web folder would be unreadable.
    """
    full = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, full & ~_UMASK)


def refuse_link(path: Path) -> None:
    """A target that is a symbolic link (dangling or not) is not written through."""
    if Path(path).is_symlink():
        raise TsuikaError(
            f"{path} is a symbolic link; tsuika does not write through links "
            "(remove the link or choose another path)"
        )


def refuse_links_in(folder: Path) -> None:
    """`folder` (a run folder to write into again) holds no symbolic link at any depth: a
    link in place of `metrics.jsonl` would have the run append to a file elsewhere."""
    for root, dirs, names in os.walk(folder):
        for name in (*dirs, *names):
            refuse_link(Path(root, name))


def _cannot_write(path: Path, err: OSError) -> TsuikaError:
    return TsuikaError(f"cannot write {path} ({err.strerror or err}); choose another place")


@contextlib.contextmanager
def atomic_file(path: Path, replace: bool = True) -> Iterator[Path]:
    """A fresh, empty temporary file beside `path` for a writer to fill (safetensors, PIL,
    a library's `save`); when the block ends it is renamed onto `path`, or removed if the
    block raised. `replace=False`: an existing `path` is an error, never replaced."""
    path = Path(path)
    refuse_link(path)
    if not replace and path.exists():
        raise TsuikaError(f"{path} already exists; tsuika never overwrites it, choose another")
    try:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _cannot_write(path, err) from None
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        match_umask(tmp)  # before the rename, so the final name never has mode 0600
        _move_into_place(tmp, path, replace)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _move_into_place(tmp: Path, path: Path, replace: bool) -> None:
    refuse_link(path)  # planted while the file was written
    if replace:
        os.replace(tmp, path)  # replaces a name, never writes through one
        return
    try:
        os.link(tmp, path)  # fails if `path` exists: no window in which it could be replaced
    except FileExistsError:
        raise TsuikaError(f"{path} already exists; tsuika never overwrites it") from None
    except OSError:  # a file system without hard links
        if path.exists() or path.is_symlink():
            raise TsuikaError(f"{path} already exists; tsuika never overwrites it") from None
        os.replace(tmp, path)
    else:
        tmp.unlink()


def write_atomic(path: Path, text: str, replace: bool = True) -> None:
    """`text` as UTF-8 in `path`, all or nothing (see `atomic_file`)."""
    with atomic_file(path, replace) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def append_lines(path: Path, lines: Iterable[str]) -> None:
    """Append lines to `path` (created if missing), durably; a link there is refused."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        handle = os.open(path, flags, 0o666)
    except OSError as err:
        if Path(path).is_symlink():
            refuse_link(path)
        raise _cannot_write(Path(path), err) from None
    with open(handle, "a", encoding="utf-8") as stream:
        stream.writelines(lines)
        stream.flush()
        os.fsync(stream.fileno())


def open_new(path: Path) -> BinaryIO:
    """A new binary file opened for writing; an existing file or link there is an error."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        handle = os.open(path, flags, 0o666)
    except FileExistsError:
        raise TsuikaError(f"{path} already exists; remove it or choose another folder") from None
    except OSError as err:
        raise _cannot_write(Path(path), err) from None
    return open(handle, "wb")


@contextlib.contextmanager
def fresh_folder(path: Path, replace: bool = False) -> Iterator[Path]:
    """A new, empty hidden folder beside `path` for writers to fill (`save_pretrained`, a
    method's saved files); renamed to `path` when the block ends, removed if it raised.
    Nothing in it can be a planted link: it did not exist before. `replace=True` lets it
    take the place of an existing folder of the same name (a resumed run's checkpoint)."""
    path = Path(path)
    refuse_link(path)
    if not replace and path.exists():
        raise TsuikaError(f"{path} already exists; tsuika never overwrites it, choose another")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        )
    except OSError as err:
        raise _cannot_write(path, err) from None
    try:
        match_umask(staging)  # mkdtemp makes it private; the folder is for the user
        yield staging
        refuse_link(path)
        if replace and path.is_dir():
            shutil.rmtree(path)
        try:
            staging.rename(path)
        except OSError as err:  # another process made `path` meanwhile (two exports at once)
            if path.exists():
                raise TsuikaError(f"{path} already exists; tsuika never overwrites it") from None
            raise _cannot_write(path, err) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
