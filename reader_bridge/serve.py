"""Serve cards as PC/SC readers until stopped: what ``mynaemu serve`` runs.

Nobody else becomes the card. vpcd serves whichever process connected to its port first and
accepts the next one in its queue whenever the link drops, so:

* A pcscd that serve starts runs in a private network namespace; the bridge's links are made
  inside it (:mod:`reader_bridge.netns`) and no other process can reach vpcd. A running pcscd
  in a private namespace (another mynaemu harness) is joined the same way.
* Where that cannot be (a system pcscd runs in our namespace, or no privileges), serve says so
  in one line at start and names the mitigation (an owner-match firewall rule).
* Always: a reader that already holds a card is refused; while serving, a watcher exits with
  :class:`SlotLost` when a link cannot get its slot back within ``lost_after`` seconds or PC/SC
  shows a card in one of our readers while vpcd does not talk to our link.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from . import CardLike
from .pcscd import PcscdHarness, find_vpcd_readers, pcsc_context, pcscd_running, reader_name, wait_for_card
from .trace import ApduTrace
from .vpcd import VPCD_PORT, VirtualReaderSet, connect_to_vpcd

__all__ = [
    "ServeError",
    "SlotLost",
    "SlotOccupied",
    "firewall_rule",
    "reader_name",
    "refuse_same_card_twice",
    "serve",
]

log = logging.getLogger(__name__)


class ServeError(RuntimeError):
    """Serving cannot start or cannot safely go on; the message is one line for the user."""


class SlotOccupied(ServeError):
    """The reader already holds a card that is not ours."""


class SlotLost(ServeError):
    """A slot was lost while serving (link gone, or someone else answers in our reader)."""


def firewall_rule(uid: int | None = None) -> str:
    """The owner-match rule that lets only ``uid`` (default: ours) connect to vpcd's ports."""
    uid = os.geteuid() if uid is None else uid
    return (f"iptables -A OUTPUT -o lo -p tcp --dport {VPCD_PORT}:{VPCD_PORT + 1} "
            f"-m owner ! --uid-owner {uid} -j REJECT --reject-with tcp-reset")


def refuse_same_card_twice(dirs: Sequence[str | Path]) -> None:
    """ValueError when two of ``dirs`` are one directory (also through a symlink or ``/./``).

    Identity is (st_dev, st_ino): names can differ, the directory cannot. Directories that do
    not exist are left for the card loader to report.
    """
    seen: dict[tuple[int, int], str | Path] = {}
    for d in dirs:
        try:
            st = os.stat(d)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise ValueError(f"{d} is the same card directory as {seen[key]}; a card can be served in one slot only")
        seen[key] = d


def _say(text: str) -> None:
    print(f"mynaemu serve: {text}", file=sys.stderr, flush=True)


def _pyscard_available() -> bool:
    try:
        import smartcard.scard  # noqa: F401
    except ImportError:
        return False
    return True


def _present(names: Sequence[str]) -> dict[str, bool]:
    """Reader → whether PC/SC shows a card in it now."""
    from smartcard import scard as sc

    with pcsc_context() as ctx:
        hresult, result = sc.SCardGetStatusChange(ctx, 0, [(n, sc.SCARD_STATE_UNAWARE) for n in names])
    if hresult != sc.SCARD_S_SUCCESS:
        return {}
    return {name: bool(event & sc.SCARD_STATE_PRESENT) for name, event, _atr in result}


def _reader_names(slots: Sequence[int], pcsc: bool) -> list[str]:
    if not pcsc:
        return [reader_name(slot) for slot in slots]
    listed = find_vpcd_readers()
    names = [reader_name(slot, listed) for slot in slots]
    missing = [name for name in names if name not in listed]
    if missing:
        raise ValueError(f"pcscd has no reader {', '.join(missing)} (vpcd readers: {', '.join(listed)}); slots from 2 "
                         f"on need `mynaemu readers setup N` (root) and a pcscd restarted after it")
    return names


def _wait_ready(readers: VirtualReaderSet, names: dict[int, str], timeout: float, pcsc: bool) -> None:
    """Return once every inserted card shows PRESENT in PC/SC, answered by our own link.

    Without pyscard, falls back to "the link is connected to vpcd".
    """
    for slot, link in sorted(readers.links.items()):
        if not pcsc:
            if not link.connected.wait(timeout):
                raise TimeoutError(f"slot {slot}: no connection to vpcd within {timeout} s")
            continue
        wait_for_card(names[slot], present=True, timeout=timeout)
        # PC/SC shows PRESENT only after a get ATR was answered; if it was not answered by
        # us, another process got the slot between our check and our connect.
        if link.last_frame == 0.0:
            raise SlotOccupied(f"reader {names[slot]!r} shows a card that vpcd did not get from us; not serving into it")


class _SlotGuard(threading.Thread):
    """Watches our readers while serving; on a lost or foreign slot, records why and sets ``stop``."""

    def __init__(self, readers: VirtualReaderSet, names: dict[int, str], stop: threading.Event, *,
                 lost_after: float, foreign_after: float, pcsc: bool) -> None:
        super().__init__(name="serve-guard", daemon=True)
        self.readers = readers
        self.names = names
        self.stop = stop
        self.lost_after = lost_after
        self.foreign_after = foreign_after
        self.pcsc = pcsc
        self.failure: str | None = None
        self._ctx: Any = None
        self._states: dict[str, int] = {}

    def run(self) -> None:
        absent_since: dict[int, float] = {}
        try:
            while not self.stop.is_set():
                present = self._wait_for_change() if self.pcsc else {}
                now = time.monotonic()
                links = self.readers.links
                for slot, name in self.names.items():
                    link = links.get(slot)
                    if link is None:  # removed on demand: nobody may show up in it either
                        silent = now - absent_since.setdefault(slot, now)
                        state = "removed"
                    else:
                        absent_since.pop(slot, None)
                        # A slow or muted card is busy answering, not silent.
                        silent = 0.0 if link.busy else now - max(link.last_frame, link.started_at)
                        state = "connected, but vpcd does not talk to it" if link.connected.is_set() else "not connected"
                    if present.get(name) and silent >= self.foreign_after:
                        self._fail(f"reader {name!r} shows a card that is not ours (our link: {state}, silent "
                                   f"{silent:.1f} s); another process is answering as the card in slot {slot}")
                    elif link is not None and silent >= self.lost_after:
                        self._fail(f"slot {slot} lost: our link to vpcd is {state} and vpcd has not spoken to it for "
                                   f"{silent:.1f} s; stopping rather than waiting while another process may answer "
                                   f"in {name!r}")
                    if self.failure:
                        return
        finally:
            self._release()

    def _fail(self, why: str) -> None:
        self.failure = why
        log.critical("%s", why)  # at once; serve raises SlotLost with it once the cards are out
        self.stop.set()

    def _wait_for_change(self) -> dict[str, bool]:
        """Block up to 0.5 s in SCardGetStatusChange; reader → PRESENT (empty when PC/SC is gone)."""
        from smartcard import scard as sc

        if self._ctx is None:
            hresult, ctx = sc.SCardEstablishContext(sc.SCARD_SCOPE_USER)
            if hresult != sc.SCARD_S_SUCCESS:
                self.stop.wait(0.5)  # pcscd is gone; the link checks still run
                return {}
            self._ctx = ctx
        names = list(self.names.values())
        query = [(n, self._states.get(n, sc.SCARD_STATE_UNAWARE)) for n in names]
        hresult, result = sc.SCardGetStatusChange(self._ctx, 500, query)
        if hresult == sc.SCARD_E_TIMEOUT:
            return {n: bool(s & sc.SCARD_STATE_PRESENT) for n, s in self._states.items()}
        if hresult != sc.SCARD_S_SUCCESS:
            self._release()
            self.stop.wait(0.5)
            return {}
        self._states = {name: event & ~sc.SCARD_STATE_CHANGED for name, event, _atr in result}
        return {n: bool(s & sc.SCARD_STATE_PRESENT) for n, s in self._states.items()}

    def _release(self) -> None:
        if self._ctx is not None:
            from smartcard import scard as sc

            sc.SCardReleaseContext(self._ctx)
            self._ctx = None
            self._states = {}


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
    say: Callable[[str], object] = _say,
    lost_after: float = 5.0,
    foreign_after: float = 1.5,
    on_serving: Callable[[VirtualReaderSet], Callable[[], object] | None] | None = None,
    load: Callable[[], Mapping[int, CardLike]] | None = None,
) -> None:
    """Expose ``cards`` (slot → card) through vpcd until ``stop_event``, SIGINT or SIGTERM.

    Starts pcscd (in a private network namespace) when none runs and ``start_pcscd`` allows
    it, refuses readers that already hold a card (:class:`SlotOccupied`), inserts the cards,
    waits until each reader shows our card, calls ``on_ready(reader names in slot order)``,
    then blocks; ``say`` gets the one-line warning when vpcd is reachable by other local
    processes. On the way out it removes the cards and stops only the pcscd it started.
    Raises :class:`SlotLost` when a slot was lost while serving (see the module docstring),
    TimeoutError when a card does not show up within ``ready_timeout`` seconds, ValueError
    for a slot without a vpcd reader (Debian's vpcd has slots 0 and 1; ``mynaemu readers setup`` adds more) or a card given twice,
    PcscError when no pcscd answers (``start_pcscd=False`` and none running).
    ``control(readers, stop)``, when given, runs in a daemon thread once the cards are ready:
    it may remove and insert cards on demand and set ``stop``. ``on_serving(readers)``, when
    given, is called once the cards are ready, before ``on_ready`` (e.g. to open control
    channels); what it returns, if callable, is called before the cards are removed at the end.

    With ``load``, ``cards`` names the slots only (its values are ignored) and ``load()`` makes
    the cards. When pcscd runs already, the links connect to vpcd *before* it runs (once the
    slots are checked free), so pcscd's presence poll, every 400 ms, can find them while the
    cards load; pcscd's ATR request waits on the connection until the card answers. If ``load``
    raises, the connections close unanswered (pcscd never sees a card) and the exception
    propagates. When pcscd must be started, ``load`` runs first.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    harness = PcscdHarness(log_path=pcscd_log)
    trace = ApduTrace(trace_path) if trace_path is not None else None
    restore = _install_signal_handlers(stop)
    pcsc = _pyscard_available()
    guard: _SlotGuard | None = None
    try:
        running = pcscd_running(harness.socket_path)
        if load is not None and not running:
            # No pcscd to overlap with (starting one is the slow part), and a card that does not
            # load is refused before any pcscd is started.
            cards, load = load(), None
        if start_pcscd or running:
            harness.start()
        if harness.exposed is not None:
            say(f"warning: {harness.exposed}, so any local process can connect to vpcd on 127.0.0.1:"
                f"{VPCD_PORT}-{VPCD_PORT + 1} and become the card when our link drops; mitigation: "
                f"{firewall_rule()} (README: 'Who can be the card')")
        slots = sorted(cards)
        names = dict(zip(slots, _reader_names(slots, pcsc), strict=True))
        if pcsc:
            present = _present(list(names.values()))
            for slot, name in names.items():
                if present.get(name):
                    raise SlotOccupied(f"reader {name!r} already holds a card (another 'mynaemu serve' or vpcd "
                                       f"client has slot {slot}); not serving into it")
        early: dict[int, socket.socket] = {}
        if load is not None:
            try:
                for slot in slots:
                    with contextlib.suppress(OSError):  # not reachable now: the link retries as usual
                        early[slot] = connect_to_vpcd(host, VPCD_PORT + slot, 2.0, harness.netns)
                        log.info("slot %d: connected to vpcd early, loading the card", slot)
                cards = load()
            except BaseException:
                for sock in early.values():
                    sock.close()
                raise
        with VirtualReaderSet(host=host, trace=trace, netns=harness.netns) as readers:
            try:
                for slot in slots:
                    readers.insert(slot, cards[slot], connected_socket=early.pop(slot, None))
            finally:
                for sock in early.values():
                    sock.close()
            _wait_ready(readers, names, ready_timeout, pcsc)
            log.info("serving %s", ", ".join(names.values()))
            guard = _SlotGuard(readers, names, stop, lost_after=lost_after, foreign_after=foreign_after, pcsc=pcsc)
            guard.start()
            cleanup = on_serving(readers) if on_serving is not None else None
            try:
                if on_ready is not None:
                    on_ready([names[slot] for slot in slots])
                if control is not None:
                    threading.Thread(target=control, args=(readers, stop), name="serve-control", daemon=True).start()
                stop.wait()
                guard.join(2.0)
            finally:
                if callable(cleanup):
                    cleanup()
    finally:
        restore()
        if trace is not None:
            trace.close()
        harness.close()
    if guard is not None and guard.failure is not None:
        raise SlotLost(guard.failure)
