"""What the console shows of a card, live: the APDUs it answers, its keys, its place in the reader.

:class:`ObservedCard` is what goes into the reader: a ``FaultyCard`` (so faults still work) that
records every exchange, decoded and masked (``mynaemu.redact``), and tells an :class:`EventHub`
at once; the hub hands the news to the page's event streams on the asyncio loop. A console card
(:class:`LocalCard` served here, :class:`AttachedCard` reached through a ``serve``'s control
channel) answers the scenario controls' JSON requests and makes the snapshot the page renders.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reader_bridge.steering import FaultyCard
from reader_bridge.vpcd import NoAnswer

from .. import sw
from ..card import Card
from ..controls import CardControls
from ..redact import carries_secret, mask_command

if TYPE_CHECKING:  # asyncio only where the console's pages run: `mynaemu serve` uses ObservedCard alone
    import asyncio

APDU_LOG_LENGTH = 14
CERT_STATES = ("good", "held", "revoked", "expired", "unknown")

COMMAND_NAMES = {
    0xA4: "SELECT", 0xB0: "READ BINARY", 0xB2: "READ RECORD", 0x20: "VERIFY", 0x21: "VERIFY",
    0x24: "CHANGE REFERENCE DATA", 0x2C: "RESET RETRY COUNTER", 0x32: "CHANGE KEY", 0x2A: "COMPUTE DIGITAL SIGNATURE",
    0x84: "GET CHALLENGE", 0x88: "INTERNAL AUTHENTICATE", 0xCA: "GET DATA", 0xCB: "GET DATA", 0xAE: "SET SESSION KEY",
    0xA2: "VERIFY CERTIFICATE",
}

# What an EF holds, by the profile's content, key or private-key name: for people, not for code.
EF_LABELS = {
    "jpki.sign_cert": "signing certificate", "jpki.sign_ca_cert": "signing CA certificate",
    "jpki.token_info": "token information", "jpki.cert_availability": "certificate availability",
    "jpki.auth_cert": "authentication certificate", "jpki.auth_ca_cert": "authentication CA certificate",
    "jpki.auth": "authentication key", "jpki.sign": "signing key", "jpki.terminal_ca_key": "terminal CA key",
    "text.my_number": "My Number", "text.basic4": "name, address, birth date, sex",
    "text.integrity": "signature over the records", "text.cv_cert": "CV certificate", "text.basic_info": "AP information",
    "text.sm_public_key": "secure-messaging key", "text.signed_public_key": "signed public key", "text.ap": "AP key",
    "visual.age_record": "birth date record", "visual.face": "card face (photo, name, address)",
    "visual.basic_info": "AP information", "visual.cv_cert": "CV certificate",
    "visual.my_number_image": "My Number (as printed)", "visual.ap": "AP key",
    "juki.key_ref": "resident-registry key reference", "common.card_id": "card identifier",
    "common.key_ref": "common key reference", "common.ia": "internal-authentication key",
    "auth": "auth PIN", "sign": "signing password", "text": "input-assist PIN", "juki": "住基 PIN",
    "common": "common PIN", "text-a": "check number A", "text-b": "check number B", "visual-a": "check number A",
    "visual-b": "check number B", "visual-birth": "birth-date key", "text-reserved": "reserved key",
}


def ef_label(ef: Any) -> str:
    """``EF 000A (authentication certificate)`` for an EF of the card (``mynaemu.files``)."""
    spec = ef.spec
    name = spec.content or spec.key or spec.private_key
    label = EF_LABELS.get(name, name)
    return f"EF {spec.fid:04X}" + (f" ({label})" if label else "")


def sw_meaning(status: bytes) -> str:
    """The status word's meaning (the card's, ``mynaemu.sw``)."""
    return sw.describe(status)


@dataclass(frozen=True, slots=True)
class ApduRecord:
    """One exchange, fit to show: the command masked (``plain`` only while guesses are shown)."""

    seq: int
    ts: float  # wall clock (time.time()) when the answer was ready
    command: str
    ap: str | None
    ef: str | None
    cmd: str
    sw: str
    meaning: str
    plain: str | None = None
    us: int = 0

    def to_json(self, *, show_plain: bool) -> dict[str, Any]:
        out = {"seq": self.seq, "ts": self.ts, "command": self.command, "ap": self.ap, "ef": self.ef,
               "cmd": self.cmd, "sw": self.sw, "meaning": self.meaning, "us": self.us}
        if show_plain and self.plain is not None:
            out["plain"] = self.plain
        return out


_sequence = itertools.count(1)


def describe_command(apdu: bytes, card: Card | None) -> tuple[str, str | None, str | None]:
    """(command name, AP, EF label) after the card answered ``apdu``."""
    ins = apdu[1] if len(apdu) > 1 else -1
    name = COMMAND_NAMES.get(ins, f"INS {ins:02X}" if ins >= 0 else "?")
    if ins == 0x20 and len(apdu) == 4:
        name = "VERIFY (retry query)"
    ap = ef = None
    if card is not None:
        ap = card.current_ap
        current = card.session.ef
        if current is not None and ins in (0xA4, 0xB0, 0xB2, 0x20, 0x2A, 0x24, 0x32, 0x88) and not (
                ins == 0xA4 and len(apdu) > 2 and apdu[2] == 0x04):
            ef = ef_label(current)
    return name, ap, ef


class EventHub:
    """Fans news out from any thread to the asyncio queues of the page's event streams."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []

    def subscribe(self) -> asyncio.Queue:
        import asyncio

        queue: asyncio.Queue = asyncio.Queue(maxsize=10000)
        with self._lock:
            self._subscribers.append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._subscribers = [(lp, q) for lp, q in self._subscribers if q is not queue]

    def publish(self, index: int) -> None:
        """Card ``index`` changed: wake every stream (cheap; called in the link's thread)."""
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            with contextlib.suppress(RuntimeError):  # a loop that closed meanwhile
                loop.call_soon_threadsafe(_put, queue, index)


def _put(queue: asyncio.Queue, index: int) -> None:
    import asyncio

    with contextlib.suppress(asyncio.QueueFull):  # a stalled page: it gets a snapshot later anyway
        queue.put_nowait(index)


class ObservedCard(FaultyCard):
    """A ``FaultyCard`` that records each exchange and power event and tells the console at once."""

    def __init__(self, card: Card, *, notify: Any = None, demo: bool = False) -> None:
        super().__init__(card)
        self.log: collections.deque[ApduRecord] = collections.deque(maxlen=APDU_LOG_LENGTH)
        self.notify = notify or (lambda: None)
        self.demo = demo
        self.show_guesses = False
        self.count = 0

    def transmit(self, apdu: bytes) -> bytes:
        apdu = bytes(apdu)
        start = time.perf_counter_ns()
        try:
            rsp = super().transmit(apdu)
        except NoAnswer:
            self._record(apdu, b"", start)
            raise
        self._record(apdu, rsp, start)
        return rsp

    def _record(self, apdu: bytes, rsp: bytes, start: int) -> None:
        card = self.card if isinstance(self.card, Card) else None
        name, ap, ef = describe_command(apdu, card)
        status = rsp[-2:]
        # The plain command only of a demo card, only while the trainer shows guesses.
        plain = apdu.hex().upper() if self.demo and self.show_guesses and carries_secret(apdu) else None
        self.log.append(ApduRecord(next(_sequence), time.time(), name, ap, ef, mask_command(apdu),
                                   status.hex().upper() if rsp else "----",
                                   sw_meaning(status) if rsp else "no answer (fault)", plain,
                                   (time.perf_counter_ns() - start) // 1000))
        self.count += 1
        self.notify()

    def power_on(self) -> bytes:
        atr = super().power_on()
        self.notify()
        return atr

    def reset(self) -> bytes:
        atr = super().reset()
        self.notify()
        return atr

    def power_off(self) -> None:
        super().power_off()
        self.notify()


def _certificate_state(card: Card) -> dict[str, Any]:
    """good / held / revoked / expired / unknown: from the authority when installed (see ``status_of``)."""
    from ..controls import _certificates, certificate_operations
    from .relying import certificate_states

    by_authority = certificate_states(card)
    if by_authority is not None:
        return by_authority
    now = card.now()
    certs = _certificates(card)
    if certs and now > min(c.not_valid_after_utc for c in certs):
        return {"state": "expired", "detail": f"card time {now.date().isoformat()}"}
    status_of = getattr(certificate_operations(), "status", None)
    if callable(status_of):
        try:
            answer = status_of(card)
        except Exception as exc:  # the authority's answer is information, never a crash of the page
            return {"state": "unknown", "detail": " ".join(str(exc).split())[:120]}
        state = answer.get("state") if isinstance(answer, dict) else None
        if state in CERT_STATES:
            return {"state": state, "detail": str(answer.get("detail", ""))[:120]}
    if card.dir.meta.get("suspended"):
        return {"state": "revoked", "detail": "suspended (emulated CRL)"}
    return {"state": "unknown", "detail": "the authority service is not installed"}


class LocalCard:
    """A card this console serves: its controls, its observed reader card, what the page shows."""

    attached = False

    def __init__(self, index: int, card: Card, observed: ObservedCard, controls: CardControls, reader: str) -> None:
        self.index = index
        self.card = card
        self.observed = observed
        self.controls = controls
        self.reader = reader
        self.kind = card.dir.meta.get("kind")
        self.path = card.dir.path
        self._cert: dict[str, Any] | None = None

    @property
    def demo(self) -> bool:
        return self.kind == "demo"

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        answer = self.controls.handle(request)
        self._cert = None
        if answer.get("ok") and request.get("op") in ("insert", "remove") and self.reader:
            # Done when PC/SC shows it: a client connecting sooner could see pcscd power the card up under it.
            from reader_bridge.pcscd import PcscError, wait_for_card

            try:
                wait_for_card(self.reader, present=request["op"] == "insert", timeout=10)
            except (PcscError, TimeoutError) as exc:
                return {"ok": False, "error": f"{request['op']}: PC/SC did not show it ({exc})", "kind": "failed"}
        return answer

    def persona(self) -> dict[str, Any]:
        return dict(self.card.dir.meta.get("persona") or {})

    def refresh(self) -> None:
        """Nothing to ask: a snapshot reads the card itself."""

    def secret(self, key: str) -> str | None:
        """A key's current value, of a demo or test card only (their secrets are published)."""
        if self.kind not in ("demo", "test"):
            return None
        with self.card.mutex:
            return self.card.keyring[key].value.decode("ascii")

    def certificates(self) -> dict[str, Any]:
        if self._cert is None:
            self._cert = _certificate_state(self.card)
        return self._cert

    def snapshot(self) -> dict[str, Any]:
        card = self.card
        with card.mutex:
            keys = card.key_status()
            ap = card.current_ap
            verified = sorted(card.session.verified)
        show = self.demo and self.observed.show_guesses
        return {
            "index": self.index, "card_id": card.dir.card_id, "path": str(self.path), "kind": self.kind,
            "demo": self.demo, "attached": False, "reader": self.reader,
            "inserted": self.controls.presence.inserted if self.controls.presence is not None else None,
            "keys": {k: {"tries_left": v["tries_left"], "limit": v["limit"], "blocked": v["blocked"], "label": v["label"]}
                     for k, v in keys.items()},
            "ap": ap, "verified": verified, "certificates": self.certificates(),
            "clock_offset_seconds": int(card.clock_offset.total_seconds()),
            "show_guesses": show, "apdu_count": self.observed.count,
            "apdus": [r.to_json(show_plain=show) for r in reversed(self.observed.log)],
        }


class AttachedCard:
    """A card a running ``mynaemu serve`` serves, reached through its control channel.

    The channel carries requests: the console polls ``status`` and ``recent`` (the serve's
    masked log of exchanges) about every 50 ms (``poll``), and publishes a change at once, so
    the page follows the card as it follows a card served here. Scenarios run through the
    serve's reader; a demo or test card's secrets are its published ones.
    """

    attached = True

    def __init__(self, index: int, path: Path, client: Any) -> None:
        self.index = index
        self.path = path
        self.client = client
        self._lock = threading.Lock()
        # One poll at a time, asked and stored as one step: a poll that asked before an action
        # must not store its older answer over the one asked after it.
        self._poll_lock = threading.Lock()
        view = Card.load(path, read_only=True)
        try:
            self.kind = view.dir.meta.get("kind")
            self._persona = dict(view.dir.meta.get("persona") or {})
            self.card_id = view.dir.card_id
        finally:
            view.close()
        self.log: collections.deque[dict[str, Any]] = collections.deque(maxlen=APDU_LOG_LENGTH)
        self._seq = 0
        self._status: dict[str, Any] = {"ok": False, "error": "not asked yet"}
        self._recent: dict[str, Any] = {"ap": None, "verified": [], "count": 0}
        self._cert: tuple[float, dict[str, Any]] | None = None

    @property
    def demo(self) -> bool:
        return self.kind == "demo"

    @property
    def reader(self) -> str | None:
        return self._status.get("reader") if self._status.get("ok") else None

    def persona(self) -> dict[str, Any]:
        return dict(self._persona)

    def refresh(self) -> None:
        """Ask the serve now: what an action did shows in the next snapshot, not one poll later."""
        self.poll()

    def secret(self, key: str) -> str | None:
        """A demo or test card's published secret (the serving process keeps the live values)."""
        if self.kind not in ("demo", "test"):
            return None
        from ..testing import TEST_SECRETS

        return TEST_SECRETS.get("juki" if key == "common" else key)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        from ..channel import ChannelError

        request = dict(request)
        op = request.pop("op")
        with self._lock:
            try:
                answer = self.client.request(op, **request)
            except ChannelError as exc:
                return {"ok": False, "error": str(exc), "kind": "failed"}
        if op != "recent":
            self._cert = None
        return answer

    def poll(self) -> bool:
        """Ask the serve for its status and the exchanges since the last poll; True if anything changed."""
        with self._poll_lock:
            status = self.handle({"op": "status"})
            recent = self.handle({"op": "recent", "after": self._seq})
            changed = status != self._status
            self._status = status
            if recent.get("ok"):
                for record in recent.get("apdus", []):
                    self.log.append(record)
                    self._seq = max(self._seq, int(record.get("seq", 0)))
                view = {k: recent.get(k) for k in ("ap", "verified", "count")}
                changed |= bool(recent.get("apdus")) or view != self._recent
                self._recent = view
            return changed

    def certificates(self) -> dict[str, Any]:
        # A read-only view of the card directory, judged as a served card's is; once a second at most.
        now = time.monotonic()
        if self._cert is None or now - self._cert[0] > 1.0:
            view = Card.load(self.path, read_only=True)
            try:
                state = _certificate_state(view)
            finally:
                view.close()
            self._cert = (now, state)
        return self._cert[1]

    def snapshot(self) -> dict[str, Any]:
        if not self._status.get("ok"):
            self.poll()
        status = self._status
        base = {"index": self.index, "card_id": self.card_id, "path": str(self.path), "kind": self.kind,
                "demo": self.demo, "attached": True, "reader": self.reader, "ap": self._recent.get("ap"),
                "verified": list(self._recent.get("verified") or []), "apdus": list(reversed(self.log)),
                "show_guesses": False, "apdu_count": self._recent.get("count") or 0}
        if not status.get("ok"):
            return {**base, "inserted": None, "keys": {}, "error": status.get("error"),
                    "certificates": {"state": "unknown", "detail": "the serve does not answer"}}
        return {**base, "inserted": status.get("inserted"), "keys": status.get("keys", {}),
                "clock_offset_seconds": status.get("clock_offset_seconds", 0), "certificates": self.certificates()}


def card_time_text(offset_seconds: int) -> str:
    """The card's clock as shown: real time + offset, to the minute."""
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_seconds)).strftime("%Y-%m-%d %H:%M UTC")
