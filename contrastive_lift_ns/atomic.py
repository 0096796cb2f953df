"""Atomic output: files and folders appear complete under their final name, or not at all.

A run that fails or is killed at any moment must not leave a half-written file or folder that a later reader
(nerfstudio, cl-eval, a rerun) would take for finished. So everything is written under a temporary name in the
target's own folder (the rename then stays on one file system, where it is atomic) and renamed into place only when
it is complete:

- ``atomic_file`` is the primitive for one file; ``atomic_write_json``, ``atomic_save_image`` and ``atomic_copy``
  use it.
- ``atomic_output_dir`` does the same for a whole folder. It also cleans up when SIGTERM or SIGINT end the run,
  and removes the temporary folders that runs killed outright (SIGKILL) left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from PIL import Image


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` for the block to write; renames it to ``path`` if the block succeeds
    and removes it if not.

    The temporary name keeps the suffix, for writers that choose the format by it (PIL). The file gets the
    permissions of the file it replaces, or for a new file the usual ones (0666 less the umask), not the private
    0600 of a temporary file.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """Writes ``data`` as indented JSON."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def atomic_save_image(image: "Image.Image", path: Path, **options: Any) -> None:
    """Saves a PIL image in the format of the path's suffix; ``options`` go to ``Image.save``."""
    with atomic_file(path) as tmp:
        image.save(tmp, **options)


def atomic_copy(source: Path, target: Path) -> None:
    """Copies a file with its timestamps."""
    with atomic_file(target) as tmp:
        shutil.copy2(source, tmp)


@contextmanager
def atomic_output_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder beside ``path`` and renames it to ``path`` only if the block succeeds.

    A run that fails, or that SIGTERM or SIGINT end, leaves nothing at ``path`` (or leaves the old content
    untouched) and no temporary folder; the process then ends as the signal would have ended it. The temporary
    folder is named after the process (``.<name>.tmp-<pid>-…``), so that a later run for the same ``path`` can
    remove those of killed processes.

    Raises FileExistsError if ``path`` is a file, or a non-empty folder without ``overwrite``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    with _signals_unwind():
        tmp = _temporary_dir(path, "tmp")
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if path.exists():
        old = _temporary_dir(path, "old")
        os.replace(path, old / "x")
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def _temporary_dir(path: Path, kind: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}-{os.getpid()}-", dir=path.parent))
    os.chmod(folder, 0o777 & ~_umask())  # mkdtemp makes private (0700) folders
    return folder


def _remove_stale(path: Path) -> None:
    """Removes the temporary folders of ``path`` whose process no longer runs (killed before it could clean up)."""
    name = re.compile(re.escape(f".{path.name}.") + r"(?:tmp|old)-(\d+)-\w+")
    for entry in path.parent.iterdir():
        match = name.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _running(int(match[1])):
            shutil.rmtree(entry, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True


class _Interrupted(BaseException):
    """SIGTERM or SIGINT inside ``atomic_output_dir``: unwinds the block so that it removes its temporary folder."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _signals_unwind() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGINT raise `_Interrupted`; after the block has cleaned up, the process ends
    as the signal would have ended it (killed by it, or KeyboardInterrupt).

    Only signals whose handling would end the process are taken over (a signal that is ignored or has a handler of
    its own keeps it), and only in the main thread, the one where Python runs signal handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    taken = [signum for signum, handler in previous.items() if handler in (signal.SIG_DFL, signal.default_int_handler)]

    def restore() -> None:
        for signum in taken:
            signal.signal(signum, previous[signum])

    def unwind(signum: int, frame: Any) -> None:
        restore()  # a second signal during the clean-up ends the process at once
        raise _Interrupted(signum)

    for signum in taken:
        signal.signal(signum, unwind)
    try:
        yield
    except _Interrupted as interrupted:
        if interrupted.signum not in taken:  # not ours: an enclosing block's
            raise
        restore()
        if previous[interrupted.signum] is signal.default_int_handler:
            raise KeyboardInterrupt from None
        signal.raise_signal(interrupted.signum)  # the default action: the process ends, killed by the signal
        raise  # reached only if the signal is blocked
    finally:
        restore()
