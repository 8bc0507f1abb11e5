"""A table of bad inputs to every CLI command and the public Python API.

Each CLI case runs ``main([...])`` in-process and states the exit code (2 = usage error, 1 =
runtime failure) and a substring of the message; stderr must be exactly one line without
"Traceback", and the card directory must be byte-for-byte unchanged (every file hashed before
and after, with its mode). A few cases also run as ``python -m mynaemu`` to show that a real
process prints no traceback either. API cases state the exception type and message; the
message is one line and the card is unchanged too. Corrupt card files (state.json, keys.json,
content.json, card.json) are the loaders' business and are tested in test_bad_inputs.py.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import io
import json
import os
import random
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from mynaemu import admin
from mynaemu.cli import main
from mynaemu.issuance import IssuanceError, issue_card
from mynaemu.persona import Persona
from mynaemu.profile import DEFAULT_PROFILE, Profile, ProfileError
from mynaemu.state import StateError
from mynaemu.transcript import TranscriptError, load_transcript

from .conftest import SECRETS

ROOT = Path(__file__).resolve().parent.parent
SEL_JPKI = "00A4040C0AD392F000260100000001"


# -- helpers -------------------------------------------------------------------------------------
def tree_hash(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and directory below ``root``: mode and SHA-256 of the bytes."""
    out = {}
    for p in sorted([root, *root.rglob("*")]):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
        out[str(p.relative_to(root))] = (stat.S_IMODE(st.st_mode), digest)
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def toml_text(doc: dict) -> str:
    """A TOML document for ``doc`` (one key per line, inline tables below): enough for profiles."""
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in doc.items())


DEFAULT_DOC = tomllib.loads(DEFAULT_PROFILE.read_text(encoding="utf-8"))


def mutate(change: Callable[[dict], object]) -> Callable[[Path], Path]:
    """A profile file: the default profile with ``change`` applied to its parsed table."""
    def write(tmp: Path) -> Path:
        doc = copy.deepcopy(DEFAULT_DOC)
        change(doc)
        path = tmp / "bad-profile.toml"
        path.write_text(toml_text(doc), encoding="utf-8")
        return path

    return write


def raw_profile(data: bytes | str | None, *, directory: bool = False) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / "bad-profile.toml"
        if directory:
            path.mkdir()
        elif data is not None:
            path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    return write


def _set(path: str, value: Any) -> Callable[[dict], None]:
    keys = path.split("/")

    def change(doc: dict) -> None:
        node = doc
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return change


def _del(path: str) -> Callable[[dict], None]:
    keys = path.split("/")

    def change(doc: dict) -> None:
        node = doc
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]

    return change


def _both(*changes: Callable[[dict], None]) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        for c in changes:
            c(doc)

    return change


def _add_ef(ap: str, fid: str, ef: Any) -> Callable[[dict], None]:
    return _set(f"aps/{ap}/ef/{fid}", ef)


# (id, profile writer, message substring): each refused by Profile.load, naming the file and field.
PROFILE_CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("not-toml", raw_profile("format = \n"), "not valid TOML"),
    ("binary", raw_profile(b"\xff\xfe\x00\x01binary"), "not UTF-8"),
    ("empty", raw_profile(""), "header"),
    ("directory", raw_profile(None, directory=True), "is a directory"),
    ("missing", raw_profile(None), "profile file not found"),
    ("deep-nesting", raw_profile("x = " + "[" * 100_000 + "]" * 100_000 + "\n"), "bad-profile.toml"),
    ("format-wrong", mutate(_set("format", "other")), "header"),
    ("version-2", mutate(_set("version", 2)), "header"),
    ("version-true", mutate(_set("version", True)), "header"),
    ("version-string", mutate(_set("version", "1")), "header"),
    ("unknown-top-field", mutate(_set("cards", {})), "unknown field(s) cards"),
    ("card-not-table", mutate(_set("card", "yes")), "card: must be a table, not a string"),
    ("card-unknown-field", mutate(_set("card/atr", "3B00")), "card: unknown field(s) atr"),
    ("atr-not-hex", mutate(_set("card/atr_contact", "3BZZ")), "card.atr_contact: not hex"),
    ("atr-40-bytes", mutate(_set("card/atr_contact", "3B" * 40)), "an ATR must be 2 to 33 bytes, not 40"),
    ("atr-1-byte", mutate(_set("card/atr_contact", "3B")), "an ATR must be 2 to 33 bytes, not 1"),
    ("atr-int", mutate(_set("card/atr_contact", 59)), "card.atr_contact: must be a hex string, not an integer"),
    ("atr-contactless-34", mutate(_set("card/atr_contactless", "3B" * 34)), "card.atr_contactless"),
    ("era-no", mutate(_set("card/check_b_japanese_era", "no")), "card.check_b_japanese_era: must be true or false"),
    ("era-1", mutate(_set("card/check_b_japanese_era", 1)), "must be true or false, not 1"),
    ("keys-not-table", mutate(_set("keys", ["auth"])), "keys: must be a table, not an array"),
    ("key-not-table", mutate(_set("keys/auth", 3)), "keys.auth: must be a table, not an integer"),
    ("limit-0", mutate(_set("keys/auth/limit", 0)), "keys.auth: limit must be an integer from 1 to 15"),
    ("limit-16", mutate(_set("keys/sign/limit", 16)), "keys.sign: limit must be an integer from 1 to 15"),
    ("limit-true", mutate(_set("keys/auth/limit", True)), "not True"),
    ("limit-string", mutate(_set("keys/auth/limit", "3")), "not '3'"),
    ("limit-float", mutate(_set("keys/auth/limit", 3.0)), "not 3.0"),
    ("key-format", mutate(_set("keys/auth/format", "digits5")), "keys.auth: format must be one of"),
    ("key-value", mutate(_set("keys/auth/value", "pin")), "keys.auth: value must be one of"),
    ("key-change", mutate(_set("keys/auth/change", "maybe")), "keys.auth: change must be one of"),
    ("key-label-int", mutate(_set("keys/auth/label", 7)), "keys.auth.label: must be a string"),
    ("key-unknown-field", mutate(_set("keys/auth/limt", 3)), "keys.auth: unknown field(s) limt"),
    ("auth-key-missing", mutate(_del("keys/auth")), "['auth'] must be keys with value"),
    ("juki-not-secret", mutate(_set("keys/juki/value", "none")), "['juki'] must be keys with value"),
    ("extra-secret-key", mutate(_set("keys/extra", {"limit": 3, "format": "digits4", "value": "secret",
                                                    "change": "iso"})), "keys.extra: value = \"secret\" is only for"),
    ("secret-format-any", mutate(_set("keys/text/format", "any")), "keys.text: a \"secret\" key needs a format"),
    ("aps-not-table", mutate(_set("aps", "mf")), "aps: must be a table, not a string"),
    ("mf-missing", mutate(_del("aps/mf")), "an [aps.mf] power-on state is required"),
    ("ap-not-table", mutate(_set("aps/jpki", [1])), "aps.jpki: must be a table, not an array"),
    ("aid-empty", mutate(_set("aps/jpki/aid", "")), "aps.jpki.aid: an AID must be 5 to 16 bytes, not 0"),
    ("aid-4-bytes", mutate(_set("aps/jpki/aid", "D392F000")), "an AID must be 5 to 16 bytes, not 4"),
    ("aid-40-bytes", mutate(_set("aps/jpki/aid", "D3" * 40)), "an AID must be 5 to 16 bytes, not 40"),
    ("aid-not-hex", mutate(_set("aps/jpki/aid", "D392F00026010000000G")), "aps.jpki.aid: not hex"),
    ("aid-missing", mutate(_del("aps/juki/aid")), "aps.juki.aid: must be a hex string, not NoneType"),
    ("aid-duplicate", mutate(_set("aps/juki/aid", DEFAULT_DOC["aps"]["common"]["aid"])), "the same AID as aps."),
    ("ap-title-int", mutate(_set("aps/jpki/title", 1)), "aps.jpki.title: must be a string"),
    ("ap-unknown-field", mutate(_set("aps/jpki/efs", {})), "aps.jpki: unknown field(s) efs"),
    ("ef-table-not-table", mutate(_set("aps/jpki/ef", "0018")), "aps.jpki.ef: must be a table"),
    ("fid-3-bytes", mutate(_add_ef("jpki", "001800", {"type": "opaque"})), "a file id is 2 bytes"),
    ("fid-1-byte", mutate(_add_ef("jpki", "18", {"type": "opaque"})), "a file id is 2 bytes"),
    ("fid-not-hex", mutate(_add_ef("jpki", "00GG", {"type": "opaque"})), "aps.jpki.ef.00GG: not hex"),
    ("fid-odd-digits", mutate(_add_ef("jpki", "00 1", {"type": "opaque"})), "aps.jpki.ef.00 1: not hex"),
    ("fid-5-digits", mutate(_add_ef("jpki", "00018", {"type": "opaque"})), "a file id is 2 bytes"),
    ("fid-case-duplicate", mutate(_add_ef("jpki", "001e", {"type": "opaque"})), "file id given twice"),
    ("ef-not-table", mutate(_add_ef("jpki", "0030", "binary")), "aps.jpki.ef.0030: must be a table"),
    ("ef-type", mutate(_add_ef("jpki", "0030", {"type": "folder"})), "type must be one of"),
    ("ef-type-missing", mutate(_add_ef("jpki", "0030", {"size": 3})), "type must be one of"),
    ("pin-unknown-key", mutate(_add_ef("jpki", "0030", {"type": "pin", "key": "nokey"})), "pin EF names unknown key"),
    ("pin-key-int", mutate(_add_ef("jpki", "0030", {"type": "pin", "key": 5})), "aps.jpki.ef.0030.key: must be a string"),
    ("rsa-unknown-private-key", mutate(_set("aps/jpki/ef/0017/private_key", "jpki.other")), "private_key must be one of"),
    ("rsa-no-private-key", mutate(_add_ef("jpki", "0030", {"type": "rsa", "use": "free", "ops": ["sign"]})),
     "private_key must be one of"),
    ("ops-unknown", mutate(_set("aps/jpki/ef/0017/ops", ["decrypt"])), "ops must be a list among"),
    ("ops-not-list", mutate(_set("aps/jpki/ef/0017/ops", "sign")), "ops must be a list among"),
    ("filler-2-bytes", mutate(_set("aps/jpki/ef/0006/filler", "2020")), "a filler must be 1 bytes, not 2"),
    ("filler-empty", mutate(_set("aps/jpki/ef/0006/filler", "")), "a filler must be 1 bytes, not 0"),
    ("filler-not-hex", mutate(_set("aps/jpki/ef/0006/filler", "XX")), "aps.jpki.ef.0006.filler: not hex"),
    ("size-negative", mutate(_set("aps/jpki/ef/0006/size", -1)), "size must be an integer 0..32767"),
    ("size-too-big", mutate(_set("aps/jpki/ef/0006/size", 40000)), "size must be an integer 0..32767"),
    ("size-string", mutate(_set("aps/jpki/ef/0006/size", "160")), "not '160'"),
    ("size-true", mutate(_set("aps/jpki/ef/0006/size", True)), "not True"),
    ("read-unknown-key", mutate(_set("aps/jpki/ef/0001/read", ["nosuch"])), "unknown key(s) ['nosuch'] in access rule"),
    ("read-empty-list", mutate(_set("aps/jpki/ef/0001/read", [])), "access rule must be"),
    ("read-int", mutate(_set("aps/jpki/ef/0001/read", 1)), "access rule must be"),
    ("use-unknown-key", mutate(_set("aps/jpki/ef/0017/use", ["pin"])), "in access rule"),
    ("content-int", mutate(_set("aps/jpki/ef/0006/content", 6)), "aps.jpki.ef.0006.content: must be a string"),
    ("ef-unknown-field", mutate(_set("aps/jpki/ef/0006/sise", 10)), "unknown field(s) sise"),
    ("default-key-not-hex", mutate(_set("aps/text/default_key", "zz")), "aps.text.default_key: not hex"),
    ("default-key-int", mutate(_set("aps/text/default_key", 19)), "aps.text.default_key: must be a hex string"),
    ("default-key-3-bytes", mutate(_set("aps/text/default_key", "001300")), "a file id must be 2 bytes"),
    ("default-key-not-rsa", mutate(_set("aps/text/default_key", "0011")), "is not an rsa EF of this application"),
    ("data-tag-not-hex", mutate(_set("aps/mf/data/00GG", "mf.issuer_id")), "aps.mf.data.00GG: not hex"),
    ("data-tag-3-bytes", mutate(_set("aps/mf/data/5F5100", "mf.atr_tail")), "a GET DATA tag must be 1 to 2 bytes"),
    ("data-value-int", mutate(_set("aps/mf/data/0042", 42)), "aps.mf.data.0042: must be a string"),
    ("data-not-table", mutate(_set("aps/mf/data", ["0042"])), "aps.mf.data: must be a table"),
    ("keys-and-aid", mutate(_both(_set("aps/jpki/aid", ""), _set("keys/auth/limit", 0))), "keys.auth"),
]

# Refused only at issuance, once the content is built (a card that would not load is never written).
ISSUANCE_PROFILE_CASES = [
    ("ef-size-below-content", mutate(_set("aps/jpki/ef/0006/size", 10)),
     "aps.jpki.ef.0006: size 10 is below its content 'jpki.token_info'"),
    ("unknown-content", mutate(_set("aps/jpki/ef/0006/content", "jpki.nothing")), "content 'jpki.nothing' is not issued"),
    ("unknown-data-content", mutate(_set("aps/mf/data/0042", "mf.nothing")), "aps.mf.data.0042: content 'mf.nothing'"),
]


@dataclass
class Ctx:
    """What a case's setup may use and change."""

    card: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    cleanup: list[Callable[[], None]] = field(default_factory=list)


@dataclass
class Case:
    id: str
    argv: list[str]
    code: int
    says: str
    setup: Callable[[Ctx], None] | None = None
    stdin: str = ""
    # The one exception to "never changes a card": a wrong secret presented at the kiosk costs a
    # try of that key, exactly like a wrong VERIFY (else the kiosk would be a free PIN oracle).
    costs_a_try: str | None = None


def _disk_full(ctx: Ctx) -> None:
    real = os.write

    def write(fd: int, data: Any) -> int:
        if fd > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    ctx.monkeypatch.setattr(os, "write", write)


def _env(name: str, value: str) -> Callable[[Ctx], None]:
    return lambda ctx: ctx.monkeypatch.setenv(name, value)


def _file(name: str, data: bytes | str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        (ctx.tmp / name).write_bytes(data.encode() if isinstance(data, str) else data)

    return setup


def _no_pcscd(ctx: Ctx) -> None:
    import reader_bridge.pcscd as pcscd

    ctx.monkeypatch.setattr(pcscd, "pcscd_running", lambda *a, **k: False)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("this case must never start pcscd")

    ctx.monkeypatch.setattr(pcscd.PcscdHarness, "start", refuse)


def _card_locked_elsewhere(ctx: Ctx) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
                             "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(ctx.card)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    ctx.cleanup.append(lambda: (proc.kill(), proc.wait()))


def _no_persona(ctx: Ctx) -> None:
    path = ctx.card / "card.json"
    doc = json.loads(path.read_text())
    del doc["persona"]
    path.write_text(json.dumps(doc))
    path.chmod(0o600)


def _other_data_dir(ctx: Ctx) -> None:
    ctx.monkeypatch.setenv("MYNAEMU_DATA_DIR", str(ctx.tmp / "elsewhere"))


def _other_authority(ctx: Ctx) -> None:
    from mynaemu.pki import Authority

    Authority.load_or_create(ctx.tmp / "other-data" / "authority")
    ctx.monkeypatch.setenv("MYNAEMU_DATA_DIR", str(ctx.tmp / "other-data"))


def _profile(writer: Callable[[Path], Path]) -> Callable[[Ctx], None]:
    return lambda ctx: writer(ctx.tmp) and None


def _issue(*options: str) -> list[str]:
    return ["issue", "{tmp}/new/card", *options]


NEW_CARD_OPTIONS: list[tuple[str, list[str], int, str, Callable[[Ctx], None] | None]] = [
    ("auth-pin-short", ["--auth-pin", "123"], 2, "--auth-pin: the JPKI user-authentication PIN must be exactly 4 digits", None),
    ("auth-pin-fullwidth", ["--auth-pin", "１２３４"], 2, "must be exactly 4 digits", None),
    ("auth-pin-long", ["--auth-pin", "12345"], 2, "must be exactly 4 digits", None),
    ("text-pin-letters", ["--text-pin", "12a4"], 2, "--text-pin: the Input-assist AP PIN", None),
    ("juki-pin-empty", ["--juki-pin", ""], 2, "--juki-pin", None),
    ("sign-pin-lower", ["--sign-pin", "abc123"], 2, "upper-case A-Z and digits 0-9 only", None),
    ("sign-pin-17", ["--sign-pin", "A" * 16 + "1"], 2, "6 to 16 characters", None),
    ("sign-pin-space", ["--sign-pin", "ABC 123"], 2, "6 to 16 characters", None),
    ("my-number-check", ["--my-number", "123456789012"], 2, "the check digit of the first 11", None),
    ("my-number-short", ["--my-number", "12345678901"], 2, "12 ASCII digits", None),
    ("my-number-fullwidth", ["--my-number", "１２３４５６７８９０１８"], 2, "12 ASCII digits", None),
    ("birth-format", ["--birth", "1980/02/17"], 2, "YYYY-MM-DD", None),
    ("birth-feb-30", ["--birth", "1980-02-30"], 2, "YYYY-MM-DD", None),
    ("birth-before-meiji", ["--birth", "1800-01-01"], 2, "1868-01-25", None),
    ("birth-future", ["--birth", "2999-01-01"], 2, "to today", None),
    ("sex-x", ["--sex", "x"], 2, "use male, female or n/a", None),
    ("name-no-space", ["--name", "山田太郎"], 2, "ideographic space U+3000", None),
    ("name-100k", ["--name", "山" * 50_000 + "\u3000" + "太" * 50_000], 2, "the family name is 50000 characters", None),
    ("name-lone-surrogate", ["--name", "山田\u3000太\ud800"], 2, "lone surrogate (U+D800)", None),
    ("name-control-char", ["--name", "山田\u3000太\n郎"], 2, "control character (U+000A)", None),
    ("name-too-long-total", ["--name", "山" * 20 + "\u3000" + "太" * 20], 2, "the name is 41 characters", None),
    ("address-100k", ["--address", "東" * 100_000], 2, "--address: the address is 100000 characters", None),
    ("address-surrogate", ["--address", "東京\udcff"], 2, "--address: the address holds a lone surrogate", None),
    ("address-blank", ["--address", "   "], 2, "the address must be a non-empty string", None),
    ("kana-no-space", ["--kana", "ヤマダタロウ"], 2, "--kana: separate family and given name", None),
    ("kana-100k", ["--kana", "ヤ" * 50_000 + "\u3000" + "タ"], 2, "--kana: the kana name is 50002 characters", None),
    ("kana-surrogate", ["--kana", "ヤマダ\u3000\udc80"], 2, "--kana: the kana name holds a lone surrogate", None),
    ("seed-not-int", ["--seed", "abc"], 2, "invalid int value", None),
    ("unknown-option", ["--colour", "red"], 2, "unrecognized argument(s) (not shown", None),
    ("pin-and-pin-file", ["--auth-pin", "1234", "--auth-pin-file", "{tmp}/pin"], 2,
     "give the auth PIN once: --auth-pin or --auth-pin-file", _file("pin", "1234\n")),
    ("pin-file-missing", ["--auth-pin-file", "{tmp}/nothing"], 2, "--auth-pin-file {tmp}/nothing: no such file", None),
    ("pin-file-directory", ["--auth-pin-file", "{tmp}"], 2, "is a directory", None),
    ("pin-file-empty", ["--auth-pin-file", "{tmp}/pin"], 2, "holds no value on its first line", _file("pin", "")),
    ("pin-file-binary", ["--auth-pin-file", "{tmp}/pin"], 2, "not UTF-8 text", _file("pin", b"\xff\xfe\n")),
    ("pin-file-bad-value", ["--sign-pin-file", "{tmp}/pin"], 2, "--sign-pin: the JPKI signing password must be",
     _file("pin", "lower\n")),
    ("pin-stdin-empty", ["--auth-pin-file", "-"], 2, "--auth-pin-file -: holds no value", None),
    ("stdin-twice", ["--auth-pin-file", "-", "--text-pin-file", "-"], 2, "stdin is already read for --auth-pin-file",
     lambda ctx: ctx.monkeypatch.setattr(sys, "stdin", io.StringIO("1234\n5678\n"))),
    ("env-bad-value", [], 2, "--auth-pin: the JPKI user-authentication PIN must be", _env("MYNAEMU_AUTH_PIN", "12")),
    ("env-bad-sign", [], 2, "--sign-pin: the JPKI signing password", _env("MYNAEMU_SIGN_PIN", "x")),
    ("profile-missing", ["--profile", "{tmp}/none.toml"], 2, "profile file not found", None),
    ("profile-directory", ["--profile", "{tmp}"], 2, "is a directory; give the profile's .toml file", None),
    ("data-dir-is-a-file", [], 1, "cannot be the data directory", lambda ctx: (
        _file("data-file", "x")(ctx), ctx.monkeypatch.setenv("MYNAEMU_DATA_DIR", str(ctx.tmp / "data-file")))),
]

CLI_CASES: list[Case] = [
    *[Case(f"issue-{name}", _issue(*opts), code, says, setup) for name, opts, code, says, setup in NEW_CARD_OPTIONS],
    *[Case(f"profile-{name}", _issue("--profile", "{tmp}/bad-profile.toml"), 2, says, _profile(writer))
      for name, writer, says in PROFILE_CASES],
    *[Case(f"issuance-profile-{name}", _issue("--profile", "{tmp}/bad-profile.toml"), 2, says, _profile(writer))
      for name, writer, says in ISSUANCE_PROFILE_CASES],
    Case("issue-existing-card", ["issue", "{card}"], 2, "already holds a card"),
    Case("issue-non-empty-dir", ["issue", "{tmp}"], 2, "exists and is not an empty directory",
         _file("something", "x")),
    Case("issue-onto-a-file", ["issue", "{tmp}/afile"], 2, "exists and is not an empty directory", _file("afile", "x")),
    Case("issue-below-a-file", ["issue", "{tmp}/afile/sub/card"], 2, "is a file, not a directory", _file("afile", "x")),
    Case("issue-disk-full", _issue("--seed", "3"), 1, "(No space left on device); nothing was issued", _disk_full),
    Case("issue-no-card-dir", ["issue"], 2, "the following arguments are required: CARD_DIR"),
    # info
    Case("info-missing-dir", ["info", "{tmp}/none"], 2, "no card directory here"),
    Case("info-file", ["info", "{tmp}/afile"], 2, "no card directory here", _file("afile", "x")),
    Case("info-no-persona", ["info", "{card}"], 2, "card.json: has no valid persona", _no_persona),
    Case("info-json-no-persona", ["info", "{card}", "--json"], 2, "has no valid persona", _no_persona),
    Case("info-extra-arg", ["info", "{card}", "extra"], 2, "1 unrecognized argument(s)"),
    # send
    Case("send-odd-hex-verify", ["send", "{card}", SEL_JPKI, "002000800437333931F"], 2, "APDU 2 (00200080***********)"),
    Case("send-non-hex", ["send", "{card}", "zz"], 2, "APDU 1 (**) is not an APDU in hex"),
    Case("send-non-hex-select", ["send", "{card}", "00A4040CZZ"], 2, "APDU 1 (00A4040CZZ)"),
    Case("send-bad-digit-in-pin", ["send", "{card}", "00200080043132333G"], 2, "(00200080**********)"),
    Case("send-bad-header", ["send", "{card}", "0G2000800431323334"], 2, "(******************)"),
    Case("send-too-short", ["send", "{card}", "0020"], 2, "is 2 bytes; an APDU is 4 to"),
    Case("send-empty", ["send", "{card}", ""], 2, "APDU 1 (empty) is 0 bytes"),
    Case("send-too-long", ["send", "{card}", "00D60000" + "00" * 70_000], 2, "is 70004 bytes"),
    Case("send-no-apdu", ["send", "{card}"], 2, "the following arguments are required: APDU_HEX"),
    Case("send-missing-card", ["send", "{tmp}/none", SEL_JPKI], 2, "no card directory here"),
    Case("send-card-in-use", ["send", "{card}", SEL_JPKI], 2, "the card is in use by another process",
         _card_locked_elsewhere),
    Case("send-odd-hex-change-key", ["send", "{card}", "003200800431323"], 2, "(00320080*******)"),
    # admin
    Case("admin-no-action", ["admin", "{card}"], 2, "the following arguments are required: ACTION"),
    Case("admin-unknown-action", ["admin", "{card}", "format"], 2, "invalid choice: 'format'"),
    Case("admin-unblock-unknown-key", ["admin", "{card}", "unblock", "nosuchkey"], 2, "invalid choice: 'nosuchkey'"),
    Case("admin-unblock-two-keys", ["admin", "{card}", "unblock", "auth", "sign"], 2, "1 unrecognized argument(s)"),
    Case("admin-reset-short", ["admin", "{card}", "reset-pin", "auth", "123"], 2, "must be exactly 4 digits"),
    Case("admin-reset-lower", ["admin", "{card}", "reset-pin", "sign", "lower123"], 2, "upper-case A-Z and digits 0-9 only"),
    Case("admin-reset-derived", ["admin", "{card}", "reset-pin", "text-a", "123456789018"], 2, "cannot be set"),
    Case("admin-reset-no-value", ["admin", "{card}", "reset-pin", "auth"], 2, "give the new value of auth: as NEW"),
    Case("admin-reset-value-twice", ["admin", "{card}", "reset-pin", "auth", "1234", "--new-value-file", "{tmp}/v"], 2,
         "give the new value of auth once", _file("v", "4321\n")),
    Case("admin-reset-file-missing", ["admin", "{card}", "reset-pin", "auth", "--new-value-file", "{tmp}/v"], 2,
         "--new-value-file {tmp}/v: no such file"),
    Case("admin-reset-file-bad", ["admin", "{card}", "reset-pin", "auth", "--new-value-file", "{tmp}/v"], 2,
         "must be exactly 4 digits", _file("v", "12\n")),
    Case("admin-reset-env-bad", ["admin", "{card}", "reset-pin", "auth"], 2, "must be exactly 4 digits",
         _env("MYNAEMU_NEW_VALUE", "abcd")),
    Case("admin-reset-stdin-empty", ["admin", "{card}", "reset-pin", "auth", "--new-value-file", "-"], 2,
         "--new-value-file -: holds no value"),
    Case("admin-reset-disk-full", ["admin", "{card}", "reset-pin", "auth", "4321"], 1,
         "the card's state could not be written", _disk_full),
    Case("admin-unblock-disk-full", ["admin", "{card}", "unblock", "auth"], 1, "No space left on device", _disk_full),
    Case("admin-kiosk-wrong-other", ["admin", "{card}", "kiosk-reset", "sign", "RESET123", "--other", "0000"], 2,
         "the auth value presented is wrong (2 tries left)", costs_a_try="auth"),
    Case("admin-kiosk-text", ["admin", "{card}", "kiosk-reset", "text", "1234", "--other", "1234"], 2, "invalid choice"),
    Case("admin-kiosk-no-other", ["admin", "{card}", "kiosk-reset", "auth", "4321"], 2, "give the current sign value"),
    Case("admin-kiosk-other-twice", ["admin", "{card}", "kiosk-reset", "auth", "4321", "--other", "x", "--other-file",
                                     "{tmp}/o"], 2, "--other or --other-file, not both", _file("o", "ABC123\n")),
    Case("admin-kiosk-other-file-missing", ["admin", "{card}", "kiosk-reset", "auth", "4321", "--other-file", "{tmp}/o"],
         2, "--other-file {tmp}/o: no such file"),
    Case("admin-kiosk-both-stdin", ["admin", "{card}", "kiosk-reset", "auth", "--new-value-file", "-", "--other-file",
                                    "-"], 2, "stdin is already read for --other-file", None, "ABC123\n4321\n"),
    Case("admin-kiosk-bad-new", ["admin", "{card}", "kiosk-reset", "auth", "12", "--other", SECRETS["sign"]], 2,
         "must be exactly 4 digits"),
    Case("admin-kiosk-disk-full", ["admin", "{card}", "kiosk-reset", "auth", "4321", "--other", SECRETS["sign"]], 1,
         "could not be written", _disk_full),
    Case("admin-missing-card", ["admin", "{tmp}/none", "unblock", "auth"], 2, "no card directory here"),
    Case("admin-typo-option-with-secret", ["admin", "{card}", "kiosk-reset", "auth", "4321", "--othr", "ABC123"], 2,
         "2 unrecognized argument(s) (not shown"),
    Case("suspend-no-authority", ["admin", "{card}", "suspend"], 1, "no emulated authority here", _other_data_dir),
    Case("suspend-other-authority", ["admin", "{card}", "suspend"], 1, "its auth certificate was not issued by the authority in "
         "", _other_authority),
    Case("suspend-disk-full", ["admin", "{card}", "suspend"], 1, "the suspension could not be written", _disk_full),
    # replay
    Case("replay-no-flow", ["replay", "--card", "{card}"], 2, "name at least one transcript"),
    Case("replay-no-target", ["replay", "opensc-bind"], 2, "give exactly one of --card"),
    Case("replay-both-targets", ["replay", "opensc-bind", "--card", "{card}", "--reader", "X"], 2, "give exactly one of"),
    Case("replay-unknown-flow", ["replay", "no-such-flow", "--card", "{card}"], 2, "no such transcript"),
    Case("replay-binary-file", ["replay", "{tmp}/bin.txt", "--card", "{card}"], 2, "not UTF-8 text (a binary file?)",
         _file("bin.txt", bytes(range(256)))),
    Case("replay-nul-file", ["replay", "{tmp}/nul.txt", "--card", "{card}"], 2, "holds NUL bytes",
         _file("nul.txt", "00 A4 04 0C\0 => 9000\n")),
    Case("replay-directory", ["replay", "{tmp}", "--card", "{card}"], 2, "not a transcript file (a directory"),
    Case("replay-bad-syntax", ["replay", "{tmp}/f.txt", "--card", "{card}"], 2, "f.txt:1: a step is 'COMMAND => RESPONSE'",
         _file("f.txt", "00 A4 04 0C\n")),
    Case("replay-bad-placeholder", ["replay", "{tmp}/f.txt", "--card", "{card}"], 2, "f.txt:1: bad placeholder",
         _file("f.txt", "00 20 00 80 data={1x} => 9000\n")),
    Case("replay-var-no-equals", ["replay", "opensc-bind", "--card", "{card}", "--var", "auth_pin"], 2,
         "write NAME=VALUE"),
    Case("replay-var-file-missing", ["replay", "opensc-bind", "--card", "{card}", "--var-file", "{tmp}/v"], 2,
         "--var-file {tmp}/v: cannot be read"),
    Case("replay-var-file-bad-line", ["replay", "opensc-bind", "--card", "{card}", "--var-file", "{tmp}/v"], 2,
         "line 2: write NAME=VALUE", _file("v", "auth_pin=1234\nsign_pin\n")),
    Case("replay-var-file-binary", ["replay", "opensc-bind", "--card", "{card}", "--var-file", "{tmp}/v"], 2,
         "not UTF-8 text", _file("v", b"\xff\xff")),
    Case("replay-reader-no-pcscd", ["replay", "opensc-bind", "--reader", "Virtual PCD 00 00", "--var", "auth_pin=1234"], 1,
         "no pcscd is running", _no_pcscd),
    Case("replay-missing-variable", ["replay", "{tmp}/f.txt", "--card", "{card}"], 2, "variables not given: nothing_here",
         _file("f.txt", "00 20 00 80 data={nothing_here} => 9000\n")),
    Case("replay-missing-card", ["replay", "opensc-bind", "--card", "{tmp}/none"], 2, "no card directory here"),
    # serve (none of these may start pcscd)
    Case("serve-negative-slot", ["serve", "{card}", "--slot", "-1", "--no-start-pcscd"], 2, "a vpcd slot is 0 or more",
         _no_pcscd),
    Case("serve-trace-directory", ["serve", "{card}", "--trace", "{tmp}", "--no-start-pcscd"], 2,
         "--trace {tmp}: is a directory", _no_pcscd),
    Case("serve-trace-missing-folder", ["serve", "{card}", "--trace", "{tmp}/no/trace.jsonl", "--no-start-pcscd"], 2,
         "the folder {tmp}/no does not exist", _no_pcscd),
    Case("serve-trace-below-file", ["serve", "{card}", "--trace", "{tmp}/afile/trace.jsonl", "--no-start-pcscd"], 2,
         "does not exist; create it first", lambda ctx: (_no_pcscd(ctx), _file("afile", "x")(ctx))),
    Case("serve-no-pcscd", ["serve", "{card}", "--no-start-pcscd"], 1, "--no-start-pcscd: no pcscd is running", _no_pcscd),
    Case("serve-missing-card", ["serve", "{tmp}/none", "--no-start-pcscd"], 2, "no card directory here",
         lambda ctx: ctx.monkeypatch.setattr("reader_bridge.pcscd.pcscd_running", lambda *a: True)),
    Case("serve-slot-not-int", ["serve", "{card}", "--slot", "one"], 2, "invalid int value: 'one'"),
    # the command itself
    Case("no-command", [], 2, "the following arguments are required: COMMAND"),
    Case("unknown-command", ["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    Case("unknown-global-option", ["--quiet", "info", "{card}"], 2, "unrecognized argument(s)"),
]


def _fmt(text: str, ctx: Ctx) -> str:
    return text.replace("{card}", str(ctx.card)).replace("{tmp}", str(ctx.tmp))


@pytest.fixture
def ctx(card_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    work = tmp_path / "work"
    work.mkdir()
    c = Ctx(card_dir, work, monkeypatch)
    yield c
    for undo in c.cleanup:
        undo()


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_bad_input(case: Case, ctx: Ctx, capsys) -> None:
    ctx.monkeypatch.setattr(sys, "stdin", io.StringIO(case.stdin))
    if case.setup is not None:
        case.setup(ctx)
    before = tree_hash(ctx.card)
    capsys.readouterr()
    rc = main([_fmt(a, ctx) for a in case.argv])
    out, err = capsys.readouterr()
    assert rc == case.code, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert _fmt(case.says, ctx) in lines[0], lines[0]
    assert lines[0].startswith("mynaemu")
    assert out == ""
    if case.costs_a_try is not None:
        from mynaemu import Card

        with Card.load(ctx.card) as card:
            assert card.tries_left(case.costs_a_try) == 2  # one try gone, nothing else changed
        before.pop("state.json")
        assert {k: v for k, v in tree_hash(ctx.card).items() if k != "state.json"} == before
    else:
        assert tree_hash(ctx.card) == before
    assert not (ctx.tmp / "new").exists()  # a refused issue leaves no card and no parent behind


def test_corpus_is_large_enough() -> None:
    assert len(CLI_CASES) + len(API_CASES) + len(PROFILE_CASES) >= 150
    assert len({c.id for c in CLI_CASES}) == len(CLI_CASES)


# -- the public Python API -------------------------------------------------------------------------
def _persona(**changes: Any) -> Persona:
    return dataclasses.replace(Persona.generate(random.Random(1)), **changes)


@dataclass
class ApiCase:
    id: str
    call: Callable[[Ctx], object]
    error: type[BaseException]
    says: str


def _load(ctx: Ctx):
    from mynaemu import Card

    return Card.load(ctx.card)


def _admin(fn: Callable, *args: Any) -> Callable[[Ctx], object]:
    def call(ctx: Ctx) -> object:
        card = _load(ctx)
        try:
            return fn(card, *args)
        finally:
            card.close()

    return call


API_CASES: list[ApiCase] = [
    ApiCase("issue-int-pin", lambda c: issue_card(c.tmp / "n", secrets={"auth": 1234}), IssuanceError,
            "must be given as a string, not int"),
    ApiCase("issue-bytes-pin", lambda c: issue_card(c.tmp / "n", secrets={"sign": b"ABC123"}), IssuanceError,
            "not bytes"),
    ApiCase("issue-unknown-secret", lambda c: issue_card(c.tmp / "n", secrets={"pin": "1234"}), IssuanceError,
            "unknown key name(s) pin"),
    ApiCase("issue-common-secret", lambda c: issue_card(c.tmp / "n", secrets={"common": "1234"}), IssuanceError,
            "unknown key name(s) common"),
    ApiCase("issue-secrets-list", lambda c: issue_card(c.tmp / "n", secrets=["1234"]), IssuanceError,  # type: ignore[arg-type]
            "secrets must be a mapping"),
    ApiCase("issue-persona-dict", lambda c: issue_card(c.tmp / "n", persona={"name": "x"}), IssuanceError,  # type: ignore[arg-type]
            "persona must be a mynaemu.persona.Persona, not dict"),
    ApiCase("issue-profile-int", lambda c: issue_card(c.tmp / "n", profile=3), ProfileError,  # type: ignore[arg-type]
            "not int"),
    ApiCase("issue-card-dir-none", lambda c: issue_card(None), IssuanceError, "card_dir must be a directory path"),  # type: ignore[arg-type]
    ApiCase("issue-card-dir-int", lambda c: issue_card(5), IssuanceError, "not 5"),  # type: ignore[arg-type]
    ApiCase("issue-card-dir-empty", lambda c: issue_card(""), IssuanceError, "card_dir must be a directory path"),
    ApiCase("issue-existing", lambda c: issue_card(c.card), IssuanceError, "already holds a card"),
    ApiCase("issue-below-file", lambda c: (_file("f", "x")(c), issue_card(c.tmp / "f" / "card")), IssuanceError,
            "is a file, not a directory"),
    ApiCase("issue-authority-str", lambda c: issue_card(c.tmp / "n", authority="ca"), IssuanceError,  # type: ignore[arg-type]
            "authority must be a mynaemu.pki.Authority"),
    ApiCase("issue-keys-str", lambda c: issue_card(c.tmp / "n", keys="k"), IssuanceError,  # type: ignore[arg-type]
            "keys must be a mynaemu.content.CardKeys"),
    ApiCase("issue-profile-dir", lambda c: issue_card(c.tmp / "n", profile=c.tmp), ProfileError, "is a directory"),
    ApiCase("profile-load-int", lambda c: Profile.load(7), ProfileError, "not int"),  # type: ignore[arg-type]
    ApiCase("profile-load-dir", lambda c: Profile.load(c.tmp), ProfileError, "is a directory"),
    ApiCase("transcript-binary", lambda c: (_file("b.txt", b"\x80\x81")(c), load_transcript(c.tmp / "b.txt")),
            TranscriptError, "not UTF-8 text"),
    ApiCase("transcript-dir", lambda c: load_transcript(c.tmp), TranscriptError, "not a transcript file"),
    ApiCase("persona-name-int", lambda c: Persona.generate(name=5), ValueError, "name must be a str"),  # type: ignore[arg-type]
    ApiCase("persona-name-no-space", lambda c: Persona.generate(name="山田太郎"), ValueError, "ideographic space U+3000"),
    ApiCase("persona-name-100k", lambda c: Persona.generate(name="山" * 100_000 + "\u3000太"), ValueError,
            "is 100000 characters; the card holds at most 40"),
    ApiCase("persona-name-surrogate", lambda c: Persona.generate(name="山田\u3000\udc00"), ValueError, "lone surrogate"),
    ApiCase("persona-birth-datetime", lambda c: Persona.generate(birth=datetime(1980, 1, 1)), ValueError,  # type: ignore[arg-type]
            "birth must be a date"),
    ApiCase("persona-birth-string", lambda c: Persona.generate(birth="1980-01-01"), ValueError, "not str"),  # type: ignore[arg-type]
    ApiCase("persona-birth-before-meiji", lambda c: Persona.generate(birth=date(1860, 1, 1)), ValueError, "Meiji"),
    ApiCase("persona-sex-int", lambda c: Persona.generate(sex=1), ValueError, "sex must be a str"),  # type: ignore[arg-type]
    ApiCase("persona-sex-x", lambda c: Persona.generate(sex="x"), ValueError, "sex must be '1' (male)"),
    ApiCase("persona-my-number-int", lambda c: Persona.generate(my_number=123456789018), ValueError,  # type: ignore[arg-type]
            "my_number must be a str"),
    ApiCase("persona-my-number-check", lambda c: Persona.generate(my_number="123456789012"), ValueError, "check digit"),
    ApiCase("persona-rng-str", lambda c: Persona.generate("seed"), ValueError, "rng must be a random.Random"),  # type: ignore[arg-type]
    ApiCase("persona-address-100k", lambda c: _persona(address="東" * 100_000), ValueError, "the address is 100000"),
    ApiCase("persona-address-newline", lambda c: _persona(address="東京\n都"), ValueError, "control character"),
    ApiCase("persona-kana-surrogate", lambda c: _persona(given_name_kana="\ud83d"), ValueError, "lone surrogate"),
    ApiCase("persona-sex-list", lambda c: _persona(sex=["1"]), ValueError, "sex must be"),
    ApiCase("persona-issued-datetime", lambda c: _persona(issued=datetime(2024, 1, 1)), ValueError,
            "issued must be a datetime.date, not datetime"),
    ApiCase("admin-unblock-unknown", _admin(admin.unblock, "nosuch"), admin.AdminError, "unknown key 'nosuch'"),
    ApiCase("admin-unblock-no-value", _admin(admin.unblock, "text-reserved"), admin.AdminError, "has no value"),
    ApiCase("admin-reset-format", _admin(admin.reset_pin, "auth", "12"), admin.AdminError, "exactly 4 digits"),
    ApiCase("admin-reset-derived", _admin(admin.reset_pin, "visual-a", "123456789018"), admin.AdminError, "cannot be set"),
    ApiCase("admin-kiosk-text", _admin(admin.kiosk_reset, "text", "1234", "1234"), admin.AdminError,
            "only the JPKI secrets"),
    ApiCase("card-load-missing", lambda c: _load(Ctx(c.tmp / "none", c.tmp, c.monkeypatch)), StateError,
            "no card directory here"),
]
API_CASES += [
    ApiCase("admin-reset-int", _admin(admin.reset_pin, "auth", 1234), admin.AdminError, "must be a string"),
    ApiCase("admin-kiosk-int", _admin(admin.kiosk_reset, "auth", "4321", 1234), admin.AdminError, "must be a string"),
    ApiCase("admin-kiosk-new-int", _admin(admin.kiosk_reset, "auth", 4321, "ABC123"), admin.AdminError, "must be a string"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in API_CASES])
def test_api_bad_input(case: ApiCase, ctx: Ctx) -> None:
    before = tree_hash(ctx.card)
    with pytest.raises(case.error) as info:
        case.call(ctx)
    message = str(info.value)
    assert case.says in message and "\n" not in message, message
    assert tree_hash(ctx.card) == before
    assert not (ctx.tmp / "n").exists()


@pytest.mark.parametrize(("name", "writer", "says"), PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_profile_load_refuses(name: str, writer: Callable[[Path], Path], says: str, tmp_path: Path) -> None:
    path = writer(tmp_path)
    with pytest.raises(ProfileError) as info:
        Profile.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message, message


def test_default_profile_round_trips_through_the_test_writer(tmp_path: Path) -> None:
    """The mutations start from a valid profile: unchanged, the written copy loads like the default."""
    path = mutate(lambda doc: None)(tmp_path)
    loaded, default = Profile.load(path), Profile.load()
    assert (loaded.keys, loaded.aps, loaded.atr_contact) == (default.keys, default.aps, default.atr_contact)


def test_profile_private_key_names_are_the_issuers() -> None:
    from mynaemu.content import KEY_IDS
    from mynaemu.profile import PRIVATE_KEY_NAMES

    assert set(PRIVATE_KEY_NAMES) == set(KEY_IDS)


# -- as real processes -------------------------------------------------------------------------------
def cli(*args: str | bytes, input: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mynaemu", *args], capture_output=True, timeout=120, cwd=ROOT,
                          input=input, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


SUBPROCESS_CASES = [
    ("odd-hex-verify", ["send", "{card}", "002000800437333931F"], 2, b"(00200080***********)"),
    ("profile-directory", ["issue", "{tmp}/new", "--profile", "{tmp}"], 2, b"is a directory"),
    # One argument may hold at most 128 KiB (MAX_ARG_STRLEN): 100,000 ASCII characters fit.
    ("name-100k", ["issue", "{tmp}/new", "--name", "a" * 50_000 + "\u3000" + "b" * 49_999], 2, b"50000 characters"),
    ("trace-directory", ["serve", "{card}", "--trace", "{tmp}", "--no-start-pcscd"], 2, b"is a directory"),
    ("replay-binary", ["replay", "{card}/keys.json.gz", "--card", "{card}"], 2, b"no such transcript"),
    ("unknown-option", ["info", "{card}", "--secret", "7391"], 2, b"not shown"),
]


@pytest.mark.parametrize(("name", "argv", "code", "says"), SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_cli_process_prints_one_line_and_no_traceback(name: str, argv: list[str], code: int, says: bytes,
                                                      card_dir: Path, tmp_path: Path) -> None:
    before = tree_hash(card_dir)
    res = cli(*[a.replace("{card}", str(card_dir)).replace("{tmp}", str(tmp_path)) for a in argv])
    assert res.returncode == code, res.stderr
    assert len(res.stderr.splitlines()) == 1 and b"Traceback" not in res.stderr, res.stderr
    assert says in res.stderr
    assert b"7391" not in res.stderr
    assert tree_hash(card_dir) == before


def test_lone_surrogate_from_a_real_argv(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape)."""
    res = cli("issue", str(tmp_path / "new"), "--name", "山田\u3000".encode() + b"\xff")
    assert res.returncode == 2 and b"lone surrogate (U+DCFF)" in res.stderr, res.stderr
    assert len(res.stderr.splitlines()) == 1 and b"Traceback" not in res.stderr
    assert not (tmp_path / "new").exists()


def test_info_into_a_closed_pipe_is_one_line_exit_1(card_dir: Path) -> None:
    """`mynaemu info CARD | head -1`: the reader goes away; no BrokenPipeError traceback."""
    before = tree_hash(card_dir)
    proc = subprocess.Popen([sys.executable, "-m", "mynaemu", "info", str(card_dir), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `head` exiting before reading anything
    err = proc.stderr.read()
    assert proc.wait(60) == 1
    assert err.count(b"\n") == 1 and b"Traceback" not in err and b"broken pipe" in err, err
    assert tree_hash(card_dir) == before


def test_info_through_head_in_a_shell(card_dir: Path) -> None:
    res = subprocess.run(f"{sys.executable} -m mynaemu info {card_dir} --json | head -c 1", shell=True, cwd=ROOT,
                         capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.stdout == b"{"
    assert b"Traceback" not in res.stderr and len(res.stderr.splitlines()) <= 1, res.stderr


def test_serve_without_pcscd_really_running(card_dir: Path, tmp_path: Path) -> None:
    """The real process, pointed at a pcscd socket nobody serves: it says so and starts none."""
    from reader_bridge.pcscd import SOCKET_ENV, pcscd_running

    nowhere = tmp_path / "no-pcscd" / "pcscd.comm"  # whatever pcscd this machine or the suite runs
    res = cli("serve", str(card_dir), "--no-start-pcscd", env={SOCKET_ENV: str(nowhere)})
    assert res.returncode == 1 and b"no pcscd is running" in res.stderr, res.stderr
    assert len(res.stderr.splitlines()) == 1
    assert not pcscd_running(nowhere) and not nowhere.parent.exists()
