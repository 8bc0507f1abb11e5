"""The files of one issued card in its CARD_DIR, read and written.

    profile.toml   the profile the card was issued with (a copy; the card never re-reads the default)
    card.json      card id, persona, issuance facts, "kind" for demo and test cards (no secrets
                   besides the persona's own data)
    content.json   every EF body and GET DATA object, hex
    keys.json      the card's private keys, PKCS#8 PEM (0600)
    state.json     retry counters and reference values (0600), see ``state``

Every file is created 0600 in a 0700 directory: the persona and content hold the My Number.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .profile import Profile, ProfileError
from .state import StateError, atomic_write, read_json

CARD_FORMAT, CONTENT_FORMAT, KEYS_FORMAT = "mynaemu-card", "mynaemu-content", "mynaemu-keys"
VERSION = 1
# card.json "kind": a card whose secrets are published (the demo card, test cards); absent otherwise.
CARD_KINDS = ("demo", "test")


@dataclass(slots=True)
class CardDir:
    """What a card directory holds, parsed."""

    path: Path
    profile: Profile
    meta: dict
    content: dict[str, bytes | list[bytes]]
    keys: dict[str, rsa.RSAPrivateKey]

    @property
    def card_id(self) -> str:
        return self.meta["card_id"]

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"


_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")

# Certificates whose public key must be that of a private key in keys.json: a keys.json of
# another card, or one edited by hand, would otherwise sign with a key no certificate vouches for.
_CERTIFIED_KEYS = (("jpki.auth_cert", "jpki.auth"), ("jpki.sign_cert", "jpki.sign"))


def _hex(path: Path, where: str, value: object) -> bytes:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise StateError(f"{path}: {where} must be a string of hex digit pairs")
    return bytes.fromhex(value)


def _decode_content(path: Path, objects: object) -> dict[str, bytes | list[bytes]]:
    if not isinstance(objects, dict):
        raise StateError(f"{path}: has no 'objects' table")
    out: dict[str, bytes | list[bytes]] = {}
    for name, value in objects.items():
        if isinstance(value, list):
            out[name] = [_hex(path, f"objects.{name}[{i}]", v) for i, v in enumerate(value)]
        else:
            out[name] = _hex(path, f"objects.{name}", value)
    return out


def _decode_keys(path: Path, pems: object) -> dict[str, rsa.RSAPrivateKey]:
    """Every private key of keys.json, parsed: a broken one is refused now, not at its first use."""
    if not isinstance(pems, dict):
        raise StateError(f"{path}: has no 'keys' table")
    out: dict[str, rsa.RSAPrivateKey] = {}
    for name, pem in pems.items():
        if not isinstance(pem, str):
            raise StateError(f"{path}: keys.{name} must be a PEM string")
        try:
            # Our own keys, written at issuance: OpenSSL's consistency check (~27 ms a key) adds
            # nothing that the certificate check below does not.
            key = load_pem_private_key(pem.encode("ascii"), None, unsafe_skip_rsa_key_validation=True)
        except (ValueError, TypeError, UnicodeError, UnsupportedAlgorithm):
            raise StateError(f"{path}: keys.{name} is not a readable PEM private key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise StateError(f"{path}: keys.{name} is not an RSA private key")
        out[name] = key
    return out


def _check_certificates(root: Path, content: dict[str, bytes | list[bytes]], keys: dict[str, rsa.RSAPrivateKey]) -> None:
    for cert_id, key_id in _CERTIFIED_KEYS:
        der, key = content.get(cert_id), keys.get(key_id)
        if not isinstance(der, bytes) or not der or key is None:  # b"": no signing certificate (under 15)
            continue
        try:
            cert = x509.load_der_x509_certificate(der)
            public = cert.public_key()
        except ValueError:
            raise StateError(f"{root / 'content.json'}: objects.{cert_id} is not a readable X.509 certificate") from None
        if not isinstance(public, rsa.RSAPublicKey) or public.public_numbers() != key.public_key().public_numbers():
            raise StateError(
                f"{root / 'keys.json'}: keys.{key_id} is not the key of the certificate objects.{cert_id} "
                "in content.json; the directory mixes files of two cards"
            )


def load(path: Path | str, *, dir_fd: int | None = None) -> CardDir:
    """Read a card directory; raise StateError naming the file that is missing or broken.

    ``dir_fd``, an open descriptor of the directory (the card's lock), is where the JSON files
    are read from.
    """
    root = Path(path)
    if not root.is_dir():
        raise StateError(f"{root}: no card directory here (issue one with `mynaemu issue {root}`)")
    try:
        profile = Profile.load(root / "profile.toml")
    except ProfileError as exc:
        raise StateError(str(exc)) from None
    except OSError as exc:
        raise StateError(f"{root / 'profile.toml'}: cannot be read ({exc.strerror or exc})") from None
    meta = read_json(root / "card.json", CARD_FORMAT, VERSION, dir_fd=dir_fd)
    card_id = meta.get("card_id")
    if not isinstance(card_id, str) or not card_id:
        raise StateError(f"{root / 'card.json'}: has no card_id")
    variant = meta.get("variant", "default")
    try:
        profile = profile.with_variant(variant) if isinstance(variant, str) else None
    except ProfileError as exc:
        raise StateError(f"{root / 'card.json'}: variant: {exc}") from None
    if profile is None:
        raise StateError(f"{root / 'card.json'}: variant must be a string, not {variant!r}")
    if not isinstance(meta.get("persona"), dict):
        raise StateError(f"{root / 'card.json'}: has no valid persona (a table of the holder's facts)")
    if "kind" in meta and meta["kind"] not in CARD_KINDS:
        raise StateError(f"{root / 'card.json'}: kind must be one of {', '.join(CARD_KINDS)} (or absent), not {meta['kind']!r}")
    docs = {}
    for name, fmt in (("content.json", CONTENT_FORMAT), ("keys.json", KEYS_FORMAT)):
        doc = read_json(root / name, fmt, VERSION, dir_fd=dir_fd)
        if doc.get("card_id") != card_id:
            raise StateError(
                f"{root / name}: belongs to card {doc.get('card_id')!r}, but {root / 'card.json'} "
                f"says this is card {card_id!r}; the directory mixes files of two cards"
            )
        docs[name] = doc
    content = _decode_content(root / "content.json", docs["content.json"].get("objects"))
    keys = _decode_keys(root / "keys.json", docs["keys.json"].get("keys"))
    _check_certificates(root, content, keys)
    return CardDir(root, profile, meta, content, keys)


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
