"""`mynaemu serve` connects its links to vpcd before it loads the cards (when pcscd runs already).

pcscd finds a card only on its presence poll, every 400 ms; connecting first lets that poll find
the link while the card stack loads. The promise that must survive: a card that does not load is
never shown. pcscd's poll takes the early connection and asks for the ATR; the serve fails and
closes the connection unanswered, and no PC/SC client ever sees the reader PRESENT.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_real_clients import SELECT_JPKI, serve_env

from reader_bridge.pcscd import find_vpcd_readers, reader_name, wait_for_card

pytestmark = pytest.mark.pcsc


class PresenceWatch:
    """Records every state PC/SC reports for ``reader`` until stopped (a status-change loop)."""

    def __init__(self, reader: str) -> None:
        self.reader = reader
        self.states: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from smartcard import scard as sc

        hresult, ctx = sc.SCardEstablishContext(sc.SCARD_SCOPE_USER)
        assert hresult == sc.SCARD_S_SUCCESS
        state = sc.SCARD_STATE_UNAWARE
        try:
            while not self.stop.is_set():
                hresult, result = sc.SCardGetStatusChange(ctx, 100, [(self.reader, state)])
                if hresult == sc.SCARD_S_SUCCESS:
                    state = result[0][1] & ~sc.SCARD_STATE_CHANGED
                    self.states.append(state)
        finally:
            sc.SCardReleaseContext(ctx)

    def __enter__(self) -> PresenceWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)

    @property
    def ever_present(self) -> bool:
        from smartcard import scard as sc

        return any(s & sc.SCARD_STATE_PRESENT for s in self.states)


def test_a_card_that_fails_to_load_is_never_shown(pcscd, card_dir: Path, tmp_path: Path, _data_dir: Path) -> None:
    reader = reader_name(0, find_vpcd_readers())
    wait_for_card(reader, present=False, timeout=10)
    # Another process keeps the card directory flocked: the load waits out its claim window
    # (1 s, more than two of pcscd's polls) and is refused. pcscd takes the early connection
    # meanwhile and waits for an ATR that never comes.
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(card_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with PresenceWatch(reader) as watch:
            res = subprocess.run([sys.executable, "-m", "mynaemu", "-v", "serve", str(card_dir), "--no-start-pcscd"],
                                 capture_output=True, text=True, timeout=60, env=serve_env(_data_dir), cwd=tmp_path)
            wait_for_card(reader, present=False, timeout=10)
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 2, res
    assert "connected to vpcd early" in res.stderr  # the link did connect before the load
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "in use by another process" in errors[0] and "Traceback" not in res.stderr
    assert watch.states and not watch.ever_present  # PC/SC never showed a card


def test_an_early_link_serves_the_card(pcscd, card_dir: Path, tmp_path: Path, _data_dir: Path) -> None:
    from smartcard.System import readers
    from test_real_clients import Lines, stop

    reader = reader_name(0, find_vpcd_readers())
    wait_for_card(reader, present=False, timeout=10)
    proc = subprocess.Popen([sys.executable, "-m", "mynaemu", "-v", "serve", str(card_dir), "--no-start-pcscd"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=serve_env(_data_dir),
                            cwd=tmp_path)  # fmt: skip
    assert proc.stdout is not None
    lines = Lines(proc.stdout)
    lines.expect(r"connected to vpcd early")
    lines.expect(r"^Serving card \S+ in reader")
    assert wait_for_card(reader, present=True, timeout=10)
    conn = next(r for r in readers() if str(r) == reader).createConnection()
    conn.connect()
    data, sw1, sw2 = conn.transmit(list(SELECT_JPKI))
    assert (data, sw1, sw2) == ([], 0x90, 0x00)
    conn.disconnect()
    stop(proc, lines)
    wait_for_card(reader, present=False, timeout=10)
