"""券面事項入力補助AP (input-assist AP): My Number and the basic four facts as text.

EF 0001 (My Number) opens with the PIN or 照合番号A, EF 0002 (basic four) with the PIN or
照合番号B (docs/card-interface.md §2.2). The AP signs challenges with its own key (EF 0013, P2=00) with no
credential. The PIN changes with CHANGE REFERENCE DATA 00 24 01 80.
"""

from __future__ import annotations

from .base import Application


class TextAp(Application):
    """The input-assist application."""

    COMMANDS = {**Application.COMMANDS, (0x00, 0x24): "change_reference_data"}
