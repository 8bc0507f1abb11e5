"""JPKI-AP (公的個人認証AP): the user-authentication and signing certificates and keys.

Signing (80 2A) with EF 0017 needs the auth PIN (0018) verified, with EF 001A the signing
password (001B); the signing certificate (EF 0001) is read only with the signing password
(spec Part B §2.1, §5.1). PINs change with CHANGE REFERENCE DATA 00 24 01 80.
"""

from __future__ import annotations

from .. import sw
from .base import Application


class JpkiAp(Application):
    """The JPKI application."""

    COMMANDS = {**Application.COMMANDS, (0x00, 0x24): "change_reference_data"}
    SESSION_KEY_REFUSAL = sw.SECURITY_STATUS_NOT_SATISFIED  # no secure messaging here (MCARD measured it)
