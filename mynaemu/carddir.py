"""The files of one issued card in its CARD_DIR, read and written.

    profile.toml   the profile the card was issued with (a copy; the card never re-reads the default)
    card.json      card id, persona, issuance facts (no secrets besides the persona's own data)
    content.json   every EF body and GET DATA object, hex
    keys.json      the card's private keys, PKCS#8 PEM (0600)
    state.json     retry counters and reference values (0600), see ``state``

Every file is created 0600 in a 0700 directory: the persona and content hold the My Number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .profile import Profile, ProfileError
from .state import StateError, atomic_write, read_json

CARD_FORMAT, CONTENT_FORMAT, KEYS_FORMAT = "mynaemu-card", "mynaemu-content", "mynaemu-keys"
VERSION = 1


@dataclass(slots=True)
class CardDir:
    """What a card directory holds, parsed."""

    path: Path
    profile: Profile
    meta: dict
    content: dict[str, bytes | list[bytes]]
    key_pems: dict[str, str]

    @property
    def card_id(self) -> str:
        return self.meta["card_id"]

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"


def _decode_content(path: Path, objects: object) -> dict[str, bytes | list[bytes]]:
    if not isinstance(objects, dict):
        raise StateError(f"{path}: has no 'objects' table")
    out: dict[str, bytes | list[bytes]] = {}
    try:
        for name, value in objects.items():
            out[name] = [bytes.fromhex(v) for v in value] if isinstance(value, list) else bytes.fromhex(value)
    except (TypeError, ValueError):
        raise StateError(f"{path}: object {name!r} is not hex") from None
    return out


def load(path: Path | str) -> CardDir:
    """Read a card directory; raise StateError naming the file that is missing or broken."""
    root = Path(path)
    if not root.is_dir():
        raise StateError(f"{root}: no card directory here (issue one with `mynaemu issue {root}`)")
    try:
        profile = Profile.load(root / "profile.toml")
    except ProfileError as exc:
        raise StateError(str(exc)) from None
    meta = read_json(root / "card.json", CARD_FORMAT, VERSION)
    card_id = meta.get("card_id")
    if not isinstance(card_id, str):
        raise StateError(f"{root / 'card.json'}: has no card_id")
    docs = {}
    for name, fmt in (("content.json", CONTENT_FORMAT), ("keys.json", KEYS_FORMAT)):
        doc = read_json(root / name, fmt, VERSION)
        if doc.get("card_id") != card_id:
            raise StateError(
                f"{root / name}: belongs to card {doc.get('card_id')!r}, but {root / 'card.json'} "
                f"says this is card {card_id!r}; the directory mixes files of two cards"
            )
        docs[name] = doc
    content = _decode_content(root / "content.json", docs["content.json"].get("objects"))
    key_pems = docs["keys.json"].get("keys")
    if not isinstance(key_pems, dict):
        raise StateError(f"{root / 'keys.json'}: has no 'keys' table")
    return CardDir(root, profile, meta, content, key_pems)


def _json(doc: dict) -> bytes:
    return json.dumps(doc, indent=1, ensure_ascii=False, sort_keys=True).encode()


def write(
    root: Path, profile_text: str, meta: dict, content: dict[str, bytes | list[bytes]], key_pems: dict[str, str]
) -> None:
    """Write every file but state.json (the caller creates it with ``StateStore.save``)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    root.chmod(0o700)
    card_id = meta["card_id"]
    objects = {k: [r.hex() for r in v] if isinstance(v, list) else v.hex() for k, v in content.items()}
    atomic_write(root / "profile.toml", profile_text.encode())
    head = {"version": VERSION, "card_id": card_id}
    atomic_write(root / "content.json", _json({"format": CONTENT_FORMAT, **head, "objects": objects}))
    atomic_write(root / "keys.json", _json({"format": KEYS_FORMAT, **head, "keys": key_pems}))
    # card.json last: its presence marks a complete card.
    atomic_write(root / "card.json", _json({"format": CARD_FORMAT, "version": VERSION, **meta}))
