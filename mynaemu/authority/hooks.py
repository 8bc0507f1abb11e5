"""The authority's certificate operations for the scenario controls (``mynaemu.controls``).

Importing this module registers them (``register_certificate_operations``); ``mynaemu ctl CARD
hold|lift|revoke|reissue``, ``serve --interactive`` and the control channel then reach the
status database through them. Each is called holding the card (``Card.operating()``) and judges
time at the card's clock (``card.now()``, which follows the card's clock offset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import controls
from ..card import Card
from ..state import StateError


def _facts(changes: list, status: str) -> dict[str, Any]:
    from .lifecycle import serial_text

    return {"status": status, "serials": {c.which: serial_text(c.serial) for c in changes},
            "changes": [c.describe() for c in changes]}


class AuthorityCertificateOperations:
    """hold, lift, revoke (as ``admin suspend``: keyCompromise) and reissue of a card's certificates."""

    def _run(self, action):
        from .lifecycle import LifecycleError

        try:
            return action()
        except LifecycleError as exc:
            raise controls.ControlError(str(exc)) from None
        except (StateError, OSError) as exc:
            raise controls.ControlFailure(" ".join(str(exc).split())) from None

    def hold(self, card: Card) -> dict[str, Any]:
        from . import lifecycle

        return self._run(lambda: _facts(lifecycle.hold(card, at=card.now()), "on hold"))

    def lift(self, card: Card) -> dict[str, Any]:
        from . import lifecycle

        return self._run(lambda: _facts(lifecycle.lift(card, at=card.now()), "good"))

    def revoke(self, card: Card) -> dict[str, Any]:
        from . import lifecycle

        def revoke() -> dict[str, Any]:
            serial_text = lifecycle.serial_text
            authority = lifecycle.resolve_authority(None)
            crls = lifecycle.suspend(card, authority, at=card.now())
            serials = {w: serial_text(c.serial_number) for w, c in lifecycle.card_certificates(card).items()}
            return {"status": "revoked", "reason": lifecycle.SUSPEND_REASON, "serials": serials,
                    "suspended": card.dir.meta.get("suspended"), "crls": {k: str(v) for k, v in crls.items()}}

        return self._run(revoke)

    def reissue(self, card: Card) -> dict[str, Any]:
        """The office's reissue (再交付): a new card beside this one, these certificates superseded.

        The card being served stays what it is, the old card (its certificates now refused):
        new keys under a running session would be a different card in the same reader.
        """
        from . import lifecycle

        def reissue() -> dict[str, Any]:
            done = lifecycle.reissue(card, _free_sibling(card.dir.path), at=card.now())
            facts = _facts(done.changes, "superseded")
            facts["new_card_dir"] = str(done.issued.path)  # type: ignore[attr-defined]
            return facts

        return self._run(reissue)


def _free_sibling(path: Path) -> Path:
    """``CARD_DIR-reissued``, or ``-reissued-2``, ``-3``… when taken: a reissue never overwrites."""
    candidate = path.with_name(path.name + "-reissued")
    n = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}-reissued-{n}")
        n += 1
    return candidate


controls.register_certificate_operations(AuthorityCertificateOperations())
