"""A card that answers 9000 to everything: the transport floor for benchmarks."""

from __future__ import annotations

__all__ = ["ECHO_ATR", "EchoCard"]

# T0=80 (TD1 follows, no historical bytes), TD1=80 (T=0, TD2 follows), TD2=01 (T=1), TCK=01.
ECHO_ATR = bytes.fromhex("3B80800101")
_OK = b"\x90\x00"


class EchoCard:
    """Minimal :class:`reader_bridge.CardLike`: every APDU → ``9000``; counts APDUs."""

    current_ap: str | None = None

    def __init__(self, atr: bytes = ECHO_ATR) -> None:
        self._atr = atr
        self.apdus = 0
        self.powered = False

    @property
    def atr(self) -> bytes:
        return self._atr

    def power_on(self) -> bytes:
        self.powered = True
        return self._atr

    def reset(self) -> bytes:
        self.powered = True
        return self._atr

    def power_off(self) -> None:
        self.powered = False

    def transmit(self, apdu: bytes) -> bytes:
        self.apdus += 1
        return _OK
