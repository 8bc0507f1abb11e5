"""Opt-in APDU trace as JSON lines, with secrets masked.

One line per exchange::

    {"ts": "2025-01-01T00:00:00.000000+00:00", "slot": 0, "ap": "jpki",
     "cmd": "0020008004********", "rsp": "9000", "sw": "9000", "us": 41}

and one per link/power event (``{"ts", "slot", "event"}``). The command data of VERIFY
(INS 20/21), CHANGE REFERENCE DATA (INS 24), RESET RETRY COUNTER (INS 2C) and JICSAP CHANGE
KEY (INS 32) in any class, malformed lengths included, is replaced by ``**`` per byte; the
header, Lc and Le stay (the one rule of ``mynaemu.redact``). Tracing costs nothing when off: links hold ``trace=None``.
A trace file holds whole READ responses (My Number, name, address, face image), so it is created
0600 whatever the umask, and an existing one is made 0600 before anything is appended.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from mynaemu.private_files import open_private_append
from mynaemu.redact import carries_secret, mask_command

log = logging.getLogger(__name__)

# One masking rule for the whole project: the card's (mynaemu.redact).
is_secret_command = carries_secret
mask_apdu = mask_command


class ApduTrace:
    """Thread-safe JSON-lines writer shared by the links of one process."""

    def __init__(self, target: str | Path | IO[str]) -> None:
        """Open ``target`` (a path, appended to, 0600) or use a text stream as is.

        Raises OSError for a path that cannot be a trace file (a directory, a missing folder).
        """
        self._owns = isinstance(target, str | os.PathLike)
        if isinstance(target, str | os.PathLike):
            self._out: IO[str] = open_private_append(target)
        else:
            self._out = target
        self._lock = threading.Lock()
        self._failed = False

    def _write(self, record: dict[str, object]) -> None:
        """Append one line; a failing trace is logged once and never breaks the link."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._failed or self._out.closed:
                return
            try:
                self._out.write(line)
                self._out.flush()
            except (OSError, ValueError):
                self._failed = True
                log.exception("APDU trace write failed; tracing stops")

    @staticmethod
    def _now() -> str:
        return datetime.now(UTC).isoformat(timespec="microseconds")

    def exchange(self, slot: int, cmd: bytes, rsp: bytes, duration_ns: int, ap: str | None) -> None:
        """Record one command/response pair."""
        self._write(
            {
                "ts": self._now(),
                "slot": slot,
                "ap": ap,
                "cmd": mask_apdu(cmd),
                "rsp": rsp.hex().upper(),
                "sw": rsp[-2:].hex().upper(),
                "us": duration_ns // 1000,
            }
        )

    def event(self, slot: int, event: str) -> None:
        """Record a link or power event (connect, disconnect, power_on, reset, power_off)."""
        self._write({"ts": self._now(), "slot": slot, "event": event})

    def close(self) -> None:
        """Close the file if this trace opened it."""
        with self._lock:
            if self._owns and not self._out.closed:
                self._out.close()

    def __enter__(self) -> ApduTrace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
