"""Stateful property tests: random command interleavings against a small reference model.

The model holds what the card must hold: each key's value, tries left and limit, the current
application and EF, and the security status. It predicts the exact answer of every command it
sends (the documented choices of ``mynaemu/aps/base.py`` and docs/card-interface.md, Decisions), and after every step
the card must agree: counters equal (also after a restart from disk), security status equal and
only for keys of the current application, answers in the status-word whitelist.

The store under the card fails on demand (before or after its rename, in an attempt's decrement
or in its reset), second handles are tried, and the card is reloaded; the machine checks that
no key ever gives more wrong answers than its limit between two resets, and that no VERIFY
answers 9000 (or 63Cx) unless that attempt's decrement had reached the disk first.

Bounded for CI. Long runs: ``MYNAEMU_HYPOTHESIS_PROFILE=long`` (or ``soak``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from mynaemu import Card, StateError, admin
from mynaemu.profile import Profile

from .cardkit import right_values, wrong_value
from .fuzzkit import AIDS, FOREIGN_AIDS, OK, allowed_sws, check_answer, ef_body, encode

PROFILES = {
    "ci": {"max_examples": 200, "stateful_step_count": 40},
    "long": {"max_examples": 2_000, "stateful_step_count": 80},
    "soak": {"max_examples": 20_000, "stateful_step_count": 150},
}
PROFILE_NAME = os.environ.get("MYNAEMU_HYPOTHESIS_PROFILE", "ci")
SETTINGS = settings(
    **PROFILES[PROFILE_NAME],
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROFILE = Profile.load()
AP_NAMES = list(PROFILE.aps)
KEY_NAMES = list(PROFILE.keys)
KEY_HOME = {ef.key: (ap, fid) for ap, spec in PROFILE.aps.items() for fid, ef in spec.efs.items() if ef.type == "pin"}
ALL_FIDS = sorted({fid for spec in PROFILE.aps.values() for fid in spec.efs})
BINARY_EFS = [(ap, fid) for ap, spec in PROFILE.aps.items() for fid, ef in spec.efs.items() if ef.type == "binary"]
RECORD_EFS = [(ap, fid) for ap, spec in PROFILE.aps.items() for fid, ef in spec.efs.items() if ef.type == "record"]
RSA_EFS = [(ap, fid) for ap, spec in PROFILE.aps.items() for fid, ef in spec.efs.items() if ef.type == "rsa"]
GET_DATA_TAGS = sorted({t for spec in PROFILE.aps.values() for t in spec.data_objects})

# What each application answers (CLA, INS); anything else is 6D00. Written from the spec, not
# read from the implementation's tables.
_COMMON = {(0x00, 0xA4), (0x00, 0xB0), (0x00, 0xB2), (0x00, 0x20), (0x00, 0x84), (0x00, 0x88), (0x80, 0x2A),
           (0x80, 0xAE)}  # SET SESSION KEY: answered in every AP (refused outside the text AP)
COMMANDS = {
    "mf": {(0x00, 0xA4), (0x00, 0xB0), (0x00, 0x84), (0x00, 0xCA)},
    "jpki": _COMMON | {(0x00, 0x24), (0x80, 0xA2)},
    "text": _COMMON | {(0x00, 0x24)},
    "visual": _COMMON,
    "juki": _COMMON | {(0x80, 0x32)},
    "common": _COMMON | {(0x80, 0x32)},
}
# COMPUTE DIGITAL SIGNATURE: P1 -> accepted data lengths (docs/card-interface.md §5.1).
SIGN_LENGTHS = {0x00: (1, 245), 0x01: (1, 255), 0x02: (32, 32), 0x03: (1, 255), 0x04: (32, 32), 0x05: (1, 255)}
FORMATS = {
    "digits4": r"[0-9]{4}",
    "digits6": r"[0-9]{6}",
    "digits12": r"[0-9]{12}",
    "digits14": r"[0-9]{14}",
    "password": r"[A-Z0-9]{6,16}",
}
INVALID_VALUES = [b"123", b"12345", b"12a4", b"abc123", b"ABC12", b"ABCDEFGHIJKLMNOPQ", b"AB C123", b"\x00\x00\x00\x00",
                  b"1234567890123", b"\xff" * 6]

SW = {name: bytes.fromhex(h) for name, h in {
    "wrong_length": "6700", "incompatible": "6981", "security": "6982", "blocked": "6984", "conditions": "6985",
    "no_ef": "6986", "wrong_data": "6A80", "not_found": "6A82", "no_record": "6A83", "p1p2": "6A86",
    "no_data": "6A88", "offset": "6B00", "ins": "6D00", "memory": "6581"}.items()}


def tries_sw(n: int) -> bytes:
    return bytes((0x63, 0xC0 | n))


def public_key(private_key):
    """The public half of a card key."""
    return private_key.public_key()


class Model:
    """What the card must hold: keys, current application and EF, security status."""

    def __init__(self, card: Card) -> None:
        values = right_values(card)
        self.limit = {k: s.limit for k, s in card.profile.keys.items()}  # the card's own profile
        self.value = {k: values.get(k, "").encode() if PROFILE.keys[k].value != "none" else b"" for k in KEY_NAMES}
        self.tries = {k: (self.limit[k] if self.value[k] else 0) for k in KEY_NAMES}
        self.issued = dict(self.value)
        self.clear()

    def clear(self) -> None:
        """Power-on state: the card manager, no current EF, nothing verified."""
        self.ap = "mf"
        self.ef: int | None = None
        self.verified: set[str] = set()

    def spec(self, fid: int | None):
        return None if fid is None else PROFILE.aps[self.ap].efs.get(fid)

    def denied(self, rule: frozenset[str]) -> bytes:
        """6984 when every key that could open it is blocked, else 6982 (base.py's choice)."""
        if rule and all(self.tries[k] == 0 for k in rule):
            return SW["blocked"]
        return SW["security"]

    def allows(self, rule: frozenset[str] | None) -> bool:
        return rule is None or not rule.isdisjoint(self.verified)

    def key_ef(self, p2: int) -> tuple[int | None, bytes | None]:
        """(fid, None) for the EF P2 names (80 = current, 80|SFI), or (None, status word)."""
        if p2 == 0x80:
            return (self.ef, None) if self.ef is not None else (None, SW["no_ef"])
        if 0x81 <= p2 <= 0x9E:
            fid = p2 & 0x1F
            return (fid, None) if fid in PROFILE.aps[self.ap].efs else (None, SW["no_data"])
        return None, SW["p1p2"]

    def supports(self, cla: int, ins: int) -> bool:
        return (cla, ins) in COMMANDS[self.ap]


class CardMachine(RuleBasedStateMachine):
    """Drives one fresh card copy per example; ``template`` and ``workdir`` are set by the test."""

    template: Path
    workdir: Path

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(dir=self.workdir))
        self.path = self.tmp / "card"
        shutil.copytree(self.template, self.path)
        self.card = Card.load(self.path)
        self.card.store.fault = self._store_step
        self.m = Model(self.card)
        # 6581 too: this machine makes the disk fail (and predicts exactly when 6581 comes).
        self.whitelist = allowed_sws(max(self.m.limit.values())) | {SW["memory"]}
        self.before = dict(self.m.tries)
        self.may_rise: set[str] = set()
        self.writes: list[str] = []  # steps of the state writes of the command being sent
        self.arm: tuple[int, str] | None = None  # (n-th write of the next command, step) to fail at
        self.wrong_since_reset = {k: 0 for k in KEY_NAMES}

    def teardown(self) -> None:
        self.card.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- plumbing ------------------------------------------------------------------------------
    def _store_step(self, where: str) -> None:
        """The store's fault hook: records every step; fails the armed one like a dying disk."""
        self.writes.append(where)
        if self.arm is not None and self.writes.count("open") == self.arm[0] and where == self.arm[1]:
            self.arm = None
            raise OSError(errno.EIO, "Input/output error (injected)")

    def durable_writes(self) -> int:
        """State writes of the last command that reached the disk (renamed; fsync of the dir aside)."""
        return self.writes.count("renamed")

    def send(self, apdu: bytes) -> bytes:
        self.writes = []
        resp = self.card.transmit(apdu)
        problem = check_answer(apdu, resp, self.whitelist)
        assert problem is None, f"{apdu.hex().upper()}: {problem}"
        return resp

    def expect(self, apdu: bytes, want: bytes) -> bytes:
        resp = self.send(apdu)
        assert resp == want, f"{apdu.hex().upper()[:80]} answered {resp.hex().upper()[:80]}, model says {want.hex().upper()[:80]}"
        return resp

    def select_ap_name(self, name: str) -> None:
        self.expect(encode(0x00, 0xA4, 0x04, 0x0C, AIDS[name]), OK)
        self.m.ap = name
        self.m.ef = None
        self.m.verified = set()

    def select_fid(self, fid: int) -> None:
        self.expect(encode(0x00, 0xA4, 0x02, 0x0C, fid.to_bytes(2, "big")), OK)
        self.m.ef = fid

    @initialize()
    def start(self) -> None:
        """Counters of the issued card: full, except keys issued blocked."""
        for k in KEY_NAMES:
            assert self.card.tries_left(k) == self.m.tries[k], k

    # -- SELECT --------------------------------------------------------------------------------
    aid_targets = st.one_of(
        st.sampled_from(list(AIDS.values())),
        st.sampled_from(list(AIDS.values())),
        st.sampled_from(list(AIDS.values())),
        st.builds(lambda aid, k: aid[: max(1, len(aid) - k)], st.sampled_from(list(AIDS.values())), st.integers(1, 9)),
        st.builds(lambda aid, b: aid + b, st.sampled_from(list(AIDS.values())), st.binary(min_size=1, max_size=2)),
        st.sampled_from(FOREIGN_AIDS),
        st.binary(min_size=0, max_size=17),
    )

    @rule(data=aid_targets, p2=st.one_of(st.just(0x0C), st.just(0x0C), st.sampled_from([0x00, 0x04, 0x02, 0x0E, 0x01, 0x08])),
          le=st.sampled_from([None, 256]), ext=st.booleans())
    def select_aid(self, data: bytes, p2: int, le: int | None, ext: bool) -> None:
        apdu = encode(0x00, 0xA4, 0x04, p2, data, le, ext)
        m = self.m
        if p2 & 0x03 == 0x02:
            want = SW["not_found"]
        elif p2 not in (0x00, 0x04, 0x0C):
            want = SW["p1p2"]
        elif not 1 <= len(data) <= 16:
            want = SW["wrong_length"]
        else:
            target = next((n for n in AP_NAMES if PROFILE.aps[n].aid == data), None)
            if target is None and len(data) >= 5:  # JICSAP prefix selection, first in profile order
                target = next((n for n in AP_NAMES if PROFILE.aps[n].aid.startswith(data)), None)
            if target is None:
                want = SW["not_found"]
            else:
                aid = PROFILE.aps[target].aid
                name = bytes((0x84, len(aid))) + aid
                if p2 == 0x0C:
                    want = OK
                elif p2 == 0x04:  # FCP of a DF
                    want = b"\x62" + bytes((len(name) + 3,)) + b"\x82\x01\x38" + name + OK
                else:  # FCI
                    want = b"\x6f" + bytes((len(name),)) + name + OK
                m.ap, m.ef, m.verified = target, None, set()
        self.expect(apdu, want)

    @rule(pick=st.sampled_from(["here", "here", "here", "any", "random"]), odd=st.integers(0, 9), ext=st.booleans(),
          data=st.data())
    def select_ef(self, pick: str, odd: int, ext: bool, data: st.DataObject) -> None:
        """SELECT EF by FID (P1=02, or 00), mostly one of the current AP's; odd P1/P2/Lc now and then."""
        here = sorted(PROFILE.aps[self.m.ap].efs)
        if pick == "here":
            fid = data.draw(st.sampled_from(here))
        elif pick == "any":
            fid = data.draw(st.sampled_from(ALL_FIDS))
        else:
            fid = data.draw(st.integers(0, 0xFFFF))
        p1 = [0x02, 0x00, 0x01, 0x08][odd - 6] if odd >= 6 else 0x02
        p2 = [0x0C, 0x0C, 0x0C, 0x00, 0x04, 0x01][odd] if odd < 6 else 0x0C
        size = {4: 1, 5: 3}.get(odd, 2) if odd in (4, 5) and pick == "random" else 2
        data = fid.to_bytes(2, "big")[:size].ljust(size, b"\x00")
        apdu = encode(0x00, 0xA4, p1, p2, data, None, ext)
        m = self.m
        spec = PROFILE.aps[m.ap].efs.get(fid)
        if p1 not in (0x00, 0x02) or p2 not in (0x0C, 0x00, 0x04):
            want = SW["p1p2"]
        elif size != 2:
            want = SW["wrong_length"]
        elif spec is None:
            want = SW["not_found"]
        else:
            m.ef = fid
            if p2 == 0x0C:
                want = OK
            else:
                if spec.type == "binary":
                    body = b"\x80\x02" + len(ef_body(self.card, m.ap, fid)).to_bytes(2, "big") + b"\x82\x01\x01"
                elif spec.type == "record":
                    body = b"\x82\x01\x02"
                else:
                    body = b"\x82\x01\x08"
                body += b"\x83\x02" + fid.to_bytes(2, "big")
                want = (b"\x62" if p2 == 0x04 else b"\x6f") + bytes((len(body),)) + body + OK
        self.expect(apdu, want)

    @rule(p2=st.sampled_from([0x00, 0x0C]))
    def select_mf_iso(self, p2: int) -> None:
        """ISO 'select MF' (00 A4 00 xx, no data): 6A86 at power-on, a no-op in an AP."""
        self.expect(encode(0x00, 0xA4, 0x00, p2), SW["p1p2"] if self.m.ap == "mf" else OK)

    # -- VERIFY --------------------------------------------------------------------------------
    def _value(self, key: str, kind: str) -> bytes:
        m = self.m
        current = m.value[key] or b"0000"
        if kind == "right":
            return current
        if kind == "wrong":
            return wrong_value(current.decode("latin-1")).encode("latin-1")
        if kind == "issued":
            return m.issued[key] or b"1111"
        if kind == "lower":
            return current.lower()
        return b""  # empty: the retry query

    def _verify(self, p1: int, p2: int, data: bytes, le: int | None, ext: bool) -> None:
        apdu = encode(0x00, 0x20, p1, p2, data, le, ext)
        m = self.m
        if not m.supports(0x00, 0x20):
            self.expect(apdu, SW["ins"])
            return
        if p1 != 0x00:
            self.expect(apdu, SW["p1p2"])
            return
        fid, err = m.key_ef(p2)
        if err is not None:
            self.expect(apdu, err)
            return
        spec = m.spec(fid)
        if spec.type != "pin":
            self.expect(apdu, SW["no_ef"] if p2 == 0x80 else SW["no_data"])
            return
        if le is not None:
            self.expect(apdu, SW["wrong_length"])
            return
        key = spec.key
        if not data:
            self.expect(apdu, tries_sw(m.tries[key]))
            return
        if m.tries[key] == 0:  # a blocked key never matches, not even with the right value
            self.expect(apdu, SW["blocked"])
            return
        right = data == m.value[key] and bool(m.value[key])
        arm = self.arm
        if arm is not None:
            # The write the armed fault hits fails: before its rename nothing changed, after it
            # the new state stands (and the card must have read it back). Either way: 6581.
            n, step = arm
            landed = step in ("renamed", "dir_synced")
            if n == 1:  # the decrement: never compared
                m.tries[key] -= landed
                m.verified.discard(key)
                self.expect(apdu, SW["memory"])
                return
            if n == 2 and right:  # the reset after a match
                m.tries[key] = m.limit[key] if landed else m.tries[key] - 1
                self.wrong_since_reset[key] = 0 if landed else self.wrong_since_reset[key]
                self.may_rise.add(key)
                m.verified.discard(key)
                self.expect(apdu, SW["memory"])
                return
            self.arm = None  # a wrong attempt writes once: the second write's fault never fires
        if right:
            m.tries[key] = m.limit[key]
            m.verified.add(key)
            self.may_rise.add(key)
            self.expect(apdu, OK)
            assert self.durable_writes() == 2, f"9000 after {self.writes}: decrement and reset must both be durable"
            self.wrong_since_reset[key] = 0
        else:
            m.tries[key] -= 1
            m.verified.discard(key)
            self.expect(apdu, tries_sw(m.tries[key]))
            assert self.durable_writes() == 1, f"63Cx after {self.writes}: the decrement must be durable"
            self.wrong_since_reset[key] += 1
            assert self.wrong_since_reset[key] <= m.limit[key], f"{key}: more wrong answers than its limit"

    @rule(key=st.sampled_from(KEY_NAMES), kind=st.sampled_from(["right", "right", "right", "wrong", "empty", "issued", "lower"]),
          how=st.sampled_from(["select", "sfi", "sfi_here"]), reselect=st.booleans(), ext=st.booleans())
    def verify_key(self, key: str, kind: str, how: str, reselect: bool, ext: bool) -> None:
        """VERIFY a key by selecting its EF (P2=80) or by SFI (80|SFI), after going to its AP."""
        ap, fid = KEY_HOME[key]
        if how != "sfi_here" and (reselect or self.m.ap != ap):
            self.select_ap_name(ap)
        if how == "select":
            self.select_fid(fid)
        self._verify(0x00, 0x80 if how == "select" else 0x80 | fid, self._value(key, kind), None, ext)

    @rule(key=st.sampled_from(KEY_NAMES), spare=st.sampled_from([0, 0, 1]),
          then=st.sampled_from(["right", "right", "wrong", "empty", "issued"]), how=st.sampled_from(["select", "sfi"]))
    def exhaust_key(self, key: str, spare: int, then: str, how: str) -> None:
        """Spend a key's tries with wrong values (all, or all but one), then present another value."""
        ap, fid = KEY_HOME[key]
        if self.m.ap != ap:
            self.select_ap_name(ap)
        if how == "select":
            self.select_fid(fid)
        p2 = 0x80 if how == "select" else 0x80 | fid
        for _ in range(max(self.m.tries[key] - spare, 0)):
            self._verify(0x00, p2, self._value(key, "wrong"), None, False)
        self._verify(0x00, p2, self._value(key, then), None, False)

    @rule(p1=st.sampled_from([0x00, 0x00, 0x00, 0x01, 0xFF]),
          p2=st.sampled_from([0x80, 0x80, 0x00, 0x9F, 0xFF, *range(0x81, 0x9F)]),
          data=st.one_of(st.just(b""), st.binary(min_size=1, max_size=20), st.sampled_from([b"1234", b"5678", b"2468"])),
          le=st.sampled_from([None, None, None, 256]), ext=st.booleans())
    def verify_raw(self, p1: int, p2: int, data: bytes, le: int | None, ext: bool) -> None:
        """VERIFY whatever is current or named, with odd P1/P2/Le."""
        self._verify(p1, p2, data, le, ext)

    # -- CHANGE REFERENCE DATA / CHANGE KEY ----------------------------------------------------
    @rule(key=st.sampled_from(KEY_NAMES), cmd=st.sampled_from(["iso", "jicsap", "own", "own"]),
          new=st.one_of(st.just("valid"), st.just("valid"), st.just("same"), st.sampled_from(INVALID_VALUES)),
          prelude=st.sampled_from(["verify", "verify", "select", "none"]), p1_ok=st.booleans() | st.just(True),
          ext=st.booleans(), data=st.data())
    def change(self, key: str, cmd: str, new: object, prelude: str, p1_ok: bool, ext: bool, data: st.DataObject) -> None:
        """00 24 01 80 / 80 32 00 80 with valid and invalid new values, verified or not."""
        m = self.m
        ap, fid = KEY_HOME[key]
        spec = PROFILE.keys[key]
        if prelude != "none":
            if m.ap != ap:
                self.select_ap_name(ap)
            self.select_fid(fid)
            if prelude == "verify":
                self._verify(0x00, 0x80, m.value[key] or b"0000", None, False)
        if cmd == "own":
            cmd = spec.change if spec.change != "none" else "iso"
        if new == "valid":
            pattern = FORMATS.get(spec.format)
            strategy = st.from_regex(pattern.encode(), fullmatch=True) if pattern else st.binary(min_size=1, max_size=32)
            value = data.draw(strategy, label="new value")
        elif new == "same":
            value = m.value[key] or b"0000"
        else:
            value = new  # type: ignore[assignment]
        cla, ins, p1 = (0x00, 0x24, 0x01) if cmd == "iso" else (0x80, 0x32, 0x00)
        if not p1_ok:
            p1 ^= 0x03
        apdu = encode(cla, ins, p1, 0x80, value, None, ext)
        if not m.supports(cla, ins):
            want = SW["ins"]
        elif not p1_ok:
            want = SW["p1p2"]
        elif m.ef is None or m.spec(m.ef).type != "pin":
            want = SW["no_ef"]
        else:
            target = m.spec(m.ef).key
            tspec = PROFILE.keys[target]
            if tspec.change != cmd:
                want = SW["conditions"]
            elif m.tries[target] == 0:
                want = SW["blocked"]
            elif target not in m.verified:
                want = SW["security"]
            elif not _format_ok(tspec.format, value):
                want = SW["wrong_data"]
            else:
                m.value[target] = value
                m.tries[target] = m.limit[target]
                self.wrong_since_reset[target] = 0
                self.may_rise.add(target)
                want = OK
        self.expect(apdu, want)

    # -- READ BINARY / READ RECORD -------------------------------------------------------------
    def _read_expect(self, apdu: bytes, fid: int | None, offset: int, le: int | None, has_data: bool) -> None:
        m = self.m
        spec = m.spec(fid)
        if spec is None:
            self.expect(apdu, SW["no_ef"])
            return
        if le is None or has_data:
            self.expect(apdu, SW["wrong_length"])
            return
        if spec.type != "binary":
            self.expect(apdu, SW["incompatible"])
            return
        if not m.allows(spec.read):
            resp = self.expect(apdu, m.denied(spec.read))
            assert len(resp) == 2, "protected bytes returned without the credential"
            return
        body = ef_body(self.card, m.ap, fid)
        if offset >= len(body):
            self.expect(apdu, SW["offset"])
            return
        self.expect(apdu, body[offset : offset + le] + OK)

    offsets = st.one_of(st.sampled_from([0, 0, 0, 1, 4, 7, 16, 17, 255, 256, 335, 336, 2047, 2048]), st.integers(0, 0x7FFF))
    les = st.one_of(st.sampled_from([None, 1, 4, 0x11, 255, 256, 256, 4096, 65536]), st.integers(1, 65536))

    @rule(offset=offsets, le=les, ext=st.booleans())
    def read_binary_current(self, offset: int, le: int | None, ext: bool) -> None:
        """READ BINARY of the current EF at a 15-bit offset."""
        apdu = encode(0x00, 0xB0, offset >> 8, offset & 0xFF, b"", le, ext)
        m = self.m
        if not m.supports(0x00, 0xB0):
            self.expect(apdu, SW["ins"])
            return
        if m.ef is None:
            self.expect(apdu, SW["no_ef"])
            return
        self._read_expect(apdu, m.ef, offset, le, False)

    @rule(sfi=st.one_of(st.sampled_from(ALL_FIDS).map(lambda f: f & 0x1F), st.integers(0, 0x1F)),
          bits=st.sampled_from([0, 0, 0, 0x20, 0x40]), offset=st.integers(0, 255), le=les, ext=st.booleans(),
          body=st.sampled_from([b"", b"", b"", b"\x00"]))
    def read_binary_sfi(self, sfi: int, bits: int, offset: int, le: int | None, ext: bool, body: bytes) -> None:
        """READ BINARY 80|SFI: selects the EF (also when the read is refused)."""
        apdu = encode(0x00, 0xB0, 0x80 | bits | sfi, offset, body, le, ext)
        m = self.m
        if not m.supports(0x00, 0xB0):
            self.expect(apdu, SW["ins"])
        elif bits:
            self.expect(apdu, SW["p1p2"])
        elif sfi not in PROFILE.aps[m.ap].efs:
            self.expect(apdu, SW["not_found"])
        else:
            m.ef = sfi
            self._read_expect(apdu, sfi, offset, le, bool(body))

    @rule(rec=st.sampled_from([0, 1, 1, 1, 2, 3, 0xFF]), sfi=st.sampled_from([0, 0, 1, 2, 0x1C, 0x1F, 5]),
          mode=st.sampled_from([4, 4, 5, 0, 6]), le=les, ext=st.booleans())
    def read_record(self, rec: int, sfi: int, mode: int, le: int | None, ext: bool) -> None:
        self._read_record(rec, sfi, mode, le, ext)

    def _read_record(self, rec: int, sfi: int, mode: int, le: int | None, ext: bool) -> None:
        p2 = (sfi << 3) | mode
        apdu = encode(0x00, 0xB2, rec, p2, b"", le, ext)
        m = self.m
        if not m.supports(0x00, 0xB2):
            self.expect(apdu, SW["ins"])
            return
        if sfi == 0x1F or mode not in (4, 5) or rec == 0:
            self.expect(apdu, SW["p1p2"])
            return
        if le is None:
            self.expect(apdu, SW["wrong_length"])
            return
        if sfi:
            if sfi not in PROFILE.aps[m.ap].efs:
                self.expect(apdu, SW["not_found"])
                return
            m.ef = sfi
        elif m.ef is None:
            self.expect(apdu, SW["no_ef"])
            return
        spec = m.spec(m.ef)
        if spec.type != "record":
            self.expect(apdu, SW["incompatible"])
            return
        if not m.allows(spec.read):
            resp = self.expect(apdu, m.denied(spec.read))
            assert len(resp) == 2, "protected records returned without the credential"
            return
        records = self.card.dir.content.get(spec.content, [])
        if rec > len(records):
            self.expect(apdu, SW["no_record"])
            return
        body = records[rec - 1] if mode == 4 else b"".join(records[rec - 1 :])
        self.expect(apdu, body[:le] + OK)

    @rule(ap_ef=st.sampled_from(BINARY_EFS), credential=st.sampled_from(["none", "none", "right", "wrong", "any"]),
          form=st.sampled_from(["select", "sfi"]), where=st.sampled_from(["start", "start", "end", "past", "random"]),
          le=st.sampled_from([4, 0x11, 256, 256, 65536]), data=st.data())
    def read_ef(self, ap_ef: tuple[str, int], credential: str, form: str, where: str, le: int, data: st.DataObject) -> None:
        """Go to a transparent EF (optionally presenting one credential of its AP first) and read it."""
        ap, fid = ap_ef
        m = self.m
        if m.ap != ap:
            self.select_ap_name(ap)
        rule_keys = PROFILE.aps[ap].efs[fid].read
        keys_here = sorted(k for k, (a, _) in KEY_HOME.items() if a == ap)
        if credential != "none" and keys_here:
            key = sorted(rule_keys)[0] if credential != "any" and rule_keys else data.draw(st.sampled_from(keys_here))
            value = m.value[key] or b"0000"
            self._verify(0x00, 0x80 | KEY_HOME[key][1], value if credential != "wrong" else b"0" * len(value), None, False)
        size = len(ef_body(self.card, ap, fid))
        if form == "sfi":
            offset = {"start": 0, "end": min(size - 1, 255), "past": size if size <= 255 else 255}.get(where, 0)
            if where == "random":
                offset = data.draw(st.integers(0, 255))
            apdu = encode(0x00, 0xB0, 0x80 | fid, offset, b"", le)
            m.ef = fid
            self._read_expect(apdu, fid, offset, le, False)
        else:
            self.select_fid(fid)
            offset = {"start": 0, "end": size - 1, "past": size}.get(where) if where != "random" else None
            if offset is None:
                offset = data.draw(st.integers(0, 0x7FFF))
            self._read_expect(encode(0x00, 0xB0, offset >> 8, offset & 0xFF, b"", le), fid, offset, le, False)

    @rule(ap_ef=st.sampled_from(RECORD_EFS), verify_first=st.booleans(), rec=st.sampled_from([1, 1, 2]),
          mode=st.sampled_from([4, 5]), sfi_form=st.booleans())
    def read_record_ef(self, ap_ef: tuple[str, int], verify_first: bool, rec: int, mode: int, sfi_form: bool) -> None:
        """Go to a record EF (optionally verifying its AP's PIN) and read a record."""
        ap, fid = ap_ef
        if self.m.ap != ap:
            self.select_ap_name(ap)
        if verify_first:
            key = next(k for k, (a, _) in KEY_HOME.items() if a == ap)
            self._verify(0x00, 0x80 | KEY_HOME[key][1], self.m.value[key] or b"0000", None, False)
        if not sfi_form:
            self.select_fid(fid)
        self._read_record(rec, fid if sfi_form else 0, mode, 256, False)

    # -- COMPUTE DIGITAL SIGNATURE / INTERNAL AUTHENTICATE -------------------------------------
    def _check_signature(self, ap: str, fid: int, scheme: int, data: bytes, resp: bytes) -> None:
        pub = public_key(self.card.dir.keys[PROFILE.aps[ap].efs[fid].private_key])
        sig = resp[:-2]
        assert len(sig) == 256 and resp[-2:] == OK
        if scheme == 0x00:
            assert pub.recover_data_from_signature(sig, padding.PKCS1v15(), None) == data
        elif scheme == 0x01:
            assert pub.recover_data_from_signature(sig, padding.PKCS1v15(), None) == hashlib.sha256(data).digest()
        elif scheme in (0x02, 0x03):
            pub.verify(sig, data, padding.PKCS1v15(), Prehashed(hashes.SHA256()) if scheme == 0x02 else hashes.SHA256())
        else:
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
            pub.verify(sig, data, pss, Prehashed(hashes.SHA256()) if scheme == 0x04 else hashes.SHA256())

    @rule(key_ef=st.sampled_from(RSA_EFS), how=st.sampled_from(["select", "sfi", "default", "current"]),
          p1=st.sampled_from([0, 0, 1, 2, 3, 4, 5, 6, 0x80]), size=st.sampled_from([1, 20, 32, 32, 51, 245, 246, 255, 256]),
          auth=st.booleans(), ext=st.booleans())
    def sign(self, key_ef: tuple[str, int], how: str, p1: int, size: int, auth: bool, ext: bool) -> None:
        """80 2A with P2 = 80 (current EF), 80|SFI or 00 (the AP's default key)."""
        ap, fid = key_ef
        m = self.m
        if how != "current":
            if m.ap != ap:
                self.select_ap_name(ap)
            rule_keys = PROFILE.aps[ap].efs[fid].read
            if auth and rule_keys:  # verify the key that opens it first
                key = sorted(rule_keys)[0]
                self._verify(0x00, 0x80 | KEY_HOME[key][1], m.value[key] or b"0000", None, False)
            if how == "select":
                self.select_fid(fid)
        p2 = {"select": 0x80, "current": 0x80, "sfi": 0x80 | fid, "default": 0x00}[how]
        data = bytes((i * 7 + size) & 0xFF for i in range(size))
        apdu = encode(0x80, 0x2A, p1, p2, data, 256, ext)
        if not m.supports(0x80, 0x2A):
            self.expect(apdu, SW["ins"])
            return
        lengths = SIGN_LENGTHS.get(p1)
        if lengths is None:
            self.expect(apdu, SW["p1p2"])
            return
        if p2 == 0x00:
            key_fid = PROFILE.aps[m.ap].default_key
            if key_fid is None:
                self.expect(apdu, SW["no_data"])
                return
        else:
            key_fid, err = m.key_ef(p2)
            if err is not None:
                self.expect(apdu, err)
                return
        spec = m.spec(key_fid)
        if spec is None or spec.type != "rsa":
            self.expect(apdu, SW["no_ef"] if p2 == 0x80 else SW["no_data"])
            return
        if "sign" not in spec.ops:
            self.expect(apdu, SW["conditions"])
            return
        if not m.allows(spec.read):
            self.expect(apdu, m.denied(spec.read))
            return
        if not lengths[0] <= size <= lengths[1]:
            self.expect(apdu, SW["wrong_length"])
            return
        self._check_signature(m.ap, key_fid, p1, data, self.send(apdu))

    @rule(p2=st.sampled_from([0x80, 0x99, 0x97, 0x9A, 0x93, 0x81, 0x00]), size=st.sampled_from([0, 1, 16, 255, 256]),
          p1=st.sampled_from([0, 0, 0, 1]))
    def internal_authenticate(self, p2: int, size: int, p1: int) -> None:
        """00 88: only keys with the internal_auth op answer; PIN-protected keys are locked doors."""
        data = bytes(range(size % 256)) if size < 256 else bytes(256)
        apdu = encode(0x00, 0x88, p1, p2, data, 256)
        m = self.m
        if not m.supports(0x00, 0x88):
            want = SW["ins"]
        elif p1:
            want = SW["p1p2"]
        else:
            fid, err = m.key_ef(p2)
            spec = m.spec(fid) if err is None else None
            if err is not None:
                want = err
            elif spec is None or spec.type != "rsa":
                want = SW["no_ef"] if p2 == 0x80 else SW["no_data"]
            elif "internal_auth" not in spec.ops:
                want = m.denied(spec.read) if spec.read else SW["conditions"]
            elif not m.allows(spec.read):
                want = m.denied(spec.read)
            elif not 1 <= len(data) <= 255:
                want = SW["wrong_length"]
            else:
                resp = self.send(apdu)
                pub = public_key(self.card.dir.keys[spec.private_key])
                pub.verify(resp[:-2], data, padding.PKCS1v15(), hashes.SHA256())
                assert resp[-2:] == OK
                return
        self.expect(apdu, want)

    # -- GET CHALLENGE / GET DATA --------------------------------------------------------------
    @rule(le=st.sampled_from([None, 1, 8, 16, 255, 256, 257, 65536]), ext=st.booleans(),
          p1p2=st.sampled_from([0, 0, 0, 1, 0x100]), body=st.sampled_from([b"", b"", b"\x01"]))
    def get_challenge(self, le: int | None, ext: bool, p1p2: int, body: bytes) -> None:
        apdu = encode(0x00, 0x84, p1p2 >> 8, p1p2 & 0xFF, body, le, ext)
        extended = ext or (le is not None and le > 256) or len(body) > 255
        if p1p2:
            self.expect(apdu, SW["p1p2"])
        elif extended and (le is not None or body):
            self.expect(apdu, SW["conditions"])  # extended GET CHALLENGE: 6985 (D9)
        elif le is None or body:
            self.expect(apdu, SW["wrong_length"])
        else:
            resp = self.send(apdu)
            assert len(resp) == le + 2 and resp[-2:] == OK

    @rule(tag=st.one_of(st.sampled_from(GET_DATA_TAGS), st.integers(0, 0xFFFF)), le=st.sampled_from([None, 1, 16, 256, 65536]),
          ext=st.booleans())
    def get_data(self, tag: int, le: int | None, ext: bool) -> None:
        apdu = encode(0x00, 0xCA, tag >> 8, tag & 0xFF, b"", le, ext)
        m = self.m
        extended = ext or (le is not None and le > 256)
        if not m.supports(0x00, 0xCA):
            self.expect(apdu, SW["ins"])
            return
        name = PROFILE.aps[m.ap].data_objects.get(tag)
        obj = self.card.dir.content.get(name, b"") if name is not None else None
        if tag == 0x7F21 and obj:  # a constructed object answers its contents (D13's default)
            assert obj[:5] == b"\x7f\x21\x82\x02\x33"
            obj = obj[5:]
        if obj is None:
            want = SW["no_data"]
        elif le is None or (len(obj) > 256 and not extended):
            want = SW["wrong_length"]
        else:
            want = obj[:le] + OK
        self.expect(apdu, want)

    # -- commands the card must refuse without any state change -------------------------------
    def _harmful(self, key: str) -> bytes:
        """A command that would change state if processed: VERIFY of a key of this AP with its value."""
        homes = [(k, f) for k, (a, f) in KEY_HOME.items() if a == self.m.ap]
        if not homes:
            return encode(0x00, 0xA4, 0x04, 0x0C, AIDS["jpki"])
        k, f = next(((k, f) for k, f in homes if k == key), homes[0])
        return encode(0x00, 0x20, 0x00, 0x80 | f, self.m.value[k] or b"0000")

    @rule(cla=st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x08, 0x0C, 0x10, 0x13, 0x40, 0x41, 0x4F, 0x60, 0x7F,
                               0x81, 0x82, 0x83, 0x84, 0x88, 0x8C, 0x90, 0xA0, 0xC0, 0xE0, 0xFE, 0xFF]),
          key=st.sampled_from(KEY_NAMES), which=st.sampled_from(["verify", "select", "read"]))
    def foreign_class(self, cla: int, key: str, which: str) -> None:
        """CLA other than 00/80 (channels, SM, chaining, unknown): refused, nothing happens."""
        base = {"verify": self._harmful(key), "select": encode(0x00, 0xA4, 0x04, 0x0C, AIDS["text"]),
                "read": encode(0x00, 0xB0, 0x81, 0x00, le=256)}[which]
        resp = self.send(bytes((cla,)) + base[1:])
        channel = (cla & 0xC0 == 0x00 and cla & 0x03) or cla & 0xC0 == 0x40
        if channel:
            assert resp == b"\x68\x81", f"CLA {cla:02X}: logical channel must answer 6881, not {resp.hex()}"
        else:
            assert resp in (b"\x68\x82", b"\x68\x84", b"\x6e\x00", b"\x69\x87", b"\x69\xfc", b"\x68\x81"), resp.hex()

    @rule(cla=st.sampled_from([0x00, 0x80]), ins=st.integers(0, 0xFF), key=st.sampled_from(KEY_NAMES))
    def unknown_instruction(self, cla: int, ins: int, key: str) -> None:
        """An instruction the current AP does not have answers 6D00 and changes nothing."""
        if self.m.supports(cla, ins):
            return
        resp = self.send(bytes((cla, ins)) + self._harmful(key)[2:])
        assert resp == SW["ins"], f"{cla:02X} {ins:02X} in {self.m.ap}: {resp.hex()}"

    @rule(how=st.sampled_from(["short", "lc_over", "lc_under", "ext_zero", "ext_cut", "ext_over", "trailing"]),
          key=st.sampled_from(KEY_NAMES), cut=st.integers(0, 3))
    def malformed_length(self, how: str, key: str, cut: int) -> None:
        """A body that fits no ISO case answers 6700 and changes nothing (even a right VERIFY)."""
        good = self._harmful(key)
        head, body = good[:4], good[5:]
        bad = {
            "short": good[:cut],
            "lc_over": head + bytes((len(body) + 2,)) + body,
            "lc_under": head + bytes((max(len(body) - 2, 1),)) + body,
            "ext_zero": head + b"\x00\x00\x00" + body,
            "ext_cut": head + b"\x00" + body[:1],
            "ext_over": head + b"\x00" + (len(body) + 1).to_bytes(2, "big") + body,
            "trailing": good + b"\x00\x00\x00",
        }[how]
        self.expect(bad, SW["wrong_length"])

    # -- power, restart, operator --------------------------------------------------------------
    @rule()
    def reset(self) -> None:
        assert self.card.reset() == PROFILE.atr_contact
        self.m.clear()

    @rule()
    def power_off(self) -> None:
        self.card.power_off()
        assert not self.card.powered
        self.m.clear()

    @rule()
    def restart_from_disk(self) -> None:
        """A crash-free restart: load the card again; its counters must be the model's."""
        self.card.close()
        self.card = Card.load(self.path)
        self.card.store.fault = self._store_step
        self.m.clear()
        for k in KEY_NAMES:
            assert self.card.tries_left(k) == self.m.tries[k], f"{k} after restart"

    @rule(key=st.sampled_from(KEY_NAMES), kind=st.sampled_from(["right", "right", "wrong"]),
          write=st.sampled_from([1, 1, 2]), step=st.sampled_from(["open", "written", "synced", "renamed", "dir_synced"]))
    def verify_on_failing_store(self, key: str, kind: str, write: int, step: str) -> None:
        """VERIFY while the disk fails at one step of the attempt's first or second write."""
        ap, fid = KEY_HOME[key]
        if self.m.ap != ap:
            self.select_ap_name(ap)
        self.arm = (write, step)
        try:
            self._verify(0x00, 0x80 | fid, self._value(key, kind), None, False)
        finally:
            self.arm = None

    @rule(key=st.sampled_from(KEY_NAMES), kind=st.sampled_from(["right", "wrong"]),
          spelling=st.sampled_from(["same", "dot", "symlink"]))
    def second_handle(self, key: str, kind: str, spelling: str) -> None:
        """A second writable load is refused however the path is spelled; a read-only one never compares."""
        path = {"same": self.path, "dot": self.path.parent / "." / self.path.name}.get(spelling)
        if path is None:
            path = self.tmp / "alias"
            if not path.exists():
                path.symlink_to(self.path)
        with pytest.raises(StateError, match="already loaded"):
            Card.load(path)
        view = Card.load(path, read_only=True)
        for k in KEY_NAMES:
            assert view.tries_left(k) == self.m.tries[k], f"{k}: the view reads the disk"
        ap, fid = KEY_HOME[key]
        view.transmit(encode(0x00, 0xA4, 0x04, 0x0C, AIDS[ap]))
        value = self._value(key, kind)
        want = SW["blocked"] if self.m.tries[key] == 0 else SW["memory"]  # a blocked key is never compared either
        assert view.transmit(encode(0x00, 0x20, 0x00, 0x80 | fid, value)) == want
        assert view.tries_left(key) == self.m.tries[key]

    @precondition(lambda self: any(t < self.m.limit[k] for k, t in self.m.tries.items()))
    @rule(key=st.sampled_from(KEY_NAMES))
    def admin_unblock(self, key: str) -> None:
        """Operator unblock (D11): a full counter, the value kept; not for keys with no value."""
        if not self.m.value[key]:
            with pytest.raises(admin.AdminError):
                admin.unblock(self.card, key)
            return
        admin.unblock(self.card, key)
        self.m.tries[key] = self.m.limit[key]
        self.wrong_since_reset[key] = 0
        self.may_rise.add(key)

    @rule(key=st.sampled_from(["auth", "sign", "text", "juki", "common", "text-a"]), data=st.data())
    def admin_reset_pin(self, key: str, data: st.DataObject) -> None:
        """Operator re-initialisation: a new value and a full counter; derived keys are refused."""
        spec = PROFILE.keys[key]
        if spec.value != "secret":
            with pytest.raises(admin.AdminError):
                admin.reset_pin(self.card, key, "000000000000")
            return
        new = data.draw(st.from_regex(FORMATS[spec.format].encode(), fullmatch=True), label="new value")
        admin.reset_pin(self.card, key, new.decode())
        self.m.value[key], self.m.tries[key] = new, self.m.limit[key]
        self.wrong_since_reset[key] = 0
        self.may_rise.add(key)

    @rule(key=st.sampled_from(["auth", "sign"]), right=st.booleans(), data=st.data())
    def admin_kiosk_reset(self, key: str, right: bool, data: st.DataObject) -> None:
        """Kiosk: reset one JPKI secret by presenting the other, which is checked like a VERIFY."""
        m = self.m
        partner = "sign" if key == "auth" else "auth"
        other = m.value[partner] if right else wrong_value(m.value[partner].decode()).encode()
        new = data.draw(st.from_regex(FORMATS[PROFILE.keys[key].format].encode(), fullmatch=True), label="new value")
        if m.tries[partner] == 0 or not right:
            with pytest.raises(admin.AdminError):
                admin.kiosk_reset(self.card, key, new.decode(), other.decode())
            if m.tries[partner]:
                m.tries[partner] -= 1
            return
        admin.kiosk_reset(self.card, key, new.decode(), other.decode())
        m.tries[partner] = m.limit[partner]
        m.value[key], m.tries[key] = new, m.limit[key]
        self.wrong_since_reset[key] = self.wrong_since_reset[partner] = 0
        self.may_rise |= {key, partner}

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def counters_match(self) -> None:
        for k in KEY_NAMES:
            left = self.card.tries_left(k)
            assert 0 <= left <= self.m.limit[k], f"{k}: {left} outside 0..{self.m.limit[k]}"
            assert left == self.m.tries[k], f"{k}: card {left}, model {self.m.tries[k]}"
            assert left <= self.before[k] or k in self.may_rise, f"{k} rose {self.before[k]} -> {left} without a match"
        self.before = dict(self.m.tries)
        self.may_rise = set()

    @invariant()
    def security_status_matches(self) -> None:
        session = self.card.session
        assert session.verified == self.m.verified, f"card {session.verified}, model {self.m.verified}"
        assert self.card.current_ap == (None if self.m.ap == "mf" else self.m.ap)
        # The security status belongs to the selected application (D6).
        assert all(KEY_HOME[k][0] == self.m.ap for k in session.verified), session.verified
        cur = session.ef
        assert (cur.fid if cur is not None else None) == self.m.ef


def _format_ok(fmt: str, value: bytes) -> bool:
    """The key formats of the profile (keys.py FORMAT_RULES), restated."""
    if fmt == "any":
        return 1 <= len(value) <= 255
    return re.fullmatch(FORMATS[fmt].encode(), value) is not None


def test_card_agrees_with_model(issued_template, tmp_path: Path) -> None:
    """Random interleavings of every command, restarts and resets; the model and card agree."""
    machine = type("Machine", (CardMachine,), {"template": issued_template.path, "workdir": tmp_path})
    run_state_machine_as_test(machine, settings=SETTINGS)


EDGE_LIMITS = {"auth": 1, "sign": 15, "text": 2, "text-a": 15, "juki": 1, "common": 15, "visual-birth": 1}


@pytest.fixture(scope="module")
def edge_template(tmp_path_factory: pytest.TempPathFactory, issued_template) -> Path:
    """The same card issued with retry limits at both ends of the 63Cx nibble (1 and 15)."""
    from mynaemu.issuance import issue_card

    text = PROFILE.text()
    for key, limit in EDGE_LIMITS.items():
        text, n = re.subn(rf"(\[keys\.{re.escape(key)}\][^\[]*?limit = )\d+", rf"\g<1>{limit}", text)
        assert n == 1, key
    root = tmp_path_factory.mktemp("edge")
    (root / "profile.toml").write_text(text, encoding="utf-8")
    secrets = {k: issued_template.secrets[k] for k in ("auth", "sign", "text", "juki")}
    return issue_card(root / "card", persona=issued_template.persona, secrets=secrets, profile=root / "profile.toml").path


def test_edge_retry_limits_agree_with_model(edge_template: Path, tmp_path: Path) -> None:
    """Limits 1 (first wrong try blocks: 63C0) and 15 (63CF) behave like any other."""
    card = Card.load(edge_template)
    assert {k: card.keyring[k].spec.limit for k in EDGE_LIMITS} == EDGE_LIMITS
    machine = type("EdgeMachine", (CardMachine,), {"template": edge_template, "workdir": tmp_path})
    run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=max(SETTINGS.max_examples // 3, 30)))


def test_profiles_known() -> None:
    """The long-run switch names a known profile (a typo must not silently run the CI one)."""
    assert PROFILE_NAME in PROFILES
