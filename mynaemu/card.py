"""The card: power, ATR, and the command dispatcher (sans-I/O: bytes in, bytes out).

    card = Card.load(card_dir)
    atr = card.power_on()
    resp = card.transmit(bytes.fromhex("00A4040C0AD392F000260100000001"))   # b"\\x90\\x00"

The dispatcher parses the APDU, checks the class byte, and calls the current application's
handler for (CLA, INS) from a table built once at load. SELECT by AID is the card's own: it
switches application and clears the security status (docs/card-interface.md, D6). Any unexpected error
answers 6F00 and the card goes on answering.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from . import cardclock, carddir, sw
from .apdu import ApduError, parse_fields
from .aps import APPLICATION_CLASSES, Application, Session
from .aps.base import Handler, build_efs
from .files import NO_READS, BinaryEf
from .keys import KeyRing, StorageFailure
from .sm import SmError
from .sm import parse_command_data as parse_sm_data
from .state import CardLock, CardMovedError, StateError, StateStore, acquire_card_lock
from .tlv import TlvError, parse_tlv

log = logging.getLogger("mynaemu.card")

_SELECT = 0xA4
_OK = sw.OK
_BinaryEf = BinaryEf  # module globals: the fast path reads them on every APDU
_NO_READS = NO_READS
# Constant answers an AP keeps (a few KB): beyond, new ones go through the dispatch.
_ANSWERS_KEPT = 64
_NOTHING_KNOWN: dict = {}  # the empty memory of an AP that has kept nothing yet (never written)
# Short READ BINARY answers an EF keeps: a 2 KB certificate read in 256-byte steps needs 9.
_READS_KEPT = 32


class CardClosedError(RuntimeError):
    """A command to a Card that was closed, or inherited through fork(): load the card again."""


# Every live Card, so that a fork() child's inherited copies can be told that they are copies.
_live_cards: weakref.WeakSet[Card] = weakref.WeakSet()


class Card:
    """An emulated My Number card.

    One card directory has one live writable Card per process (a second ``load`` is refused, see
    ``state.acquire_card_lock``), and a Card is safe to use from several threads: ``transmit`` and
    the operator commands take the card's lock, so no two of them interleave. (``transmit``
    answers a few commands that change nothing from one read of the state, without the lock:
    they too fall wholly before or after any other command.)
    """

    def __init__(
        self,
        card_dir: carddir.CardDir,
        *,
        interface: str | None = None,
        read_only: bool = False,
        lock: CardLock | None = None,
    ) -> None:
        interface = card_dir.profile.interface if interface is None else interface
        if interface not in ("contact", "contactless"):
            raise ValueError("interface must be 'contact' or 'contactless'")
        if lock is None and not read_only:
            # Callers that built ``card_dir`` themselves: take the lock now (Card.load takes it
            # before reading any file).
            lock = acquire_card_lock(card_dir.path)
        self.dir = card_dir
        self.profile = card_dir.profile
        self.interface = interface
        self.read_only = read_only
        self._lock = lock
        # None while usable; else why every command is refused (closed, or a fork's copy).
        self._refusal: str | None = None
        # Reentrant: an operator command may call transmit-level helpers while holding it.
        self.mutex = threading.RLock()
        self._enter, self._leave = self.mutex.acquire, self.mutex.release
        try:
            if lock is not None:
                with lock.directory() as dir_fd:
                    self._clock_offset = cardclock.read_clock_offset(card_dir.path, card_dir.card_id, dir_fd=dir_fd)
            else:
                self._clock_offset = cardclock.read_clock_offset(card_dir.path, card_dir.card_id)
            self.store = StateStore(card_dir.state_path, card_dir.card_id, read_only=read_only, lock=lock)
            self.keyring = KeyRing(self.profile.keys, self.store)
            self.applications: dict[str, Application] = {}
            for name, spec in self.profile.aps.items():
                cls = APPLICATION_CLASSES.get(name, Application)
                efs = build_efs(spec, card_dir.content, self._private_key)
                objects = {tag: _data_object(tag, card_dir.content.get(cid, b""), self.profile.get_data_template)
                           for tag, cid in spec.data_objects.items()}
                session_key = self._private_key(spec.session_key) if spec.session_key else None
                self.applications[name] = cls(spec, efs, self.keyring, objects, session_key)  # type: ignore[arg-type]
        except CardMovedError as exc:
            if lock is not None:
                lock.release()
            raise StateError(str(exc)) from None
        except ValueError as exc:  # content that does not fit its profile (e.g. an EF too small)
            if lock is not None:
                lock.release()
            raise StateError(f"{card_dir.path}: {exc}") from None
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        if lock is not None:
            lock.idle()  # loaded: the claim holds the card, no descriptor needed until a write
            weakref.finalize(self, lock.release)
        self._by_aid = {ap.aid: ap for ap in self.applications.values()}
        # SELECT by DF name in one dict lookup: every whole AID, then every prefix of >= 5 bytes
        # (JICSAP's partial names; the first AP in profile order wins a shared prefix). A refused
        # probe (OpenSC sends ~30 other drivers' AIDs) then costs no more than a successful SELECT.
        self._by_name: dict[bytes, Application] = dict(self._by_aid)
        for ap in self.applications.values():
            for n in range(5, len(ap.aid)):
                self._by_name.setdefault(ap.aid[:n], ap)
        self._tables: dict[str, dict[int, Handler]] = {}
        select = self._select_handler()
        for name, ap in self.applications.items():
            table = dict(ap.table)
            if (0x00 << 8) | _SELECT in table:
                table[_SELECT] = select
            self._tables[name] = table
        self._select = select
        # Answers that depend on nothing but the current AP and the exact bytes, kept per AP as
        # the dispatch gives them (OpenSC probes ~30 other drivers' AIDs and some data objects
        # on every connection): SELECT by AID (the card's own; with the AP it selects, None if
        # refused), GET DATA (the objects never change) and an instruction the AP lacks.
        self._known_by_ap: dict[str, dict[bytes, tuple[bytes, Application | None]]] = {}
        self._constant_ins = {name: {k for k, h in table.items() if getattr(h, "__func__", None) is Application.get_data}
                              for name, table in self._tables.items()}
        self._known = _NOTHING_KNOWN
        self._manager = self.applications["mf"]
        self.session = Session(self._manager)
        self._table = self._tables["mf"]
        # The fast path for the commands clients send most (SELECT EF with P2 0C, by the exact
        # APDU bytes, per application); the full dispatch answers everything else the same way.
        self._fast_selects: dict[str, dict[bytes, int]] = {
            name: _select_apdus(tuple(sorted(ap.efs)))
            for name, ap in self.applications.items() if (0x00 << 8) | _SELECT in ap.table
        }
        self._fast_select = self._fast_selects.get("mf", {})
        self._powered = False
        self._ready = False  # open and powered: the one flag the fast path reads
        _live_cards.add(self)

    @classmethod
    def load(cls, path: Path | str, *, interface: str | None = None, read_only: bool = False) -> Card:
        """Load a card issued earlier into ``path``; raise StateError if any file is broken.

        A writable load holds the card's writer lock until ``close()`` (or until the card is
        garbage-collected): another process loading it for writing, or a second writable load of
        the same directory in this process (however its path is spelled), gets a StateError.
        ``interface`` ("contact" or "contactless") defaults to the card variant's.
        ``read_only=True`` loads beside a writer; such a view refuses every state change and never
        compares a secret (VERIFY with data answers 6581).
        """
        if not Path(path).is_dir():
            raise StateError(f"{path}: no card directory here (issue one with `mynaemu issue {path}`)")
        lock = None if read_only else acquire_card_lock(Path(path))
        try:
            card_dir = carddir.load(path, dir_fd=None if lock is None else lock.fd)
            if lock is not None:
                # The files were read by path: make sure it named the locked directory throughout.
                lock.check_path()
        except CardMovedError as exc:
            lock.release()  # type: ignore[union-attr]
            raise StateError(str(exc)) from None
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return cls(card_dir, interface=interface, read_only=read_only, lock=lock)

    def close(self) -> None:
        """Let other processes (and loads) use this card; it then refuses every command. Idempotent."""
        with self.mutex:
            if self._refusal is None:
                self._refusal = f"{self.dir.path}: this Card was closed; load the card again to use it"
            self._ready = False
            if self._lock is not None:
                self._lock.release()

    @property
    def closed(self) -> bool:
        """True once the card refuses every command (closed, or inherited through fork)."""
        return self._refusal is not None

    def _check_open(self) -> None:
        if self._refusal is not None:
            raise CardClosedError(self._refusal)

    def __enter__(self) -> Card:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _private_key(self, key_id: str) -> rsa.RSAPrivateKey:
        key = self.dir.keys.get(key_id)
        if key is None:
            raise ValueError(f"keys.json has no key {key_id!r}, which the profile names")
        return key

    # -- power ---------------------------------------------------------------------------------
    @property
    def atr(self) -> bytes:
        """The ATR of the card's interface."""
        return self.profile.atr_contactless if self.interface == "contactless" else self.profile.atr_contact

    @property
    def powered(self) -> bool:
        return self._powered

    @property
    def current_ap(self) -> str | None:
        """The selected application's name, None in the power-on state."""
        name = self.session.ap.name
        return None if name == "mf" else name

    def _clear(self) -> None:
        self.session = Session(self._manager)
        self._table = self._tables["mf"]
        self._fast_select = self._fast_selects.get("mf", {})
        self._known = self._known_by_ap.get("mf", _NOTHING_KNOWN)

    def power_on(self) -> bytes:
        """Cold start: the power-on state, no security status. Returns the ATR."""
        self._clear()
        self._powered = True
        self._ready = self._refusal is None
        return self.atr

    def reset(self) -> bytes:
        """Warm reset: like power-on; retry counters are untouched. Returns the ATR."""
        return self.power_on()

    def power_off(self) -> None:
        """Remove power: the volatile state goes, the durable state stays."""
        self._clear()
        self._powered = False
        self._ready = False

    # -- commands ------------------------------------------------------------------------------
    def transmit(self, apdu: bytes) -> bytes:
        """Answer one command APDU with its response (data + SW). Never raises for bad input.

        A card that is not powered is powered on first (cold start), so a freshly loaded card
        can be used at once. Any bytes-like object is accepted; anything else is a TypeError.
        A closed card, or one inherited through fork(), raises CardClosedError.
        """
        if apdu.__class__ is not bytes:  # bytearray/memoryview/list from transports: one copy, then hashable slices
            apdu = bytes(apdu)
        if self._ready:
            # Answers that change nothing, given without the lock: a READ BINARY answer the
            # current EF kept (its access rule checked now) and a remembered answer that selects
            # nothing (a refused probe, GET DATA). Each reads one consistent state: the session
            # object once, then its own fields, each read atomic; so it is ordered before or
            # after any command holding the lock, as if it had taken the lock itself.
            if len(apdu) == 5:
                session = self.session
                ef = session.ef
                if ef.__class__ is _BinaryEf:
                    answer = ef.reads.get(apdu)  # type: ignore[union-attr]
                    if answer is not None:
                        rule = ef.rule
                        if rule is None or not rule.isdisjoint(session.verified):
                            return answer
            answered = self._known.get(apdu)
            if answered is not None and answered[1] is None:
                return answered[0]
        self._enter()  # the card's lock; not ``with``: the fast path is short enough for its cost to show
        try:
            if not self._ready:
                if self._refusal is not None:
                    raise CardClosedError(self._refusal)
                self.power_on()
            # Fast path (same answers as the dispatch below, tested against it): SELECT EF by
            # file id with P2 0C, a short READ BINARY of the current transparent EF (its access
            # rule checked every time, the answer kept by the EF), and SELECT by AID answered
            # before (by the exact bytes).
            n = len(apdu)
            if n == 5:
                if apdu[1] == 0xB0:
                    session = self.session
                    ef = session.ef
                    if ef.__class__ is _BinaryEf:
                        rule = ef.rule
                        if rule is None or not rule.isdisjoint(session.verified):
                            reads = ef.reads  # type: ignore[union-attr]
                            answer = reads.get(apdu)  # only bytes that passed the checks below are kept
                            if answer is not None:
                                return answer
                            if apdu[0] == 0 and apdu[2] < 0x80:
                                body = ef.body  # type: ignore[union-attr]
                                offset = (apdu[2] << 8) | apdu[3]
                                if offset < len(body):
                                    answer = body[offset : offset + (apdu[4] or 256)] + _OK
                                    if reads is _NO_READS:
                                        reads = ef.reads = {}  # type: ignore[union-attr]
                                    if len(reads) < _READS_KEPT:
                                        reads[apdu] = answer
                                    return answer
                        elif apdu[0] == 0 and apdu[2] < 0x80:
                            return session.ap._denied(ef)  # before the offset, as the dispatch
            elif n == 7:
                fid = self._fast_select.get(apdu)
                if fid is not None:
                    session = self.session
                    session.ef = session.ap.efs[fid]
                    return _OK
            answered = self._known.get(apdu)
            if answered is not None:
                if answered[1] is not None:
                    self._enter_ap(answered[1])
                return answered[0]
            return self._dispatch(apdu)
        finally:
            self._leave()

    def _dispatch(self, apdu: bytes) -> bytes:
        """The full dispatch (the card's lock held): parse, then the current application's handler."""
        try:
            if len(apdu) == 4:  # case 1 (the retry query, mostly): nothing to parse
                cla, ins, p1, p2 = apdu
                data, le, ext = b"", None, False
            else:
                cla, ins, p1, p2, data, le, ext = parse_fields(apdu)
            if cla == 0x00 or cla == 0x80:
                command = (cla << 8) | ins
                handler = self._table.get(command)
                if handler is None:
                    self._remember(apdu, sw.INS_NOT_SUPPORTED, None)
                    return sw.INS_NOT_SUPPORTED
                ap = self.session.ap
                response = handler(self.session, p1, p2, data, le, ext)
                if handler is self._select and p1 == 0x04 and cla == 0x00:
                    self._remember(apdu, response, self.session.ap if response[-2:] == _OK else None, ap)
                elif command in self._constant_ins[ap.name]:
                    self._remember(apdu, response, None, ap)
                return response
            if cla == 0x08 and self.session.sm is not None:
                return self._secure_messaging(ins, p1, p2, data)
            return _class_error(cla, ins)
        except ApduError as exc:
            return exc.sw
        except StorageFailure as exc:
            log.warning("state write failed, command refused (6581): %s", exc)
            return sw.MEMORY_FAILURE
        except Exception:
            log.exception("internal error answering INS %02X", apdu[1] if len(apdu) > 1 else 0)
            return sw.INTERNAL_ERROR

    def _remember(self, apdu: bytes, response: bytes, selects: Application | None, ap: Application | None = None) -> None:
        """Keep a constant answer of ``ap`` (the current one by default) for the fast path."""
        name = (ap or self.session.ap).name
        known = self._known_by_ap.get(name)
        if known is None:
            known = self._known_by_ap[name] = {}
            if name == self.session.ap.name:
                self._known = known
        if len(known) < _ANSWERS_KEPT:
            known[apdu] = (response, selects)

    def _secure_messaging(self, ins: int, p1: int, p2: int, data: bytes) -> bytes:
        """A CLA 08 command in a secure-messaging session: unwrap, run as CLA 00, wrap the answer."""
        session = self.session
        sm = session.sm
        assert sm is not None
        if sm.broken:
            return sw.NO_SM_SESSION
        counter = sm.next_counter()  # every SM command advances it, a refused one too
        try:
            cryptogram, le = parse_sm_data(data)
            inner = sm.cipher.unwrap_data(counter, cryptogram) if cryptogram is not None else b""
        except SmError:
            sm.broken = True
            return sw.SM_DATA_OBJECTS_INCORRECT
        handler = self._table.get(ins)
        if handler is None:
            return sw.INS_NOT_SUPPORTED
        response = handler(session, p1, p2, inner, le, le is not None and le > 256)
        return sm.cipher.wrap_data(counter, response[:-2]) + response[-2:]

    @contextlib.contextmanager
    def operating(self) -> Iterator[KeyRing]:
        """Hold the card for an operator command (admin, controls): no APDU runs meanwhile.

        Raises CardClosedError on a closed card and StorageFailure while its state cannot be
        trusted (a failed write not yet read back).
        """
        with self.mutex:
            self._check_open()
            self.keyring.check_fresh()
            yield self.keyring

    def _select_handler(self) -> Handler:
        """SELECT: by DF name (P1=04) the card's, everything else the current application's.

        The handler holds the card only weakly: a Card in a reference cycle would be freed (and
        its writer lock released) only by the garbage collector, not when the last name for it goes.
        """
        card = weakref.ref(self)

        def select(session: Session, p1: int, p2: int, data: bytes, le: int | None, ext: bool) -> bytes:
            if p1 != 0x04:
                return session.ap.select_file(session, p1, p2, data, le, ext)
            return card()._select_aid(p2, data)  # type: ignore[union-attr]

        return select

    def _select_aid(self, p2: int, data: bytes) -> bytes:
        """SELECT by DF name: switch application and clear the security status."""
        if p2 & 0x03 == 0x02:  # next occurrence: each AID names one DF
            return sw.FILE_NOT_FOUND
        if p2 not in (0x00, 0x04, 0x0C):
            return sw.WRONG_P1P2
        if not 1 <= len(data) <= 16:
            return sw.WRONG_LENGTH
        # A whole AID, or (JICSAP) a prefix of >= 5 bytes; the profile's order decides which AP a
        # shared prefix names (it puts the text AP first among the D392100031000101 family).
        ap = self._by_name.get(data)
        if ap is None:
            return sw.FILE_NOT_FOUND
        self._enter_ap(ap)
        if p2 == 0x0C:
            return sw.OK
        name = b"\x84" + bytes((len(ap.aid),)) + ap.aid
        if p2 == 0x04:  # FCP: a DF (descriptor 38) and its name
            body = b"\x82\x01\x38" + name
            return b"\x62" + bytes((len(body),)) + body + sw.OK
        return b"\x6f" + bytes((len(name),)) + name + sw.OK

    def _enter_ap(self, ap: Application) -> None:
        """The selection of ``ap`` by SELECT by AID (the card's lock held)."""
        if ap is not self.session.ap or not self.profile.reselect_keeps_status:
            # A new selection clears the security status; re-selecting the current AP does too
            # unless the card variant keeps it (D6).
            self.session = Session(ap)
            self._table = self._tables[ap.name]
            self._fast_select = self._fast_selects.get(ap.name, {})
            self._known = self._known_by_ap.get(ap.name, _NOTHING_KNOWN)

    # -- operator view -------------------------------------------------------------------------
    def key_status(self) -> dict[str, dict]:
        """Tries left, limit and blocked flag of every key (no values)."""
        return self.keyring.status()

    def tries_left(self, key: str) -> int:
        """Tries left of one key (names as in the profile: auth, sign, text, ...)."""
        return self.keyring[key].tries_left

    # -- the card's clock (mynaemu.cardclock) --------------------------------------------------
    @property
    def clock_offset(self) -> dt.timedelta:
        """How far the card's time is from the real time (0 unless a scenario moved it)."""
        return dt.timedelta(seconds=self._clock_offset)

    def now(self) -> dt.datetime:
        """The time at the card (UTC, aware): validity of its certificates is judged at this time."""
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._clock_offset)

    def clock(self) -> Callable[[], dt.datetime]:
        """The card's clock as a function (``now``), for code that takes a clock."""
        return self.now

    def set_clock_offset(self, seconds: int) -> None:
        """Move the card's clock, durably (controls.json); ValueError for an offset out of range.

        Takes the card's lock like an operator command; OSError when it cannot be written (the
        offset then stays as it was).
        """
        seconds = cardclock.check_offset(seconds)
        with self.mutex:
            self._check_open()
            if self.read_only or self._lock is None:
                raise PermissionError(13, "card loaded read-only")
            with self._lock.directory() as dir_fd:
                cardclock.write_clock_offset(self.dir.path, self.dir.card_id, seconds, dir_fd=dir_fd)
            self._clock_offset = seconds


def _data_object(tag: int, content: bytes | list[bytes], template: str) -> bytes:
    """What GET DATA answers for ``tag``: a constructed object stored whole (7F21 {...}) answers
    its contents, as the evidence suggests real cards do, unless the card variant says "whole"."""
    if not isinstance(content, bytes):
        raise ValueError(f"GET DATA {tag:04X} must be bytes, not records")
    first = tag >> 8 if tag > 0xFF else tag
    if template == "contents" and first & 0x20 and content:
        try:
            item = parse_tlv(content)
        except TlvError:
            return content
        if item.tag == tag and item.end == len(content):
            return item.value
    return content


@functools.lru_cache(maxsize=64)
def _select_apdus(fids: tuple[int, ...]) -> dict[bytes, int]:
    """SELECT EF APDUs with P2 0C (P1 00 or 02) of an AP's files, by their exact bytes: one map for every card."""
    return {bytes((0x00, 0xA4, p1, 0x0C, 0x02)) + fid.to_bytes(2, "big"): fid for fid in fids for p1 in (0x00, 0x02)}


def _refuse_inherited_cards() -> None:
    # A fork() child shares no lock with its parent's Card objects (state.py closes the child's
    # lock descriptors); left usable, the copy would keep counters of its own. Refuse it.
    for card in list(_live_cards):
        card._refusal = f"{card.dir.path}: this Card was inherited through fork(); load the card again in this process"
        card._ready = False
        card.mutex = threading.RLock()  # another thread may have held it at the fork
        card._enter, card._leave = card.mutex.acquire, card.mutex.release


os.register_at_fork(after_in_child=_refuse_inherited_cards)


def _class_error(cla: int, ins: int) -> bytes:
    """The status word for a class byte other than 00/80.

    Secure messaging exists on the real card only in the text AP after SET SESSION KEY, which the
    emulator does not offer; so SM commands answer as the real card does with no session
    (docs/card-interface.md §7): CLA 0C 6987; CLA 08 SELECT 6882, anything else 69FC.
    """
    if cla == 0xFF:
        return sw.CLA_NOT_SUPPORTED
    if cla & 0x80 == 0:  # interindustry class
        if cla & 0x40 or cla & 0x03:
            return sw.LOGICAL_CHANNEL_NOT_SUPPORTED
        if cla & 0x10:
            return sw.CHAINING_NOT_SUPPORTED
        if cla & 0x0C == 0x0C:
            return sw.SM_DATA_OBJECTS_MISSING
        if cla & 0x0C:
            return sw.SECURE_MESSAGING_NOT_SUPPORTED if ins == 0xA4 else sw.NO_SM_SESSION
        return sw.CLA_NOT_SUPPORTED
    if cla & 0xFC == 0x80 and cla & 0x03:
        return sw.LOGICAL_CHANNEL_NOT_SUPPORTED
    return sw.CLA_NOT_SUPPORTED
