"""Issuing a card: persona, secrets, keys, certificates and files into a new CARD_DIR.

The emulated CAs and CV issuers (``pki.Authority``) are kept once per installation and reused
for every card, as a real issuing authority would. The card directory is assembled in a temporary
sibling and renamed into place, so a failed issuance leaves nothing half-written.
"""

from __future__ import annotations

import os
import secrets as _random
import shutil
import string
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date
from pathlib import Path

from . import carddir
from .carddir import CARD_KINDS
from .content import CardKeys, build_contents
from .keys import format_ok, format_rule
from .persona import Persona, check_number_b, japanese_era_yymmdd
from .pki import Authority, default_authority_dir
from .private_files import make_private_dirs, remove_dirs
from .profile import Profile
from .state import StateStore

# The holder's secrets, by key name. The common AP's PIN is issued with the 住基 PIN's value
# (docs/card-interface.md, D1): the card's user interfaces present them as one PIN.
SECRET_KEYS = ("auth", "sign", "text", "juki")
SECRET_ALIASES = {"common": "juki"}

# card.json "kind" (carddir.CARD_KINDS) marks a card whose secrets are published, so that
# ``mynaemu info --secrets`` shows them: the demo card of ``mynaemu serve`` ("demo") and the test
# cards of ``mynaemu.testing`` ("test"). Other cards have no kind; their secrets are shown once.


class IssuanceError(ValueError):
    """An issuance request that breaks a rule; the message states the rule."""


@dataclass(frozen=True)
class IssuedCard:
    """What issuance returns: where the card is, who it is for and its secrets (shown once)."""

    path: Path
    persona: Persona
    secrets: dict[str, str]


def random_secret(fmt: str) -> str:
    """A random value of a key format (4 digits, or an 8-character signing password)."""
    if fmt == "password":
        alphabet = string.ascii_uppercase + string.digits
        while True:
            value = "".join(_random.choice(alphabet) for _ in range(8))
            if any(c.isalpha() for c in value) and any(c.isdigit() for c in value):
                return value
    digits = {"digits4": 4, "digits6": 6, "digits12": 12, "digits14": 14}[fmt]
    return "".join(_random.choice(string.digits) for _ in range(digits))


def persona_to_json(persona: Persona) -> dict:
    """The persona as JSON-ready values (dates as ISO strings)."""
    return {f.name: (v.isoformat() if isinstance(v := getattr(persona, f.name), date) else v) for f in fields(persona)}


def persona_from_json(doc: dict) -> Persona:
    """Inverse of ``persona_to_json``."""
    values = {}
    for f in fields(Persona):
        v = doc[f.name]
        values[f.name] = date.fromisoformat(v) if f.type in (date, "date", "datetime.date") else v
    return Persona(**values)


def _reference_values(profile: Profile, persona: Persona, secrets: dict[str, str]) -> dict[str, dict]:
    """The initial state of every key: value and a full counter (blocked for 'none' keys)."""
    era = profile.check_b_japanese_era
    out: dict[str, dict] = {}
    for name, spec in profile.keys.items():
        if spec.value == "secret":
            value = secrets[SECRET_ALIASES.get(name, name)]
        elif spec.value == "my_number":
            value = persona.my_number
        elif spec.value == "check_b":
            value = check_number_b(persona, japanese_era=era)
        elif spec.value == "birth_yymmdd":
            value = japanese_era_yymmdd(persona.birth) if era else persona.birth.strftime("%y%m%d")
        else:
            out[name] = {"limit": spec.limit, "tries_left": 0, "value": b""}
            continue
        out[name] = {"limit": spec.limit, "tries_left": spec.limit, "value": value.encode("ascii")}
    return out


def check_secrets(profile: Profile, given: Mapping[str, str | None]) -> dict[str, str]:
    """Fill in random values for missing secrets and check given ones against their format."""
    if not isinstance(given, Mapping):
        raise IssuanceError(f"secrets must be a mapping of key name to value, not {type(given).__name__}")
    unknown = sorted(str(k) for k in given if k not in SECRET_KEYS)
    if unknown:
        known = ", ".join(SECRET_KEYS)
        raise IssuanceError(f"secrets: unknown key name(s) {', '.join(unknown)}; the holder's secrets are {known}")
    out: dict[str, str] = {}
    for name in SECRET_KEYS:
        spec = profile.keys[name]
        value = given.get(name)
        if value is None:
            value = random_secret(spec.format)
        elif not isinstance(value, str):
            raise IssuanceError(f"--{name}-pin: the {spec.label} must be given as a string, not {type(value).__name__}")
        elif not format_ok(spec.format, value.encode("ascii", "replace")):
            raise IssuanceError(f"--{name}-pin: the {spec.label} must be {format_rule(spec.format)}")
        out[name] = value
    return out


def _check_target(root: Path) -> None:
    """Refuse a CARD_DIR that holds a card, is not an empty directory, or lies below a file."""
    try:
        if (root / "card.json").exists() or (root / "state.json").exists():
            raise IssuanceError(
                f"{root}: already holds a card; choose another directory (re-issuing here would reset its retry counters)"
            )
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise IssuanceError(f"{root}: exists and is not an empty directory")
    except OSError as exc:
        raise IssuanceError(f"{root}: cannot be used as a card directory ({exc.strerror or exc})") from None
    for parent in root.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise IssuanceError(f"{root}: {parent} is a file, not a directory; choose a path below a directory")
            break


def issue_card(
    card_dir: Path | str,
    *,
    persona: Persona | None = None,
    secrets: dict[str, str | None] | None = None,
    profile: Profile | Path | str | None = None,
    authority: Authority | None = None,
    keys: CardKeys | None = None,
    variant: str = "default",
    kind: str | None = None,
    tries: dict[str, int] | None = None,
) -> IssuedCard:
    """Issue a new card into ``card_dir`` (which must not hold a card yet).

    ``variant`` names one of the profile's card variants (``Profile.variant_names()``).
    ``keys`` default to six from the installation's key pool (``keypool``: every card its own);
    ``kind`` ("demo" or "test") marks a card whose secrets are published; ``tries`` sets the
    initial tries left per key name (e.g. ``{"auth": 1}``), each from 0 to the key's limit.

    Raises IssuanceError (or ProfileError) for a request that breaks a rule, before anything is
    written; OSError when the card cannot be written (e.g. a full disk), leaving nothing behind.
    """
    if not isinstance(card_dir, str | os.PathLike) or not str(card_dir):
        raise IssuanceError(f"card_dir must be a directory path (str or Path), not {card_dir!r}")
    if kind is not None and kind not in CARD_KINDS:
        raise IssuanceError(f"kind {kind!r}: a card's kind is one of {', '.join(CARD_KINDS)} (or none)")
    root = Path(card_dir)
    _check_target(root)
    if persona is not None and not isinstance(persona, Persona):
        raise IssuanceError(f"persona must be a mynaemu.persona.Persona, not {type(persona).__name__}")
    if authority is not None and not isinstance(authority, Authority):
        raise IssuanceError(f"authority must be a mynaemu.pki.Authority, not {type(authority).__name__}")
    if keys is not None and not isinstance(keys, CardKeys):
        raise IssuanceError(f"keys must be a mynaemu.content.CardKeys, not {type(keys).__name__}")
    prof = profile if isinstance(profile, Profile) else Profile.load(profile)
    if not isinstance(variant, str):
        raise IssuanceError(f"variant must be a string, not {type(variant).__name__}")
    prof = prof.with_variant(variant)
    values = check_secrets(prof, secrets if secrets is not None else {})
    persona = persona or Persona.generate()
    reference = _reference_values(prof, persona, values)
    if tries is not None and not isinstance(tries, Mapping):
        raise IssuanceError(f"tries must be a mapping of key name to tries left, not {type(tries).__name__}")
    for name, count in (tries or {}).items():
        if name not in reference:
            raise IssuanceError(f"tries: no key {name!r} (keys: {', '.join(reference)})")
        limit = reference[name]["limit"]
        if not reference[name]["value"]:
            raise IssuanceError(f"tries: key {name!r} has no value on this card; it stays blocked")
        if type(count) is not int or not 0 <= count <= limit:
            raise IssuanceError(f"tries: {name} takes an integer from 0 to its limit {limit}, not {count!r}")
        reference[name]["tries_left"] = count
    authority = authority or Authority.load_or_create(default_authority_dir())
    keys = keys or CardKeys.from_pool()
    content = build_contents(persona, keys, authority, japanese_era=prof.check_b_japanese_era,
                             basic4_length=prof.basic4_length, trust_model=prof.trust_model)
    prof.check_issued_content(content)  # a card that would not load is never written
    # The card's own identity, bound into every file of its directory: random per card (test
    # cards of one persona share their serial number), so files of two cards never pass as one.
    # Letters only: no PIN, password or hex of one can ever be a substring of it.
    card_id = "".join(_random.choice(string.ascii_lowercase) for _ in range(24))
    meta = {
        "card_id": card_id,
        "persona": persona_to_json(persona),
        "variant": prof.variant,
        "issued_by": "mynaemu (emulated card; not a real My Number card)",
    }
    if kind is not None:
        meta["kind"] = kind
    try:
        profile_text = prof.text()
        # Only the missing parents are made, each 0700 whatever the umask; a failure removes them.
        created = make_private_dirs(root.parent)
    except OSError as exc:
        raise IssuanceError(f"{root}: cannot create its directory ({exc.strerror or exc})") from None
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        carddir.write(staging, profile_text, meta, content, keys.to_pem_dict())
        StateStore(staging / "state.json", card_id).save(reference)
        if root.exists():
            root.rmdir()
        os.rename(staging, root)
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        remove_dirs(created)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write the card into {root} ({exc.strerror or exc}); nothing was issued") from None
        raise
    return IssuedCard(root, persona, values)
