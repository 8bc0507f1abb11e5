"""Guided scenarios: steps a trainer clicks through, each sending real APDUs through PC/SC.

Every step talks to the card through the same PC/SC reader a client would use (pyscard, by the
reader's name), so the answers on the page are the card's own; the office's and kiosk's steps
go through the scenario controls (``mynaemu.controls``), as a municipal office is not an APDU.
A step returns ``{"exchanges": [...], "notes": [...], "matrix": ...}``; commands are masked
(``mynaemu.redact``) unless the trainer shows guesses on a demo card.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from ..persona import check_number_b, japanese_era_yymmdd
from ..profile import Profile
from ..redact import carries_secret, mask_command
from ..testing import AIDS, TEST_SECRETS
from .live import EF_LABELS, sw_meaning

OK = "9000"
PIN_EF = {"auth": ("jpki", 0x0018), "sign": ("jpki", 0x001B)}
GUESSES = {"auth": ["0000", "1111", "9999", "2580", "1212", "7777"],
           "sign": ["PASSWORD", "ABC12", "QWERTY1", "ABCDEF", "123456", "A1B2C3", "ZZZZZZ"]}
OTHER_SECRET = {"auth": "sign", "sign": "auth"}
# The DigestInfo of SHA-256 over a fixed text: what a relying party asks the card to sign.
DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(b"mynaemu console").digest()


class StepUnavailable(Exception):
    """The step cannot run for this card (why, in one line)."""


class ReaderClient:
    """A pyscard connection to one reader, opened on first use and again after a card change."""

    def __init__(self, reader: str) -> None:
        self.reader = reader
        self._conn: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        from smartcard.System import readers

        matches = [r for r in readers() if str(r) == self.reader]
        if not matches:
            raise StepUnavailable(f"no PC/SC reader {self.reader!r}")
        conn = matches[0].createConnection()
        conn.connect()
        return conn

    def transmit(self, apdu: bytes) -> bytes:
        from smartcard.Exceptions import CardConnectionException, NoCardException

        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    data, sw1, sw2 = self._conn.transmit(list(apdu))
                    return bytes(data) + bytes((sw1, sw2))
                except (CardConnectionException, NoCardException) as exc:
                    self.close_locked()
                    if attempt == 2:
                        raise StepUnavailable(f"the card does not answer in {self.reader!r} "
                                              f"(removed? insert it first): {type(exc).__name__}") from None
        raise AssertionError("unreachable")

    def close_locked(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a connection already gone
                self._conn.disconnect()
            with contextlib.suppress(Exception):  # and its PC/SC context, now rather than at garbage collection
                self._conn.release()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()


# -- APDUs ---------------------------------------------------------------------------------------
def select_ap(name: str) -> bytes:
    aid = bytes.fromhex(AIDS[name])
    return bytes((0x00, 0xA4, 0x04, 0x0C, len(aid))) + aid


def select_ef(fid: int) -> bytes:
    return bytes((0x00, 0xA4, 0x02, 0x0C, 0x02)) + fid.to_bytes(2, "big")


def verify(value: str) -> bytes:
    raw = value.encode("ascii")
    return bytes((0x00, 0x20, 0x00, 0x80, len(raw))) + raw


QUERY = bytes.fromhex("00200080")
READ_1 = bytes.fromhex("00B0000001")
READ_RECORD_1 = bytes.fromhex("00B2010400")
SIGN = bytes((0x80, 0x2A, 0x00, 0x80, len(DIGEST_INFO))) + DIGEST_INFO + b"\x00"


class Run:
    """One step's run: sends APDUs through the reader, keeps what the page shows of them."""

    def __init__(self, client: ReaderClient, *, show_plain: bool, authority: Any = None) -> None:
        self.client = client
        self.authority = authority  # scenario 4's relying party asks it (``relying.AuthorityService``)
        self.show_plain = show_plain
        self.exchanges: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []

    def send(self, apdu: bytes, what: str) -> str:
        """The status word (hex) of the card's answer; the exchange is recorded, masked."""
        rsp = self.client.transmit(apdu)
        status = rsp[-2:].hex().upper()
        entry = {"what": what, "cmd": mask_command(apdu), "sw": status, "meaning": sw_meaning(rsp[-2:]),
                 "length": len(rsp) - 2}
        if self.show_plain and carries_secret(apdu):
            entry["plain"] = apdu.hex().upper()
        self.exchanges.append(entry)
        return status

    def note(self, note_id: str, **values: Any) -> None:
        self.notes.append({**values, "id": note_id})

    def result(self, **extra: Any) -> dict[str, Any]:
        return {"exchanges": self.exchanges, "notes": self.notes, **extra}


# -- the card face (what is printed on the card) ---------------------------------------------------
def face_values(persona: dict[str, Any], profile: Profile) -> dict[str, str]:
    """The check numbers a finder reads off the card: 照合番号A, 照合番号B, the birth-date key."""
    from ..issuance import persona_from_json

    p = persona_from_json(persona)
    era = profile.check_b_japanese_era
    birth = japanese_era_yymmdd(p.birth) if era else p.birth.strftime("%y%m%d")
    return {"a": p.my_number, "b": check_number_b(p, era), "birth": birth}


def birth_mmdd(persona: dict[str, Any]) -> str:
    return date.fromisoformat(persona["birth"]).strftime("%m%d")


# -- scenario 2: the matrix ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Column:
    ap: str
    fid: int
    kind: str  # binary, record, rsa
    label: str

    @property
    def id(self) -> str:
        return f"{self.ap}-{self.fid:04X}"


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    keys: tuple[str, ...]  # the keys the attacker can present (their values: face data or a PIN)


MATRIX_ROWS = (
    Row("nothing", ()),
    Row("check-a", ("text-a", "visual-a")),
    Row("check-b", ("text-b", "visual-b")),
    Row("birth", ("visual-birth",)),
    Row("face", ("text-a", "visual-a", "text-b", "visual-b", "visual-birth")),
    Row("text-pin", ("text",)),
    Row("auth-pin", ("auth",)),
    Row("sign-pin", ("sign",)),
    Row("juki-pin", ("juki", "common")),
)
MATRIX_APS = ("jpki", "text", "visual", "juki", "common")


def matrix_columns(profile: Profile) -> list[Column]:
    """Every readable-kind EF of the APs, and the private keys that need a credential to sign."""
    out = []
    for ap in MATRIX_APS:
        for fid, ef in sorted(profile.aps[ap].efs.items()):
            if ef.type in ("binary", "record"):
                out.append(Column(ap, fid, ef.type, EF_LABELS.get(ef.content, ef.content)))
            elif ef.type == "rsa" and ef.read is not None and "sign" in ef.ops:
                out.append(Column(ap, fid, "rsa", "sign with " + EF_LABELS.get(ef.private_key, ef.private_key)))
    return out


def key_values(card: Any, profile: Profile) -> dict[str, str | None]:
    """The value of every key the matrix presents: the face's from the persona, PINs of demo/test cards."""
    face = face_values(card.persona(), profile)
    values: dict[str, str | None] = {"text-a": face["a"], "visual-a": face["a"], "text-b": face["b"],
                                     "visual-b": face["b"], "visual-birth": face["birth"]}
    for key in ("text", "auth", "sign", "juki", "common"):
        values[key] = card.secret(key)
    return values


def pin_ef(profile: Profile, ap: str, key: str) -> int | None:
    for fid, ef in profile.aps[ap].efs.items():
        if ef.type == "pin" and ef.key == key:
            return fid
    return None


def run_matrix(run: Run, card: Any, profile: Profile) -> dict[str, Any]:
    """Try every column with every row's credentials, through the reader; the answers make the matrix."""
    columns = matrix_columns(profile)
    values = key_values(card, profile)
    rows = []
    for row in MATRIX_ROWS:
        missing = [k for k in row.keys if values.get(k) is None]
        if missing:
            rows.append({"id": row.id, "keys": list(row.keys), "unavailable": "pin-unknown", "cells": {}})
            continue
        cells: dict[str, str] = {}
        for ap in MATRIX_APS:
            run.send(select_ap(ap), f"SELECT {ap}")
            for key in row.keys:
                fid = pin_ef(profile, ap, key)
                if fid is None:
                    continue
                run.send(select_ef(fid), f"SELECT EF {fid:04X}")
                status = run.send(verify(values[key] or ""), f"VERIFY {key}")
                if status != OK:
                    run.note("verify-failed", key=key, sw=status)
            for col in (c for c in columns if c.ap == ap):
                run.send(select_ef(col.fid), f"SELECT EF {col.fid:04X}")
                if col.kind == "binary":
                    status = run.send(READ_1, f"READ BINARY {col.id}")
                elif col.kind == "record":
                    status = run.send(READ_RECORD_1, f"READ RECORD {col.id}")
                else:
                    status = run.send(SIGN, f"SIGN {col.id}")
                cells[col.id] = status
        rows.append({"id": row.id, "keys": list(row.keys), "cells": cells})
    run.exchanges = run.exchanges[-12:]  # the page shows the tail; the matrix is the result
    return {"columns": [{"id": c.id, "ap": c.ap, "fid": f"{c.fid:04X}", "kind": c.kind, "label": c.label}
                        for c in columns], "rows": rows}


# -- the scenarios -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Step:
    id: str
    run: Callable[[Any, Run], None]
    repeat: bool = False


@dataclass(frozen=True, slots=True)
class Scenario:
    id: str
    steps: tuple[Step, ...]
    demo_only: bool = False  # changes a PIN: demo and test cards only
    needs_authority: bool = False
    key: str | None = None


def _action(card: Any, request: dict[str, Any]) -> dict[str, Any]:
    answer = card.handle(request)
    if not answer.get("ok"):
        raise StepUnavailable(answer.get("error", "refused"))
    return answer


def _lockout(key: str) -> Scenario:
    ap, fid = PIN_EF[key]

    def select(card: Any, run: Run) -> None:
        run.send(select_ap(ap), "SELECT JPKI")
        run.send(select_ef(fid), f"SELECT EF {fid:04X} ({EF_LABELS[key]})")
        run.send(QUERY, "VERIFY (retry query)")

    def guess(card: Any, run: Run) -> None:
        run.send(select_ap(ap), "SELECT JPKI")
        run.send(select_ef(fid), f"SELECT EF {fid:04X}")
        real = card.secret(key)
        tries = _tries(card, key)
        if tries == 0:
            run.note("already-locked")
        choices = [g for g in GUESSES[key] if g != real]
        value = choices[(_limit(card, key) - tries) % len(choices)]
        status = run.send(verify(value), "VERIFY (a guess)")
        if status == OK:
            run.note("guessed-right")
        elif status == "63C0":
            run.note("locked-now")
        elif status == "6984":
            run.note("locked")
        else:
            run.note("wrong", left=int(status[3], 16))

    def after_lock(card: Any, run: Run) -> None:
        run.send(select_ap(ap), "SELECT JPKI")
        run.send(select_ef(fid), f"SELECT EF {fid:04X}")
        real = card.secret(key)
        if real is None:
            run.send(verify(GUESSES[key][0]), "VERIFY (a guess)")
        else:
            status = run.send(verify(real), "VERIFY (the right PIN)")
            run.note("right-pin-refused" if status == "6984" else "right-pin", sw=status)

    def unblock(card: Any, run: Run) -> None:
        _action(card, {"op": "unblock", "key": key})
        run.note("office-unblocked", key=key)
        select(card, run)

    def kiosk(card: Any, run: Run) -> None:
        other, current = card.secret(OTHER_SECRET[key]), card.secret(key)
        if other is None or current is None:
            raise StepUnavailable("the kiosk needs the other secret; the console knows it for demo and test cards only")
        _action(card, {"op": "kiosk-reset", "key": key, "new": current, "other": other})
        run.note("kiosk-reset", key=key, other=OTHER_SECRET[key])
        select(card, run)

    return Scenario(f"lockout-{key}", (Step("select", select), Step("guess", guess, repeat=True),
                                       Step("after-lock", after_lock), Step("unblock", unblock),
                                       Step("kiosk", kiosk)), key=key)


def _tries(card: Any, key: str) -> int:
    return int(card.snapshot()["keys"][key]["tries_left"])


def _limit(card: Any, key: str) -> int:
    return int(card.snapshot()["keys"][key]["limit"])


def _found_matrix(card: Any, run: Run) -> None:
    raise AssertionError("run through run_matrix")  # replaced in run_step (needs the profile)


def _guessable() -> Scenario:
    def holder_choice(card: Any, run: Run) -> None:
        _action(card, {"op": "reset-pin", "key": "auth", "new": birth_mmdd(card.persona())})
        run.note("holder-chose-birthday")

    def read_face(card: Any, run: Run) -> None:
        run.note("printed-birth", birth=card.persona()["birth"])

    def guess(card: Any, run: Run) -> None:
        run.send(select_ap("jpki"), "SELECT JPKI")
        run.send(select_ef(0x0018), "SELECT EF 0018 (auth PIN)")
        status = run.send(verify(birth_mmdd(card.persona())), "VERIFY (birth MMDD)")
        run.note("guessed-right" if status == OK else "wrong", sw=status)

    def use(card: Any, run: Run) -> None:
        run.send(select_ef(0x0017), "SELECT EF 0017 (authentication key)")
        status = run.send(SIGN, "COMPUTE DIGITAL SIGNATURE")
        run.note("signed-as-holder" if status == OK else "not-signed", sw=status)

    def restore(card: Any, run: Run) -> None:
        _action(card, {"op": "reset-pin", "key": "auth", "new": TEST_SECRETS["auth"]})
        run.note("restored")

    return Scenario("guessable", (Step("holder-choice", holder_choice), Step("read-face", read_face),
                                  Step("guess", guess), Step("use", use), Step("restore", restore)), demo_only=True)


def _leaked() -> Scenario:
    def text_a(card: Any, run: Run) -> None:
        my_number = card.persona()["my_number"]
        run.send(select_ap("text"), "SELECT input-assist AP")
        run.send(select_ef(0x0014), "SELECT EF 0014 (check number A)")
        run.send(verify(my_number), "VERIFY My Number")
        run.send(select_ef(0x0001), "SELECT EF 0001 (My Number)")
        run.send(READ_1, "READ BINARY")
        run.send(select_ef(0x0002), "SELECT EF 0002 (name, address, birth date, sex)")
        status = run.send(READ_1, "READ BINARY")
        run.note("basic4-refused" if status == "6982" else "basic4", sw=status)

    def visual_a(card: Any, run: Run) -> None:
        run.send(select_ap("visual"), "SELECT face-check AP")
        run.send(select_ef(0x0013), "SELECT EF 0013 (check number A)")
        run.send(verify(card.persona()["my_number"]), "VERIFY My Number")
        run.send(select_ef(0x0002), "SELECT EF 0002 (card face)")
        run.send(READ_1, "READ BINARY")
        run.note("face-is-printed")

    def jpki(card: Any, run: Run) -> None:
        run.send(select_ap("jpki"), "SELECT JPKI")
        run.send(select_ef(0x0017), "SELECT EF 0017 (authentication key)")
        status = run.send(SIGN, "COMPUTE DIGITAL SIGNATURE")
        run.note("no-login" if status == "6982" else "login", sw=status)

    def no_chain(card: Any, run: Run) -> None:
        run.note("records-stay")

    return Scenario("leaked", (Step("text-a", text_a), Step("visual-a", visual_a), Step("jpki", jpki),
                               Step("no-chain", no_chain)))


def read_auth_certificate(run: Run) -> bytes:
    """The auth certificate, read off the card through the reader (EF 000A is free to read)."""
    run.send(select_ap("jpki"), "SELECT JPKI")
    run.send(select_ef(0x000A), "SELECT EF 000A (authentication certificate)")
    head = run.client.transmit(bytes.fromhex("00B0000004"))
    if head[-2:] != b"\x90\x00" or len(head) < 6:
        raise StepUnavailable(f"the certificate could not be read ({head[-2:].hex().upper()})")
    total = 4 + int.from_bytes(head[2:4], "big")
    body = b""
    while len(body) < total:
        chunk = min(256, total - len(body))
        rsp = run.client.transmit(bytes((0x00, 0xB0)) + len(body).to_bytes(2, "big") + bytes((chunk % 256,)))
        if rsp[-2:] != b"\x90\x00":
            raise StepUnavailable(f"the certificate could not be read ({rsp[-2:].hex().upper()})")
        body += rsp[:-2]
    run.exchanges.append({"what": f"READ BINARY x{(total + 255) // 256} (the certificate, {total} bytes)",
                          "cmd": "00B0....", "sw": "9000", "meaning": sw_meaning(b"\x90\x00"), "length": total})
    return body[:total]


def _relying_party_checks(card: Any, run: Run) -> dict[str, Any]:
    """Log in at a relying party: it sends a challenge, the card signs it (auth PIN), the RP asks OCSP."""
    import os

    from .relying import check_signature

    if run.authority is None:
        raise StepUnavailable("needs the emulated authority (mynaemu.authority), which is not installed")
    pin = card.secret("auth")
    if pin is None:
        raise StepUnavailable("the holder's auth PIN: the console knows it for demo and test cards only")
    cert = read_auth_certificate(run)
    challenge = os.urandom(32)
    digest_info = DIGEST_INFO[:-32] + hashlib.sha256(challenge).digest()
    run.send(select_ef(0x0018), "SELECT EF 0018 (auth PIN)")
    run.send(verify(pin), "VERIFY (the holder's PIN)")
    run.send(select_ef(0x0017), "SELECT EF 0017 (authentication key)")
    command = bytes((0x80, 0x2A, 0x00, 0x80, len(digest_info))) + digest_info + b"\x00"
    rsp = run.client.transmit(command)
    run.exchanges.append({"what": "COMPUTE DIGITAL SIGNATURE (the challenge)", "cmd": mask_command(command),
                          "sw": rsp[-2:].hex().upper(), "meaning": sw_meaning(rsp[-2:]), "length": len(rsp) - 2})
    if rsp[-2:] != b"\x90\x00":
        raise StepUnavailable(f"the card did not sign ({rsp[-2:].hex().upper()})")
    return check_signature(run.authority, rsp[:-2], challenge, cert)


def _lost() -> Scenario:
    def accepted(card: Any, run: Run) -> None:
        verdict = _relying_party_checks(card, run)
        run.note("rp-accepted" if verdict["valid"] else "rp-refused", reason=verdict["reason"])

    def hotline(card: Any, run: Run) -> None:
        answer = _action(card, {"op": "hold"})
        run.note("held", status=answer.get("hold", {}).get("status", "on hold"))

    def lift(card: Any, run: Run) -> None:
        _action(card, {"op": "lift"})
        run.note("lifted")
        accepted(card, run)

    def reissue(card: Any, run: Run) -> None:
        # The office's other way out: a new card (beside this one); this card's certificates are
        # superseded, and the same relying party now refuses this card's signature.
        answer = _action(card, {"op": "reissue"})
        run.note("reissued", new_card_dir=answer.get("reissue", {}).get("new_card_dir", ""))
        accepted(card, run)

    steps = (Step("accepted", accepted), Step("hotline", hotline), Step("refused", accepted), Step("lift", lift),
             Step("reissue", reissue))
    return Scenario("lost", steps, demo_only=True, needs_authority=True)


def _found() -> Scenario:
    return Scenario("found", (Step("matrix", _found_matrix),))


SCENARIOS: dict[str, Scenario] = {s.id: s for s in (_lockout("auth"), _lockout("sign"), _found(), _guessable(),
                                                    _lost(), _leaked())}


def run_step(scenario: Scenario, step_id: str, card: Any, client: ReaderClient, profile: Profile, *,
             authority: Any = None) -> dict[str, Any]:
    """Run one step on ``card`` through ``client``; the result for the page (``error`` when it cannot run)."""
    step = next((s for s in scenario.steps if s.id == step_id), None)
    if step is None:
        raise KeyError(step_id)
    run = Run(client, show_plain=bool(card.demo and card.snapshot().get("show_guesses")), authority=authority)
    try:
        if scenario.demo_only and card.kind not in ("demo", "test"):
            raise StepUnavailable("this scenario changes the auth PIN: demo and test cards only")
        if step.run is _found_matrix:
            return run.result(matrix=run_matrix(run, card, profile))
        step.run(card, run)
    except StepUnavailable as exc:
        return run.result(error=str(exc))
    except Exception as exc:  # a bug or a reader gone: one line on the page, never a secret
        return run.result(error=f"the step failed ({type(exc).__name__})")
    return run.result()
