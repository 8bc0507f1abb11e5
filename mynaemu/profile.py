"""The card profile: AIDs, EFs, sizes, access rules and retry limits, loaded from TOML.

The default profile is ``apdu_specs/profile.toml``, package data read through
``importlib.resources`` (so it is found in a wheel as in the source tree); a card keeps its own
copy in its CARD_DIR so that a later change of the default never changes an issued card.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

DEFAULT_PROFILE: Traversable = resources.files("apdu_specs") / "profile.toml"
# Parsed profiles by the SHA-256 of their text (a handful: the default and its variants' copies).
_parsed: dict[bytes, Profile] = {}
_PARSED_KEPT = 32

KEY_FORMATS = ("digits4", "digits6", "digits12", "digits14", "password", "any")
KEY_VALUES = ("secret", "my_number", "check_b", "birth_yymmdd", "none")
KEY_CHANGES = ("iso", "jicsap", "none")
EF_TYPES = ("binary", "record", "pin", "rsa", "opaque", "cv_key")
SIGN_OPS = ("sign", "internal_auth")
# The issuer's private keys an rsa EF may name (mynaemu.content.KEY_IDS maps them to the keys).
PRIVATE_KEY_NAMES = ("jpki.auth", "jpki.sign", "text.ap", "text.sm", "visual.ap", "common.ia")
# Keys whose value the holder chooses (issuance: auth, sign, text, juki; common takes juki's).
SECRET_KEY_NAMES = ("auth", "sign", "text", "juki", "common")
ATR_SIZES = range(2, 34)  # TS and T0 at least; ISO 7816-3 allows 33 bytes at most
TOP_FIELDS = ("format", "version", "card", "keys", "aps", "variants")
# Card settings: each one may also be changed by a named variant ([variants.NAME]).
CARD_SETTINGS = ("interface", "basic4_length", "reselect_keeps_status", "get_data_template", "trust_model")
CARD_FIELDS = ("atr_contact", "atr_contactless", "check_b_japanese_era", *CARD_SETTINGS)
VARIANT_FIELDS = ("description", *CARD_SETTINGS)
INTERFACES = ("contact", "contactless")
BASIC4_LENGTHS = ("short", "long")
GET_DATA_TEMPLATES = ("contents", "whole")
TRUST_MODELS = ("municipality", "ap-key")
KEY_FIELDS = ("label", "limit", "format", "value", "change")
AP_FIELDS = ("aid", "title", "ef", "data", "default_key", "session_key", "session_key_use")
EF_FIELDS = ("type", "content", "size", "filler", "read", "use", "key", "private_key", "ops")


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
    # SET SESSION KEY (80 AE): the private key the seed is encrypted to, and the keys any one of
    # which must be verified first; "" where the AP has no secure messaging.
    session_key: str = ""
    session_key_use: frozenset[str] | None = frozenset()  # None: no credential needed


@dataclass(frozen=True, slots=True)
class Profile:
    """The whole card profile."""

    path: Path | Traversable
    atr_contact: bytes
    atr_contactless: bytes
    check_b_japanese_era: bool
    keys: dict[str, KeySpec]
    aps: dict[str, ApSpec]
    # Where real cards differ (docs/card-interface.md, D13): the interface a card answers on by
    # default, the length form of the text AP's basic-four record (FF 20 LL or FF 20 82 HH LL),
    # whether re-selecting the current AP keeps its security status, and whether GET DATA of a
    # constructed object (7F21) answers its contents or the whole object.
    interface: str = "contact"
    basic4_length: str = "short"
    reselect_keeps_status: bool = False
    get_data_template: str = "contents"
    # What EF 0004 of the 券面 APs certifies: a municipality key that signs the records, or the
    # AP's own key (the model of earlier mynaemu versions).
    trust_model: str = "municipality"
    variants: dict[str, dict[str, object]] = field(default_factory=dict)
    variant: str = "default"

    def with_variant(self, name: str) -> Profile:
        """This profile with the settings of variant ``name`` ("default": as written)."""
        if name == "default":
            return self
        overrides = self.variants.get(name)
        if overrides is None:
            choices = ", ".join(["default", *self.variants])
            raise ProfileError(f"{self.path}: no variant {name!r}; variants: {choices}")
        settings = {k: v for k, v in overrides.items() if k != "description"}
        return replace(self, **settings, variant=name)  # type: ignore[arg-type]

    def variant_names(self) -> list[str]:
        """Every variant this profile can issue, "default" first."""
        return ["default", *self.variants]

    @classmethod
    def load(cls, path: Path | str | Traversable | None = None) -> Profile:
        """Read and check a profile (default: ``DEFAULT_PROFILE``); raise ProfileError naming the file
        and field that is wrong."""
        if path is None:
            p: Path | Traversable = DEFAULT_PROFILE
        elif isinstance(path, str | os.PathLike):
            p = Path(path)
        elif isinstance(path, Traversable):
            p = path
        else:
            raise ProfileError(f"a profile is given by its file path (str or Path), not {type(path).__name__}")
        try:
            if isinstance(p, Path):
                st = p.stat()
                if not stat.S_ISREG(st.st_mode):
                    what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                    raise ProfileError(f"{p}: is {what}; give the profile's .toml file")
            text = p.read_text(encoding="utf-8")
            digest = hashlib.sha256(text.encode()).digest()
            parsed = _parsed.get(digest)
            if parsed is not None:
                # Every card carries a copy of its profile: 1,000 cards loaded share one parse
                # (the profile is frozen and never changed after parsing), each with its own path.
                return parsed if parsed.path == p else replace(parsed, path=p)
            raw = tomllib.loads(text)
        except FileNotFoundError:
            raise ProfileError(f"{p}: profile file not found") from None
        except PermissionError:
            raise ProfileError(f"{p}: cannot be read (permission denied)") from None
        except OSError as exc:
            raise ProfileError(f"{p}: cannot be read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise ProfileError(f"{p}: not valid TOML: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{p}: not valid TOML: {exc}") from None
        except RecursionError:
            raise ProfileError(f"{p}: not valid TOML: nested too deeply") from None
        profile = _parse(p, raw)
        if len(_parsed) >= _PARSED_KEPT:
            _parsed.clear()
        _parsed[digest] = profile
        return profile

    def check_issued_content(self, content: Mapping[str, object]) -> None:
        """Refuse a profile whose EFs name content that was not issued or is larger than the EF.

        Issuance calls this before writing anything: such a card would not load.
        """
        for ap in self.aps.values():
            for fid, ef in ap.efs.items():
                where = f"aps.{ap.name}.ef.{fid:04X}"
                if ef.type not in ("binary", "record") or not ef.content:
                    continue
                if ef.content not in content:
                    raise _fail(self.path, where, f"content {ef.content!r} is not issued content; known: {', '.join(content)}")
                body = content[ef.content]
                if ef.type == "binary" and isinstance(body, bytes) and ef.size and len(body) > ef.size:
                    raise _fail(self.path, where, f"size {ef.size} is below its content {ef.content!r} "
                                                  f"({len(body)} bytes); make it at least {len(body)} or 0 (= the content)")
            for tag, cid in ap.data_objects.items():
                if cid not in content:
                    raise _fail(self.path, f"aps.{ap.name}.data.{tag:04X}", f"content {cid!r} is not issued content")

    def text(self) -> str:
        """The profile's source text (copied into a card directory at issuance)."""
        return self.path.read_text(encoding="utf-8")


def _fail(path: Path | Traversable, where: str, msg: str) -> ProfileError:
    return ProfileError(f"{path}: {where}: {msg}")


def _table(path: Path, where: str, value: object, fields: tuple[str, ...] | None = None) -> dict:
    """A TOML table; with ``fields``, one holding no other keys (a typo is never ignored)."""
    if not isinstance(value, dict):
        raise _fail(path, where, f"must be a table, not {_kind(value)}")
    if fields is not None:
        unknown = sorted(k for k in value if k not in fields)
        if unknown:
            raise _fail(path, where, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    return value


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _str(path: Path, where: str, value: object) -> str:
    if not isinstance(value, str):
        raise _fail(path, where, f"must be a string, not {_kind(value)}")
    return value


def _hex(path: Path, where: str, value: object, sizes: range | None = None, what: str = "") -> bytes:
    """Hex text (spaces allowed) of a byte count in ``sizes``."""
    if not isinstance(value, str):
        raise _fail(path, where, f"must be a hex string, not {_kind(value)}")
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise _fail(path, where, f"not hex: {value!r}") from None
    if sizes is not None and len(data) not in sizes:
        count = f"{sizes.start}" if len(sizes) == 1 else f"{sizes.start} to {sizes.stop - 1}"
        raise _fail(path, where, f"{what or 'the value'} must be {count} bytes, not {len(data)}: {value!r}")
    return data


def _rule(path: Path | Traversable, where: str, value: object, keys: dict[str, KeySpec]) -> frozenset[str] | None:
    if value == "free":
        return None
    if value == "never":
        return frozenset()
    if isinstance(value, list) and value and all(isinstance(k, str) for k in value):
        unknown = [k for k in value if k not in keys]
        if unknown:
            raise _fail(path, where, f"unknown key(s) {unknown} in access rule; keys: {', '.join(keys)}")
        return frozenset(value)
    raise _fail(path, where, f'access rule must be "free", "never" or a list of key names, not {value!r}')


def _key(path: Path, name: str, value: object) -> KeySpec:
    where = f"keys.{name}"
    k = _table(path, where, value, KEY_FIELDS)
    limit = k.get("limit")
    if type(limit) is not int or not 1 <= limit <= 15:
        raise _fail(path, where, f"limit must be an integer from 1 to 15 (it is the low nibble of 63Cx), not {limit!r}")
    for fname, allowed in (("format", KEY_FORMATS), ("value", KEY_VALUES), ("change", KEY_CHANGES)):
        if k.get(fname) not in allowed:
            raise _fail(path, where, f"{fname} must be one of {allowed}, not {k.get(fname)!r}")
    if k["value"] == "secret":
        if name not in SECRET_KEY_NAMES:
            raise _fail(path, where, f'value = "secret" is only for the holder\'s secrets {SECRET_KEY_NAMES}')
        if k["format"] == "any":
            raise _fail(path, where, 'a "secret" key needs a format a PIN can be drawn in (not "any")')
    label = _str(path, where + ".label", k.get("label", name))
    return KeySpec(name, label, limit, k["format"], k["value"], k["change"])


def _ef(path: Path, where: str, fid_hex: str, value: object, keys: dict[str, KeySpec]) -> EfSpec:
    e = _table(path, where, value, EF_FIELDS)
    if len(fid_hex) != 4:
        raise _fail(path, where, f"a file id is 2 bytes, 4 hex digits (e.g. \"0018\"), not {fid_hex!r}")
    fid = int.from_bytes(_hex(path, where, fid_hex, range(2, 3), "a file id"), "big")
    etype = e.get("type")
    if etype not in EF_TYPES:
        raise _fail(path, where, f"type must be one of {EF_TYPES}, not {etype!r}")
    key = _str(path, where + ".key", e.get("key", ""))
    if etype == "pin" and key not in keys:
        raise _fail(path, where, f"pin EF names unknown key {e.get('key')!r}; keys: {', '.join(keys)}")
    private_key = _str(path, where + ".private_key", e.get("private_key", ""))
    if etype == "rsa" and private_key not in PRIVATE_KEY_NAMES:
        raise _fail(path, where, f"private_key must be one of {PRIVATE_KEY_NAMES}, not {e.get('private_key')!r}")
    ops_raw = e.get("ops", [])
    if not isinstance(ops_raw, list) or any(op not in SIGN_OPS for op in ops_raw):
        raise _fail(path, where, f"ops must be a list among {SIGN_OPS}, not {ops_raw!r}")
    filler = _hex(path, where + ".filler", e.get("filler", "FF"), range(1, 2), "a filler")
    size = e.get("size", 0)
    if type(size) is not int or not 0 <= size <= 0x7FFF:
        raise _fail(path, where, f"size must be an integer 0..32767, not {size!r}")
    rule_src = e.get("use") if etype == "rsa" else e.get("read", "never" if etype in ("opaque", "cv_key") else "free")
    return EfSpec(
        fid=fid,
        type=etype,
        content=_str(path, where + ".content", e.get("content", "")),
        size=size,
        filler=filler[0],
        read=_rule(path, where, rule_src if rule_src is not None else "never", keys),
        key=key,
        private_key=private_key,
        ops=tuple(ops_raw),
    )


def _ap(path: Path, name: str, value: object, keys: dict[str, KeySpec]) -> ApSpec:
    where = f"aps.{name}"
    a = _table(path, where, value, AP_FIELDS)
    efs: dict[int, EfSpec] = {}
    for fid_hex, e in _table(path, where + ".ef", a.get("ef", {})).items():
        ef = _ef(path, f"{where}.ef.{fid_hex}", fid_hex, e, keys)
        if ef.fid in efs:
            raise _fail(path, f"{where}.ef.{fid_hex}", "file id given twice")
        efs[ef.fid] = ef
    data_objects: dict[int, str] = {}
    for tag_hex, cid in _table(path, where + ".data", a.get("data", {})).items():
        tw = f"{where}.data.{tag_hex}"
        tag = int.from_bytes(_hex(path, tw, tag_hex, range(1, 3), "a GET DATA tag"), "big")
        data_objects[tag] = _str(path, tw, cid)
    default_key = None
    if "default_key" in a:
        dk = a["default_key"]
        default_key = int.from_bytes(_hex(path, where + ".default_key", dk, range(2, 3), "a file id"), "big")
        if default_key not in efs or efs[default_key].type != "rsa":
            raise _fail(path, where + ".default_key", f"{dk!r} is not an rsa EF of this application")
    session_key = _str(path, where + ".session_key", a.get("session_key", ""))
    if session_key and session_key not in PRIVATE_KEY_NAMES:
        raise _fail(path, where + ".session_key", f"must be one of {PRIVATE_KEY_NAMES}, not {session_key!r}")
    session_key_use: frozenset[str] | None = frozenset()
    if session_key:
        session_key_use = _rule(path, where + ".session_key_use", a.get("session_key_use", "never"), keys)
    elif "session_key_use" in a:
        raise _fail(path, where + ".session_key_use", "needs session_key")
    return ApSpec(
        name=name,
        aid=_hex(path, where + ".aid", a.get("aid"), range(5, 17), "an AID"),
        title=_str(path, where + ".title", a.get("title", name)),
        efs=efs,
        data_objects=data_objects,
        default_key=default_key,
        session_key=session_key,
        session_key_use=session_key_use,
    )


def _parse(path: Path | Traversable, raw: dict) -> Profile:
    _table(path, "top level", raw, TOP_FIELDS)
    version = raw.get("version")
    if raw.get("format") != "mynaemu-profile" or type(version) is not int or version != 1:
        raise _fail(path, "header", 'expected format = "mynaemu-profile" and version = 1')
    card = _table(path, "card", raw.get("card", {}), CARD_FIELDS)
    keys: dict[str, KeySpec] = {}
    for name, k in _table(path, "keys", raw.get("keys", {})).items():
        keys[name] = _key(path, name, k)
    missing = [n for n in SECRET_KEY_NAMES[:4] if n not in keys or keys[n].value != "secret"]
    if missing:
        raise _fail(path, "keys", f'the holder\'s secrets {missing} must be keys with value = "secret"')
    aps: dict[str, ApSpec] = {}
    seen_aids: dict[bytes, str] = {}
    for name, a in _table(path, "aps", raw.get("aps", {})).items():
        aps[name] = ap = _ap(path, name, a, keys)
        if ap.aid in seen_aids:
            raise _fail(path, f"aps.{name}.aid", f"the same AID as aps.{seen_aids[ap.aid]}")
        seen_aids[ap.aid] = name
    if "mf" not in aps:
        raise _fail(path, "aps", "an [aps.mf] power-on state is required")
    era = card.get("check_b_japanese_era", True)
    if not isinstance(era, bool):
        raise _fail(path, "card.check_b_japanese_era", f"must be true or false, not {era!r}")
    settings = _settings(path, "card", card)
    variants: dict[str, dict[str, object]] = {}
    for vname, v in _table(path, "variants", raw.get("variants", {})).items():
        if vname == "default" or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", vname):
            raise _fail(path, f"variants.{vname}", "a variant name is 1-32 lower-case letters, digits and '-', not 'default'")
        table = _table(path, f"variants.{vname}", v, VARIANT_FIELDS)
        variants[vname] = {**_settings(path, f"variants.{vname}", table),
                           "description": _str(path, f"variants.{vname}.description", table.get("description", ""))}
    return Profile(
        path=path,
        atr_contact=_hex(path, "card.atr_contact", card.get("atr_contact", "3BE000FF8131FE4514"), ATR_SIZES, "an ATR"),
        atr_contactless=_hex(path, "card.atr_contactless", card.get("atr_contactless", "3B888001000005E0B381A1007F"),
                             ATR_SIZES, "an ATR"),
        check_b_japanese_era=era,
        keys=keys,
        aps=aps,
        **settings,  # type: ignore[arg-type]
        variants=variants,
    )


def _settings(path: Path, where: str, table: dict) -> dict[str, object]:
    """The card settings given in ``table`` (a [card] or [variants.NAME] table), checked."""
    out: dict[str, object] = {}
    for name, choices in (("interface", INTERFACES), ("basic4_length", BASIC4_LENGTHS),
                          ("get_data_template", GET_DATA_TEMPLATES), ("trust_model", TRUST_MODELS)):
        if name in table:
            if table[name] not in choices:
                raise _fail(path, f"{where}.{name}", f"must be one of {', '.join(choices)}, not {table[name]!r}")
            out[name] = table[name]
    if "reselect_keeps_status" in table:
        if not isinstance(table["reselect_keeps_status"], bool):
            raise _fail(path, f"{where}.reselect_keeps_status", f"must be true or false, not {table['reselect_keeps_status']!r}")
        out["reselect_keeps_status"] = table["reselect_keeps_status"]
    return out
