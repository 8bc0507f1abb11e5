"""Serve cards as PC/SC readers until stopped: what ``mynaemu serve`` runs."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

from . import CardLike
from .pcscd import PcscdHarness, find_vpcd_readers, reader_name, wait_for_card
from .trace import ApduTrace
from .vpcd import VirtualReaderSet

__all__ = ["reader_name", "serve"]

log = logging.getLogger(__name__)


def _pyscard_available() -> bool:
    try:
        import smartcard.scard  # noqa: F401
    except ImportError:
        return False
    return True


def _wait_ready(readers: VirtualReaderSet, timeout: float) -> list[str]:
    """Reader names once every inserted card shows PRESENT in PC/SC.

    Without pyscard, falls back to "the link is connected to vpcd".
    """
    links = readers.links
    if not _pyscard_available():
        for slot, link in sorted(links.items()):
            if not link.connected.wait(timeout):
                raise TimeoutError(f"slot {slot}: no connection to vpcd within {timeout} s")
        return [reader_name(slot) for slot in sorted(links)]
    listed = find_vpcd_readers()
    names = [reader_name(slot, listed) for slot in sorted(links)]
    missing = [name for name in names if name not in listed]
    if missing:
        raise ValueError(f"pcscd has no reader {', '.join(missing)} (vpcd readers: {', '.join(listed)})")
    for name in names:
        wait_for_card(name, present=True, timeout=timeout)
    return names


def _install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """Route SIGINT/SIGTERM to ``stop`` (main thread only); returns the undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def serve(
    cards: Mapping[int, CardLike],
    *,
    trace_path: str | Path | None = None,
    start_pcscd: bool = True,
    host: str = "127.0.0.1",
    on_ready: Callable[[list[str]], object] | None = None,
    stop_event: threading.Event | None = None,
    ready_timeout: float = 10.0,
    pcscd_log: str | Path | None = None,
    control: Callable[[VirtualReaderSet, threading.Event], object] | None = None,
) -> None:
    """Expose ``cards`` (slot → card) through vpcd until ``stop_event``, SIGINT or SIGTERM.

    Starts pcscd when none runs and ``start_pcscd`` allows it, inserts the cards, waits until
    each reader shows a card, calls ``on_ready(reader names in slot order)``, then blocks.
    On the way out it removes the cards and stops only the pcscd it started. Raises
    TimeoutError when a card does not show up within ``ready_timeout`` seconds, ValueError
    for a slot without a vpcd reader (Debian's vpcd has slots 0 and 1), PcscError when no
    pcscd answers (``start_pcscd=False`` and none running). ``control(readers, stop)``, when
    given, runs in a daemon thread once the cards are ready: it may remove and insert cards on
    demand and set ``stop``.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    harness = PcscdHarness(log_path=pcscd_log) if start_pcscd else None
    trace = ApduTrace(trace_path) if trace_path is not None else None
    restore = _install_signal_handlers(stop)
    try:
        if harness is not None:
            harness.start()
        with VirtualReaderSet(host=host, trace=trace) as readers:
            for slot, card in sorted(cards.items()):
                readers.insert(slot, card)
            names = _wait_ready(readers, ready_timeout)
            log.info("serving %s", ", ".join(names))
            if on_ready is not None:
                on_ready(names)
            if control is not None:
                threading.Thread(target=control, args=(readers, stop), name="serve-control", daemon=True).start()
            stop.wait()
    finally:
        restore()
        if trace is not None:
            trace.close()
        if harness is not None:
            harness.stop()
