"""The card profile: AIDs, EFs, sizes, access rules and retry limits, loaded from TOML.

The default profile is ``apdu_specs/profile.toml``, package data read through
``importlib.resources`` (so it is found in a wheel as in the source tree); a card keeps its own
copy in its CARD_DIR so that a later change of the default never changes an issued card.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

DEFAULT_PROFILE: Traversable = resources.files("apdu_specs") / "profile.toml"

KEY_FORMATS = ("digits4", "digits6", "digits12", "digits14", "password", "any")
KEY_VALUES = ("secret", "my_number", "check_b", "birth_yymmdd", "none")
KEY_CHANGES = ("iso", "jicsap", "none")
EF_TYPES = ("binary", "record", "pin", "rsa", "opaque")
SIGN_OPS = ("sign", "internal_auth")


class ProfileError(ValueError):
    """The profile file is not a valid card profile; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A key reference (PIN, password or check number) and its retry limit."""

    name: str
    label: str
    limit: int
    format: str
    value: str
    change: str


@dataclass(frozen=True, slots=True)
class EfSpec:
    """One elementary file. ``read`` is None for free access, an empty set for never."""

    fid: int
    type: str
    content: str = ""
    size: int = 0
    filler: int = 0xFF
    read: frozenset[str] | None = None
    key: str = ""
    private_key: str = ""
    ops: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ApSpec:
    """An application DF: its AID, files, GET DATA objects and default signing key."""

    name: str
    aid: bytes
    title: str
    efs: dict[int, EfSpec]
    data_objects: dict[int, str]
    default_key: int | None


@dataclass(frozen=True, slots=True)
class Profile:
    """The whole card profile."""

    path: Path | Traversable
    atr_contact: bytes
    atr_contactless: bytes
    check_b_japanese_era: bool
    keys: dict[str, KeySpec]
    aps: dict[str, ApSpec]

    @classmethod
    def load(cls, path: Path | str | Traversable | None = None) -> Profile:
        """Read and check a profile (default: ``DEFAULT_PROFILE``); raise ProfileError naming what is wrong."""
        p = DEFAULT_PROFILE if path is None else Path(path) if isinstance(path, str) else path
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ProfileError(f"{p}: profile file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{p}: not valid TOML: {exc}") from None
        return _parse(p, raw)

    def text(self) -> str:
        """The profile's source text (copied into a card directory at issuance)."""
        return self.path.read_text(encoding="utf-8")


def _fail(path: Path | Traversable, where: str, msg: str) -> ProfileError:
    return ProfileError(f"{path}: {where}: {msg}")


def _hex(path: Path | Traversable, where: str, value: object) -> bytes:
    try:
        return bytes.fromhex(str(value))
    except ValueError:
        raise _fail(path, where, f"not hex: {value!r}") from None


def _rule(path: Path | Traversable, where: str, value: object, keys: dict[str, KeySpec]) -> frozenset[str] | None:
    if value == "free":
        return None
    if value == "never":
        return frozenset()
    if isinstance(value, list) and value and all(isinstance(k, str) for k in value):
        unknown = [k for k in value if k not in keys]
        if unknown:
            raise _fail(path, where, f"unknown key(s) {unknown} in access rule")
        return frozenset(value)
    raise _fail(path, where, f'access rule must be "free", "never" or a list of key names, not {value!r}')


def _parse(path: Path | Traversable, raw: dict) -> Profile:
    if raw.get("format") != "mynaemu-profile" or raw.get("version") != 1:
        raise _fail(path, "header", 'expected format = "mynaemu-profile" and version = 1')
    card = raw.get("card", {})
    keys: dict[str, KeySpec] = {}
    for name, k in raw.get("keys", {}).items():
        where = f"keys.{name}"
        limit = k.get("limit")
        if not isinstance(limit, int) or not 1 <= limit <= 15:
            raise _fail(path, where, f"limit must be an integer from 1 to 15 (it is the low nibble of 63Cx), not {limit!r}")
        for field, allowed in (("format", KEY_FORMATS), ("value", KEY_VALUES), ("change", KEY_CHANGES)):
            if k.get(field) not in allowed:
                raise _fail(path, where, f"{field} must be one of {allowed}, not {k.get(field)!r}")
        keys[name] = KeySpec(name, str(k.get("label", name)), limit, k["format"], k["value"], k["change"])
    aps: dict[str, ApSpec] = {}
    for name, a in raw.get("aps", {}).items():
        where = f"aps.{name}"
        efs: dict[int, EfSpec] = {}
        for fid_hex, e in a.get("ef", {}).items():
            ew = f"{where}.ef.{fid_hex}"
            fid = int.from_bytes(_hex(path, ew, fid_hex), "big")
            etype = e.get("type")
            if etype not in EF_TYPES:
                raise _fail(path, ew, f"type must be one of {EF_TYPES}, not {etype!r}")
            if etype == "pin" and e.get("key") not in keys:
                raise _fail(path, ew, f"pin EF names unknown key {e.get('key')!r}")
            ops = tuple(e.get("ops", ()))
            if any(op not in SIGN_OPS for op in ops):
                raise _fail(path, ew, f"ops must be among {SIGN_OPS}")
            filler = _hex(path, ew, e.get("filler", "FF"))
            size = e.get("size", 0)
            if not isinstance(size, int) or not 0 <= size <= 0x7FFF:
                raise _fail(path, ew, f"size must be 0..32767, not {size!r}")
            rule_src = e.get("use") if etype == "rsa" else e.get("read", "never" if etype == "opaque" else "free")
            efs[fid] = EfSpec(
                fid=fid,
                type=etype,
                content=str(e.get("content", "")),
                size=size,
                filler=filler[0] if filler else 0xFF,
                read=_rule(path, ew, rule_src if rule_src is not None else "never", keys),
                key=str(e.get("key", "")),
                private_key=str(e.get("private_key", "")),
                ops=ops,
            )
        default_key = a.get("default_key")
        data_objects = {int(t, 16): str(c) for t, c in a.get("data", {}).items()}
        aps[name] = ApSpec(
            name=name,
            aid=_hex(path, where + ".aid", a.get("aid", "")),
            title=str(a.get("title", name)),
            efs=efs,
            data_objects=data_objects,
            default_key=int(default_key, 16) if default_key else None,
        )
    if "mf" not in aps:
        raise _fail(path, "aps", "an [aps.mf] power-on state is required")
    return Profile(
        path=path,
        atr_contact=_hex(path, "card.atr_contact", card.get("atr_contact", "3BE000FF8131FE4514")),
        atr_contactless=_hex(path, "card.atr_contactless", card.get("atr_contactless", "3B888001000005E0B381A1007F")),
        check_b_japanese_era=bool(card.get("check_b_japanese_era", True)),
        keys=keys,
        aps=aps,
    )
