"""Test helpers that know the profile: where each key lives and its right value."""

from __future__ import annotations

from mynaemu.card import Card
from mynaemu.issuance import persona_from_json
from mynaemu.persona import check_number_b, japanese_era_yymmdd

from .conftest import SECRETS


def key_locations(card: Card) -> dict[str, tuple[str, int]]:
    """Key name -> (application, EF id of its key reference)."""
    out = {}
    for ap_name, ap in card.profile.aps.items():
        for fid, ef in ap.efs.items():
            if ef.type == "pin":
                out[ef.key] = (ap_name, fid)
    return out


def right_values(card: Card) -> dict[str, str]:
    """The issued value of every key that has one."""
    persona = persona_from_json(card.dir.meta["persona"])
    values = dict(SECRETS)
    values["common"] = SECRETS["juki"]
    values["text-a"] = values["visual-a"] = persona.my_number
    values["text-b"] = values["visual-b"] = check_number_b(persona, japanese_era=True)
    values["visual-birth"] = japanese_era_yymmdd(persona.birth)
    return values


def wrong_value(right: str) -> str:
    """A value of the same format that is not the right one."""
    last = right[-1]
    repl = "1" if last == "0" else ("B" if last == "A" else ("A" if last.isalpha() else "0"))
    return right[:-1] + repl
