"""The authority's certificate operations for the scenario controls (``mynaemu.controls``).

Importing this module registers them (``register_certificate_operations``); ``mynaemu ctl CARD
hold|lift|revoke|reissue``, ``serve --interactive`` and the control channel then reach the
status database through them. Each is called holding the card (``Card.operating()``) and judges
time at the card's clock (``card.now()``, which follows the card's clock offset).
"""

from __future__ import annotations

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
        # New keys on the card being served would change the key EFs under a running session; a
        # reissue is a new card (as 再交付 is): `mynaemu admin CARD reissue NEW_DIR`.
        raise controls.NotAvailable(f"reissue: not on a served card; `mynaemu admin {card.dir.path} reissue NEW_DIR` "
                                    "issues the new card and revokes these certificates as superseded")


controls.register_certificate_operations(AuthorityCertificateOperations())
