"""住基AP (resident-registry AP), AID ...0401 (docs/card-interface.md, D1): a 4-digit PIN at EF 001C.

The PIN changes with the JICSAP CHANGE KEY command 80 32 00 80 after a successful VERIFY.
"""

from __future__ import annotations

from .. import sw
from .base import Application


class JukiAp(Application):
    """The resident-registry application."""

    COMMANDS = {**Application.COMMANDS, (0x80, 0x32): "change_key"}
    SESSION_KEY_REFUSAL = sw.SECURITY_STATUS_NOT_SATISFIED  # no secure messaging here (MCARD measured it)
