"""What a served card needs to be steered: its place in a reader, and faults between reader and card.

:class:`ReaderSlot` is ``mynaemu.controls.Presence`` over a :class:`VirtualReaderSet` slot.
:class:`FaultyCard` wraps a card (any :class:`CardLike`) and is what goes into the reader; it is
``mynaemu.controls.FaultTarget``. Faults live here, in the bridge, never in the chip: a slow
card waits in the link's thread, a removed or mute one raises :class:`NoAnswer`, which makes the
link drop its connection without answering.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mynaemu.controls import FaultSpec
from mynaemu.redact import mask_command

from . import CardLike, CardWrapper
from .vpcd import SW_CARD_ERROR, NoAnswer, VirtualReaderSet

__all__ = ["FaultyCard", "ReaderSlot"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Armed:
    spec: FaultSpec
    countdown: int | None  # APDUs until an at_apdu fault fires
    times_left: int | None  # error faults: matching commands still to answer 6F00
    fired: int = 0

    def hits(self, apdu: bytes) -> bool:
        if self.spec.match is not None:
            return self.spec.match.matches(apdu)
        if self.countdown is None:
            return True  # a slow fault without match: every command
        self.countdown -= 1
        return self.countdown <= 0


@dataclass(slots=True)
class _Fired:
    kind: str
    command: str  # masked: a fault on a VERIFY must not put its PIN in the status


@dataclass
class FaultyCard(CardWrapper):
    """A card with faults armed between it and the reader (``add_fault``, ``clear_faults``).

    ``on_remove`` takes the card out of its reader (``ReaderSlot.remove``); without it a remove
    fault only drops the connection. ``fired`` lists what fired (kind and masked command), and
    ``muted`` is set while a command is held unanswered.
    """

    card: CardLike
    on_remove: Callable[[], object] | None = None
    fired: list[_Fired] = field(default_factory=list)
    muted: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []
        # Set to let go every held command (mute) and waiting delay (slow); replaced on clear.
        self._release = threading.Event()

    # -- CardLike (power and ATR pass through, from CardWrapper) ---------------------------------
    def transmit(self, apdu: bytes) -> bytes:
        """The card's answer, unless an armed fault fires on this command."""
        apdu = bytes(apdu)
        delay = 0.0
        firing: _Armed | None = None
        with self._lock:
            for armed in list(self._armed):
                if not armed.hits(apdu):
                    continue
                if armed.spec.kind == "slow":
                    delay = max(delay, armed.spec.seconds or 0.0)
                elif firing is None:
                    firing = armed
            if firing is not None:
                firing.fired += 1
                if firing.times_left is not None:  # None: an error fault until cleared
                    firing.times_left -= 1
                    if firing.times_left <= 0:
                        self._armed.remove(firing)
                self.fired.append(_Fired(firing.spec.kind, mask_command(apdu)))
            release = self._release
        if delay:
            release.wait(delay)  # clearing the faults cuts the delay short
        if firing is None:
            return self.card.transmit(apdu)
        kind = firing.spec.kind
        log.info("fault %s fires on %s", kind, mask_command(apdu))
        if kind == "error":
            return SW_CARD_ERROR
        if kind == "remove":
            if self.on_remove is not None:
                self.on_remove()
            raise NoAnswer("removed by a fault")
        self.muted.set()
        try:
            release.wait(firing.spec.seconds)
        finally:
            self.muted.clear()
        raise NoAnswer("mute by a fault; the reader gives up")

    # -- FaultTarget -------------------------------------------------------------------------------
    def add_fault(self, spec: FaultSpec) -> None:
        with self._lock:
            times = spec.times if spec.kind in ("error", "slow") else 1  # remove and mute fire once
            self._armed.append(_Armed(spec, spec.at_apdu, times))

    def clear_faults(self) -> int:
        with self._lock:
            count = len(self._armed)
            self._armed.clear()
            release, self._release = self._release, threading.Event()
        release.set()
        return count

    def release_held(self) -> None:
        """Let go a held (muted) command and cut delays short; the armed faults stay."""
        with self._lock:
            release, self._release = self._release, threading.Event()
        release.set()

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(a.spec.describe(), fired=a.fired) for a in self._armed]


class ReaderSlot:
    """One card's place in a :class:`VirtualReaderSet` slot (``mynaemu.controls.Presence``)."""

    def __init__(self, readers: VirtualReaderSet, slot: int, card: CardLike) -> None:
        self.readers = readers
        self.slot = slot
        self.card = card
        self._lock = threading.RLock()
        if isinstance(card, FaultyCard) and card.on_remove is None:
            card.on_remove = lambda: self.remove(wait=False)

    @property
    def inserted(self) -> bool:
        link = self.readers.links.get(self.slot)
        return link is not None and link.card is self.card

    def insert(self) -> None:
        with self._lock:
            if not self.inserted:
                self.readers.insert(self.slot, self.card)

    def remove(self, *, wait: bool = True) -> None:
        """Take the card out; ``wait=False`` (from the link's own thread) gives way to a removal under way."""
        if not self._lock.acquire(blocking=wait):
            return  # another thread is removing it, and waits for this link's thread to end
        try:
            if isinstance(self.card, FaultyCard):
                self.card.release_held()  # a muted command would hold the link's thread
            if self.inserted:
                self.readers.remove(self.slot)
        finally:
            self._lock.release()
