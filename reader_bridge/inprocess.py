"""A pyscard ``CardConnection`` talking to a card object directly: no pcscd, no sockets.

``InProcessConnection(card)`` behaves like the connection of ``reader.createConnection()``
(connect / reconnect / disconnect / getATR / transmit → ``(data, sw1, sw2)`` / getReader,
observers, error-checking chains), so pyscard-based code runs against the emulator in unit
tests. Power follows PC/SC: connect powers an unpowered card; disconnect and reconnect apply
their disposition (LEAVE nothing, RESET ``card.reset()``, UNPOWER/EJECT ``card.power_off()``,
and reconnect with UNPOWER powers on again). Without pyscard installed a stand-in base class
with the same method names is used.

The reader can lose its card as a real one does: ``InProcessReader.remove()`` takes the card
out (it loses power; every open connection then raises ``CardConnectionException`` with
``SCARD_W_REMOVED_CARD`` until it reconnects), ``insert()`` puts it (or another card) back, and
``power_cycle()`` is both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import CardLike

__all__ = [
    "SCARD_EJECT_CARD",
    "SCARD_E_NO_SMARTCARD",
    "SCARD_LEAVE_CARD",
    "SCARD_RESET_CARD",
    "SCARD_UNPOWER_CARD",
    "SCARD_W_REMOVED_CARD",
    "CardConnectionException",
    "InProcessConnection",
    "InProcessReader",
]

# PC/SC dispositions (same values as smartcard.scard).
SCARD_LEAVE_CARD, SCARD_RESET_CARD, SCARD_UNPOWER_CARD, SCARD_EJECT_CARD = 0, 1, 2, 3
# pcsc-lite's codes for "the card was removed" and "no card in the reader".
SCARD_W_REMOVED_CARD, SCARD_E_NO_SMARTCARD = 0x80100069, 0x8010000C

try:
    from smartcard.CardConnection import CardConnection as _Base
    from smartcard.Exceptions import CardConnectionException
except ImportError:  # pyscard missing: same surface, no observers

    class CardConnectionException(Exception):  # type: ignore[no-redef]
        """Stand-in for ``smartcard.Exceptions.CardConnectionException``."""

        def __init__(self, message: str = "", hresult: int = -1) -> None:
            super().__init__(message)
            self.hresult = hresult

    class _Base:  # type: ignore[no-redef]
        """Stand-in for ``smartcard.CardConnection.CardConnection``."""

        T0_protocol = 0x00000001
        T1_protocol = 0x00000002
        RAW_protocol = 0x00010000
        T15_protocol = 0x00000008

        def __init__(self, reader: Any) -> None:
            self.reader = reader
            self.errorcheckingchain: Any = None
            self.defaultprotocol = self.T0_protocol | self.T1_protocol

        def connect(
            self, protocol: int | None = None, mode: int | None = None, disposition: int | None = None
        ) -> None:
            pass

        def reconnect(
            self, protocol: int | None = None, mode: int | None = None, disposition: int | None = None
        ) -> None:
            pass

        def disconnect(self) -> None:
            pass

        def release(self) -> None:
            pass

        def getProtocol(self) -> int:
            return self.defaultprotocol

        def setProtocol(self, protocol: int) -> None:
            self.defaultprotocol = protocol

        def getReader(self) -> Any:
            return self.reader

        def setErrorCheckingChain(self, errorcheckingchain: Any) -> None:
            self.errorcheckingchain = errorcheckingchain

        def addObserver(self, observer: Any) -> None:
            raise NotImplementedError("observers need pyscard")

        def getAttrib(self, attribId: int) -> list[int]:
            return self.doGetAttrib(attribId)

        def control(self, controlCode: int, command: Any = None) -> list[int]:
            return []

        def transmit(self, command: Any, protocol: int | None = None) -> tuple[list[int], int, int]:
            data, sw1, sw2 = self.doTransmit(command, protocol)
            if self.errorcheckingchain is not None:
                self.errorcheckingchain[0](data, sw1, sw2)
            return data, sw1, sw2

        def doTransmit(self, command: Any, protocol: int | None) -> tuple[list[int], int, int]:
            return [], 0, 0

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            self.disconnect()


class InProcessReader:
    """A named slot holding one card; tracks power like pcscd does. Mirrors pyscard's Reader."""

    def __init__(self, card: CardLike, name: str = "mynaemu in-process reader") -> None:
        self.card = card
        self.name = name
        self.powered = False
        self.present = True
        # Counts insertions: a connection made before the last removal is a stale handle.
        self.insertions = 1

    def createConnection(self) -> InProcessConnection:
        """A new connection to this reader's card."""
        return InProcessConnection(self)

    def power_on(self) -> None:
        """Power the card if it is not; CardConnectionException when the reader is empty."""
        if not self.present:
            raise CardConnectionException("no card in the reader", hresult=SCARD_E_NO_SMARTCARD)
        if not self.powered:
            self.card.power_on()
            self.powered = True

    def remove(self) -> None:
        """Take the card out: it loses power (and its security status); open connections go stale."""
        if self.present:
            self.card.power_off()
            self.powered = False
            self.present = False

    def insert(self, card: CardLike | None = None) -> None:
        """Put the card (or ``card``) in, unpowered; connections made before need a reconnect."""
        if self.present:
            raise ValueError(f"{self.name}: already holds a card; remove() it first")
        if card is not None:
            self.card = card
        self.present = True
        self.insertions += 1

    def power_cycle(self) -> None:
        """Remove and insert the card again: a cold start, as pulling it out of a reader."""
        self.remove()
        self.insert()

    def dispose(self, disposition: int) -> None:
        """Apply a PC/SC disposition to the card."""
        if disposition == SCARD_RESET_CARD:
            self.card.reset()
            self.powered = True
        elif disposition in (SCARD_UNPOWER_CARD, SCARD_EJECT_CARD):
            self.card.power_off()
            self.powered = False

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"InProcessReader({self.name!r})"


class InProcessConnection(_Base):
    """``smartcard.CardConnection.CardConnection`` over a card object in this process."""

    def __init__(self, card_or_reader: CardLike | InProcessReader, reader: str | None = None) -> None:
        if isinstance(card_or_reader, InProcessReader):
            slot = card_or_reader
        else:
            slot = InProcessReader(card_or_reader, reader or "mynaemu in-process reader")
        super().__init__(slot)
        self.slot = slot
        self.connected = False
        self.disposition = SCARD_UNPOWER_CARD
        self._insertion = slot.insertions

    @property
    def card(self) -> CardLike:
        """The card behind this connection."""
        return self.slot.card

    def connect(
        self, protocol: int | None = None, mode: int | None = None, disposition: int | None = None
    ) -> None:
        """Connect (powers the card if needed); default disposition UNPOWER, as pyscard's."""
        super().connect(protocol, mode, disposition)
        self.slot.power_on()
        self._insertion = self.slot.insertions
        self.disposition = SCARD_UNPOWER_CARD if disposition is None else disposition
        self.connected = True

    def reconnect(
        self, protocol: int | None = None, mode: int | None = None, disposition: int | None = None
    ) -> None:
        """Reconnect; default disposition RESET (warm reset), UNPOWER = cold reset."""
        super().reconnect(protocol, mode, disposition)
        if not self.connected:
            raise CardConnectionException("Card not connected")
        init = SCARD_RESET_CARD if disposition is None else disposition
        if self._insertion == self.slot.insertions:
            self.slot.dispose(init)
        self.slot.power_on()  # a card inserted since: powered afresh, whatever the disposition
        self._insertion = self.slot.insertions
        self.disposition = init

    def disconnect(self) -> None:
        """Disconnect, applying the stored disposition."""
        if self.connected:
            super().disconnect()
            self.connected = False
            if self._insertion == self.slot.insertions and self.slot.present:
                self.slot.dispose(self.disposition)

    def release(self) -> None:
        """Release: disconnect (there is no context to free)."""
        if self.connected:
            super().release()
        self.disconnect()

    def getATR(self) -> list[int]:
        """ATR as a list of ints."""
        self._require()
        return list(self.card.atr)

    def getReader(self) -> str:
        """Reader name."""
        return str(self.slot)

    def doTransmit(self, command: Any, protocol: int | None = None) -> tuple[list[int], int, int]:
        """Send ``command`` (list of ints or bytes) to the card."""
        self._require()
        rsp = bytes(self.card.transmit(bytes(command)))
        if len(rsp) < 2:
            raise CardConnectionException(f"card answered {len(rsp)} bytes, no status word")
        return list(rsp[:-2]), rsp[-2], rsp[-1]

    def doGetAttrib(self, attribId: int) -> list[int]:
        """Only the ATR attribute (SCARD_ATTR_ATR_STRING) is known."""
        if attribId == 0x00090303:
            return self.getATR()
        return []

    def _require(self) -> None:
        if not self.connected:
            raise CardConnectionException("Card not connected")
        if self._insertion != self.slot.insertions or not self.slot.present:
            raise CardConnectionException("the card was removed; reconnect", hresult=SCARD_W_REMOVED_CARD)
