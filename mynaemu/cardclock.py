"""The card's clock offset: how far the card's time is from the real time (scenario controls).

A trainer expires a card's certificates, or makes them not yet valid, by moving the card's
clock, not by editing the certificates: relying parties (the emulated authority's OCSP and CRL
checks) judge validity at ``Card.now()``. The offset lives in ``controls.json`` in the card
directory (0600, written atomically), so it survives a restart of ``serve``; no file means 0.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .state import StateError, atomic_write, read_json

CONTROLS_FILE = "controls.json"
CONTROLS_FORMAT = "mynaemu-controls"
CONTROLS_VERSION = 1
# A hundred years either way: beyond any certificate's validity, and well inside datetime's range.
MAX_OFFSET_SECONDS = 100 * 366 * 86400


def check_offset(seconds: object) -> int:
    """``seconds`` as a clock offset; ValueError unless an integer within ±100 years."""
    if type(seconds) is not int or not -MAX_OFFSET_SECONDS <= seconds <= MAX_OFFSET_SECONDS:
        raise ValueError(f"the clock offset must be a whole number of seconds within ±{MAX_OFFSET_SECONDS}, "
                         f"not {seconds!r}")
    return seconds


def read_clock_offset(root: Path, card_id: str, *, dir_fd: int | None = None) -> int:
    """The offset in seconds stored in ``root/controls.json`` (0 without the file); StateError if broken."""
    path = root / CONTROLS_FILE
    try:
        os.stat(CONTROLS_FILE if dir_fd is not None else path, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StateError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    doc = read_json(path, CONTROLS_FORMAT, CONTROLS_VERSION, dir_fd=dir_fd)
    if doc.get("card_id") != card_id:
        raise StateError(f"{path}: belongs to card {doc.get('card_id')!r}, not to this card {card_id!r}")
    try:
        return check_offset(doc.get("clock_offset_seconds"))
    except ValueError as exc:
        raise StateError(f"{path}: clock_offset_seconds: {exc}") from None


def write_clock_offset(root: Path, card_id: str, seconds: int, *, dir_fd: int | None = None) -> None:
    """Store the offset durably (atomic replace, 0600); OSError if it cannot be written."""
    doc = {"format": CONTROLS_FORMAT, "version": CONTROLS_VERSION, "card_id": card_id,
           "clock_offset_seconds": check_offset(seconds)}
    atomic_write(root / CONTROLS_FILE, json.dumps(doc, sort_keys=True).encode(), dir_fd=dir_fd)
