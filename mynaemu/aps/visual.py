"""券面事項確認AP (face-check AP): the card face as images, signed.

EF 0002 (face) opens with 照合番号A or B, EF 0005 (My Number image) with A only, EF 0001 (age
record) with the birth-date key (docs/card-interface.md §2.3). The AP signs challenges with EF 001A
(P2=00). No key here can be changed by the holder.
"""

from __future__ import annotations

from .. import sw
from .base import Application


class VisualAp(Application):
    """The face-check application."""

    COMMANDS = dict(Application.COMMANDS)
    SESSION_KEY_REFUSAL = sw.NO_SESSION_KEY_HERE  # no secure messaging here (MCARD measured it)
