"""The power-on state (GlobalPlatform issuer security domain, AID A0000001510000).

No EF is readable here (001E selects, READ answers 6981); GET DATA answers the card-level
objects (docs/card-interface.md §2.6).
"""

from __future__ import annotations

from .base import Application


class CardManager(Application):
    """The card manager / MF level."""

    COMMANDS = {
        (0x00, 0xA4): "select_file",
        (0x00, 0xB0): "read_binary",
        (0x00, 0x84): "get_challenge",
        (0x00, 0xCA): "get_data",
    }
