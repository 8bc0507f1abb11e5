"""Files and directories that hold card data: 0600 files, 0700 directories, whatever the umask.

Traces hold whole READ responses (My Number, name, address, face image) and card directories
hold keys and PINs, so what mynaemu creates is private to its user. ``mkdir(mode=)`` and
``open(mode=)`` are masked by the umask, and ``Path.mkdir(parents=True)`` gives the parents the
default mode, so every directory is made one at a time and chmod-ed after it is made.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

FILE_MODE = 0o600
DIR_MODE = 0o700


def data_dir() -> Path:
    """Where mynaemu keeps per-user data: $MYNAEMU_DATA_DIR, else $XDG_DATA_HOME/mynaemu (~/.local/share/mynaemu)."""
    if env := os.environ.get("MYNAEMU_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mynaemu"


def make_private_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing ancestors, each 0700; returns the ones created, top first.

    Directories that exist already are left as they are (they are the user's). Raises
    NotADirectoryError naming the first ancestor that exists but is not a directory.
    """
    missing: list[Path] = []
    probe = Path(os.path.abspath(path))
    while True:
        try:
            st = probe.stat()
        except FileNotFoundError:
            missing.append(probe)
            if probe.parent == probe:
                break
            probe = probe.parent
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(20, "exists and is not a directory", str(probe))
        break
    created: list[Path] = []
    try:
        for directory in reversed(missing):
            directory.mkdir(mode=DIR_MODE)
            created.append(directory)
            directory.chmod(DIR_MODE)
    except BaseException:
        remove_dirs(created)
        raise
    return created


def remove_dirs(created: list[Path]) -> None:
    """Remove directories ``make_private_dirs`` made (deepest first) if they are still empty."""
    for directory in reversed(created):
        try:
            directory.rmdir()
        except OSError:
            return


def open_private_append(path: Path | str) -> IO[str]:
    """Open ``path`` for appending text, created 0600 (an existing file is made 0600 too).

    Refuses anything but a regular file (a FIFO would block, a device is not a log).
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, FILE_MODE)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(21, "not a regular file", str(path))
        os.set_blocking(fd, True)
        if stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        return open(fd, "a", encoding="utf-8", closefd=True)
    except BaseException:
        os.close(fd)
        raise
