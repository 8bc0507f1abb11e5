"""Client side of vsmartcard's vpcd protocol: one socket per virtual reader slot.

vpcd (loaded by pcscd) listens on TCP port 35963 + slot; the card connects and then only
answers. Every message is a 2-byte big-endian length and that many bytes. A 1-byte message is
a control code (00 power off, 01 power on, 02 reset, 04 get ATR; only get ATR is answered);
anything longer is a command APDU, answered with the response APDU.

Choices made here:

* Each answer leaves in one ``sendall`` (length + payload in one buffer), TCP_NODELAY is set
  and TCP_QUICKACK is re-armed before every ``recv`` (Linux): vpcd writes length and payload
  separately, and without quick ACKs every message waits for the delayed-ACK timer (~40 ms).
* A zero-length frame is malformed (the stream can no longer be trusted): the link drops
  the socket and reconnects; the card object and its state stay as they are.
* An unknown 1-byte control code is logged and ignored (vsmartcard's own ``vicc`` does the
  same): vpcd expects no answer to control codes other than get ATR, so framing stays intact.
* A card that raises never takes the link down: an APDU is answered ``6F00``, a failing
  get ATR is answered with the last ATR seen (empty before any, which vpcd reads as "no card").
* Connection failures (no pcscd, pcscd restarting) are retried with bounded exponential
  backoff until the link is closed.
* With ``netns`` (a :class:`reader_bridge.netns.NetNamespace`), the socket is created inside
  that network namespace: the private one of a pcscd that only the bridge can reach.
* ``last_frame`` (monotonic time of the last frame from vpcd) tells a watcher whether vpcd
  still talks to this link: a link that is connected but never spoken to waits in vpcd's
  accept queue while another process holds the slot. ``busy`` is True while a frame is being
  answered (a slow or muted card is busy, not silent).
* A card that raises :class:`NoAnswer` gets no answer sent: the link drops the connection, as
  a reader does with a card that went mute or left (fault injection, ``reader_bridge.steering``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from . import CardLike
    from .netns import NetNamespace
    from .trace import ApduTrace

__all__ = [
    "CTRL_ATR",
    "CTRL_OFF",
    "CTRL_ON",
    "CTRL_RESET",
    "MAX_FRAME",
    "SW_CARD_ERROR",
    "VPCD_PORT",
    "FrameError",
    "NoAnswer",
    "VirtualReaderSet",
    "VpcdLink",
]

log = logging.getLogger(__name__)

VPCD_PORT = 35963
CTRL_OFF, CTRL_ON, CTRL_RESET, CTRL_ATR = 0x00, 0x01, 0x02, 0x04
MAX_FRAME = 0xFFFF
SW_CARD_ERROR = b"\x6f\x00"

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
_RECV_SIZE = MAX_FRAME + 2


class FrameError(Exception):
    """vpcd sent something that is not a valid frame."""


class NoAnswer(Exception):
    """Raised by a card's ``transmit``: send nothing and drop the connection (the card went mute or left)."""


class _FrameReader:
    """Reads length-prefixed frames, however the bytes are split across segments."""

    __slots__ = ("_buf", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def _take(self, n: int) -> bytes:
        buf, sock = self._buf, self._sock
        while len(buf) < n:
            if _QUICKACK is not None:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            chunk = sock.recv(_RECV_SIZE)
            if not chunk:
                raise EOFError("vpcd closed the connection")
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def read_frame(self) -> bytes:
        length = int.from_bytes(self._take(2), "big")
        if length == 0:
            raise FrameError("zero-length frame")
        return self._take(length)


class VpcdLink:
    """Connects one card to one vpcd slot and serves it until :meth:`close`.

    ``run()`` blocks (use :meth:`start` for a daemon thread). ``connected`` is set while a
    TCP connection is up; ``connections`` counts successful connects; ``last_frame`` is the
    ``time.monotonic()`` of the last frame received from vpcd (0.0 before any).
    """

    def __init__(
        self,
        card: CardLike,
        slot: int = 0,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        trace: ApduTrace | None = None,
        backoff_initial: float = 0.05,
        backoff_max: float = 1.0,
        connect_timeout: float = 2.0,
        netns: NetNamespace | None = None,
        connected_socket: socket.socket | None = None,
    ) -> None:
        if slot < 0:
            raise ValueError("slot must be >= 0")
        # A connection to vpcd made before the card was ready (``connect_early``): the first
        # connection the link serves; later reconnects are the link's own.
        self._early_socket = connected_socket
        self.card = card
        self.slot = slot
        self.host = host
        self.port = VPCD_PORT + slot if port is None else port
        self.trace = trace
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.netns = netns
        self.connected = threading.Event()
        self.connections = 0
        self.peer: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._last_atr = b""
        self.started_at = time.monotonic()
        self.last_frame = 0.0
        self.busy = False

    def __repr__(self) -> str:
        return f"VpcdLink(slot={self.slot}, {self.host}:{self.port}, connected={self.connected.is_set()})"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> VpcdLink:
        """Run the link in a daemon thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("link already started")
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self.run, name=f"vpcd-slot{self.slot}", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the link: close the socket (vpcd then reports the card removed) and join."""
        self._stop.set()
        early, self._early_socket = self._early_socket, None
        if early is not None:  # never served: the thread did not start, or has not taken it yet
            early.close()
        self.drop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def drop(self) -> None:
        """Close the current connection; the link reconnects unless it is closing."""
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    @property
    def running(self) -> bool:
        """True while the link's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._stop.is_set()

    def run(self) -> None:
        """Connect, serve, reconnect with backoff; returns when closed."""
        delay = self.backoff_initial
        while not self._stop.is_set():
            sock = self._connect()
            if sock is not None:
                try:
                    served = self._serve(sock)
                finally:
                    self._detach(sock)
                if served:
                    delay = self.backoff_initial
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.backoff_max)

    # -- connection ----------------------------------------------------------------------------

    def _connect(self) -> socket.socket | None:
        sock, self._early_socket = self._early_socket, None
        if sock is None:
            try:
                sock = connect_to_vpcd(self.host, self.port, self.connect_timeout, self.netns)
            except OSError as exc:
                log.debug("slot %d: vpcd at %s:%d not reachable: %s", self.slot, self.host, self.port, exc)
                return None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._stop.is_set():
                sock.close()
                return None
            self._sock = sock
            self.connections += 1
            self.peer = sock.getpeername()[:2]
        self.connected.set()
        log.info("slot %d: connected to vpcd at %s:%d", self.slot, self.host, self.port)
        if self.trace is not None:
            self.trace.event(self.slot, "connect")
        return sock

    def _detach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = None
            self.connected.clear()
        sock.close()
        # A card whose link ends has left the reader: it loses power, and with it the security
        # status (docs/card-interface.md, D6). Otherwise a client that reconnects quickly, before pcscd sees
        # the removal, would find PINs still verified. Durable state is untouched.
        try:
            self.card.power_off()
        except Exception:
            log.exception("slot %d: card raised on power_off", self.slot)
        if self.trace is not None:
            self.trace.event(self.slot, "disconnect")

    def _serve(self, sock: socket.socket) -> bool:
        """Answer vpcd until the connection ends; True if at least one frame was valid."""
        reader = _FrameReader(sock)
        handle = self._handle
        clock = time.monotonic
        served = False
        try:
            while True:
                frame = reader.read_frame()
                self.last_frame = clock()
                self.busy = True
                try:
                    answer = handle(frame)
                finally:
                    self.busy = False
                    self.last_frame = clock()
                served = True
                if answer is not None:
                    sock.sendall(len(answer).to_bytes(2, "big") + answer)
        except NoAnswer as exc:
            log.info("slot %d: the card gives no answer (%s); dropping the connection", self.slot, exc)
        except FrameError as exc:
            log.warning("slot %d: malformed frame from vpcd (%s); reconnecting", self.slot, exc)
        except (EOFError, OSError) as exc:
            if not self._stop.is_set():
                log.info("slot %d: vpcd link lost (%s); reconnecting", self.slot, exc)
        except Exception:  # a bug must not end the thread: start over on a new connection
            log.exception("slot %d: unexpected error; reconnecting", self.slot)
        return served

    # -- messages ------------------------------------------------------------------------------

    def _handle(self, msg: bytes) -> bytes | None:
        if len(msg) == 1:
            return self._control(msg[0])
        trace = self.trace
        if trace is None:
            return self._apdu(msg)
        start = time.perf_counter_ns()
        rsp = self._apdu(msg)
        elapsed = time.perf_counter_ns() - start
        try:
            ap = self.card.current_ap
        except Exception:
            ap = None
        trace.exchange(self.slot, msg, rsp, elapsed, ap)
        return rsp

    def _apdu(self, apdu: bytes) -> bytes:
        try:
            rsp = bytes(self.card.transmit(apdu))
        except NoAnswer:
            raise
        except Exception:
            log.exception("slot %d: card raised on a command APDU; answering 6F00", self.slot)
            return SW_CARD_ERROR
        if not 2 <= len(rsp) <= MAX_FRAME:
            log.error("slot %d: card returned %d bytes; answering 6F00", self.slot, len(rsp))
            return SW_CARD_ERROR
        return rsp

    def _control(self, code: int) -> bytes | None:
        card = self.card
        if code == CTRL_ATR:
            try:
                self._last_atr = bytes(card.atr)
            except Exception:
                log.exception("slot %d: card raised reading its ATR", self.slot)
            return self._last_atr
        action: Callable[[], object]
        if code == CTRL_ON:
            name, action = "power_on", card.power_on
        elif code == CTRL_RESET:
            name, action = "reset", card.reset
        elif code == CTRL_OFF:
            name, action = "power_off", card.power_off
        else:
            log.warning("slot %d: unknown vpcd control code %02X ignored", self.slot, code)
            return None
        try:
            action()
        except Exception:
            log.exception("slot %d: card raised on %s", self.slot, name)
        if self.trace is not None:
            self.trace.event(self.slot, name)
        return None


def connect_to_vpcd(host: str, port: int, timeout: float, netns: NetNamespace | None = None) -> socket.socket:
    """A TCP connection to vpcd's port (inside ``netns`` when given); OSError if it cannot be made."""
    connect = socket.create_connection if netns is None else netns.create_connection
    return connect((host, port), timeout)


class VirtualReaderSet:
    """Several cards in one process, one :class:`VpcdLink` thread per slot."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        base_port: int = VPCD_PORT,
        trace: ApduTrace | None = None,
        netns: NetNamespace | None = None,
        **link_options: float,
    ) -> None:
        self.host = host
        self.netns = netns
        self.base_port = base_port
        self.trace = trace
        self._link_options = link_options
        self._links: dict[int, VpcdLink] = {}
        self._lock = threading.Lock()

    def insert(self, slot: int, card: CardLike, *, connected_socket: socket.socket | None = None) -> VpcdLink:
        """Put ``card`` in ``slot`` (connects to vpcd port base_port + slot, or serves ``connected_socket``).

        Refuses a taken slot and a card already in another slot: two links on one card would
        interleave two readers' sessions on one security status.
        """
        with self._lock:
            if slot in self._links:
                raise ValueError(f"slot {slot} already holds a card")
            for other, link in self._links.items():
                if link.card is card:
                    raise ValueError(f"this card is already in slot {other}; a card can be in one slot only")
            link = VpcdLink(
                card,
                slot,
                host=self.host,
                port=self.base_port + slot,
                trace=self.trace,
                netns=self.netns,
                connected_socket=connected_socket,
                **self._link_options,  # type: ignore[arg-type]
            )
            self._links[slot] = link
        return link.start()

    def remove(self, slot: int) -> CardLike:
        """Take the card out of ``slot`` (closes its link: pcscd sees EMPTY); returns it."""
        with self._lock:
            link = self._links.pop(slot)
        link.close()
        return link.card

    @property
    def links(self) -> dict[int, VpcdLink]:
        """Snapshot of slot → link."""
        with self._lock:
            return dict(self._links)

    def __getitem__(self, slot: int) -> VpcdLink:
        return self._links[slot]

    def __contains__(self, slot: object) -> bool:
        return slot in self._links

    def close(self) -> None:
        """Remove every card."""
        for slot in list(self.links):
            self.remove(slot)

    def __enter__(self) -> VirtualReaderSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
