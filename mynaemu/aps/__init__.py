"""The card's applications, one module each; ``APPLICATION_CLASSES`` maps profile names to them."""

from __future__ import annotations

from .base import Application, Session
from .common import CommonAp
from .jpki import JpkiAp
from .juki import JukiAp
from .manager import CardManager
from .text import TextAp
from .visual import VisualAp

APPLICATION_CLASSES: dict[str, type[Application]] = {
    "mf": CardManager,
    "jpki": JpkiAp,
    "text": TextAp,
    "visual": VisualAp,
    "juki": JukiAp,
    "common": CommonAp,
}

__all__ = [
    "APPLICATION_CLASSES",
    "Application",
    "CardManager",
    "CommonAp",
    "JpkiAp",
    "JukiAp",
    "Session",
    "TextAp",
    "VisualAp",
]
