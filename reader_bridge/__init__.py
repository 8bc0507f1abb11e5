"""PC/SC bridge: exposes sans-I/O cards as vsmartcard ``vpcd`` virtual readers.

The card side is any object of the :class:`CardLike` protocol. :mod:`reader_bridge.vpcd`
speaks vpcd's socket protocol, :mod:`reader_bridge.pcscd` starts and watches pcscd,
:mod:`reader_bridge.serve` ties both together, :mod:`reader_bridge.inprocess` offers a
pyscard ``CardConnection`` without pcscd, and :mod:`reader_bridge.trace` writes APDU traces.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class CardLike(Protocol):
    """What the bridge needs from a card (``mynaemu.Card`` fits it)."""

    @property
    def atr(self) -> bytes:
        """Current ATR."""
        ...

    @property
    def current_ap(self) -> str | None:
        """Name of the selected application, or None."""
        ...

    def power_on(self) -> bytes:
        """Cold start; returns the ATR."""
        ...

    def reset(self) -> bytes:
        """Warm reset; returns the ATR."""
        ...

    def power_off(self) -> None:
        """Remove power."""
        ...

    def transmit(self, apdu: bytes) -> bytes:
        """Process one command APDU; returns response data + SW1 SW2."""
        ...


class CardWrapper:
    """A card in front of another: passes everything to ``self.card``; subclasses override what they add.

    For what stands between a card and its reader (fault injectors, recorders): they keep the
    :class:`CardLike` shape without restating it.
    """

    card: CardLike

    @property
    def atr(self) -> bytes:
        return self.card.atr

    @property
    def current_ap(self) -> str | None:
        return self.card.current_ap

    def power_on(self) -> bytes:
        return self.card.power_on()

    def reset(self) -> bytes:
        return self.card.reset()

    def power_off(self) -> None:
        self.card.power_off()

    def transmit(self, apdu: bytes) -> bytes:
        return self.card.transmit(apdu)


_LAZY = {
    "VpcdLink": "reader_bridge.vpcd",
    "VirtualReaderSet": "reader_bridge.vpcd",
    "VPCD_PORT": "reader_bridge.vpcd",
    "ApduTrace": "reader_bridge.trace",
    "EchoCard": "reader_bridge.echo",
    "PcscdHarness": "reader_bridge.pcscd",
    "find_vpcd_readers": "reader_bridge.pcscd",
    "wait_for_card": "reader_bridge.pcscd",
    "reader_name": "reader_bridge.pcscd",
    "InProcessConnection": "reader_bridge.inprocess",
    "InProcessReader": "reader_bridge.inprocess",
}
# serve() is not re-exported: the submodule of the same name would shadow it once imported.
# Use ``from reader_bridge.serve import serve``.

__all__ = ["CardLike", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import submodules on first use so ``import reader_bridge`` stays cheap."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'reader_bridge' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
