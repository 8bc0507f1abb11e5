"""共通カードAP (common card AP), AID ...0100: card identification and INTERNAL AUTHENTICATE.

Record EF 0001 holds serial, municipality and expiry; key 0019 answers INTERNAL AUTHENTICATE
without credential; the 4-digit PIN at 001C changes with 80 32 00 80 (docs/card-interface.md §2.4).
"""

from __future__ import annotations

from .. import sw
from .base import Application


class CommonAp(Application):
    """The common card application."""

    COMMANDS = {**Application.COMMANDS, (0x80, 0x32): "change_key"}
    SESSION_KEY_REFUSAL = sw.NO_SESSION_KEY_HERE  # no secure messaging here (MCARD measured it)
