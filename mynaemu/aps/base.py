"""What every application does: SELECT EF, READ BINARY/RECORD, VERIFY, signing, GET CHALLENGE.

An application owns its files and answers commands against a ``Session`` (the current EF and
the keys verified since it was selected). Subclasses add or remove commands by listing them in
``COMMANDS``; the card builds one dispatch table per application from that list at load time.

Choices where the sources are silent (docs/card-interface.md §12), made here once for every application:
- VERIFY P2=80 with no current EF, or a current EF that is not a key, answers 6986.
- A wrong VERIFY also clears that key's verified status (ISO 7816-4 §11.5.6).
- READ BINARY at an offset equal to or past the physical size answers 6B00; a body shorter than
  Le answers what is left with 9000 (never 6Cxx).
- Signing with a key whose every opening key is blocked answers 6984 rather than 6982.
- COMPUTE DIGITAL SIGNATURE with P2=00 in an AP without a default key (JPKI) answers 6A88;
  INTERNAL AUTHENTICATE with a key that only signs answers 6985 (券面 keys) or, when it is
  PIN-protected, 6982/6984 (JPKI keys), as MCARD measured.
- SELECT EF with P2=04 answers an FCP (62), with P2=00 an FCI (6F) holding the same items.
- CHANGE of a key whose profile says it cannot change (照合番号A/B) answers 6985.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .. import signing, sw
from ..files import BinaryEf, CvKeyEf, Ef, OpaqueEf, PinEf, PrivateKeyEf, RecordEf
from ..keys import KeyRing, Outcome, StorageFailure, format_ok
from ..profile import ApSpec
from ..sm import SmSession
from ..tlv import TlvError, iter_tlvs

_E = TypeVar("_E", bound=Ef)
Handler = Callable[["Session", int, int, bytes, "int | None", bool], bytes]

OK = sw.OK
TRIES_LEFT = sw.TRIES_LEFT
_OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
MATCH, BLOCKED = Outcome.MATCH, Outcome.BLOCKED


class Session:
    """The volatile security state: current application, current EF, verified keys."""

    __slots__ = ("ap", "ef", "sm", "terminal", "terminal_body", "verified")

    def __init__(self, ap: Application) -> None:
        self.ap = ap
        self.ef: Ef | None = None
        self.verified: set[str] = set()
        self.sm: SmSession | None = None  # the text AP's secure-messaging session, after SET SESSION KEY
        # 80 A2 (JPKI): the certificate body waiting for its signature, then the terminal's
        # (key ID, public key) once its certificate checked out.
        self.terminal_body: bytes | None = None
        self.terminal: tuple[bytes, rsa.RSAPublicKey] | None = None


class Application:
    """One application DF of the card."""

    # (CLA, INS) pairs this application answers, mapped to method names.
    COMMANDS: dict[tuple[int, int], str] = {
        (0x00, 0xA4): "select_file",
        (0x00, 0xB0): "read_binary",
        (0x00, 0xB2): "read_record",
        (0x00, 0x20): "verify",
        (0x00, 0x84): "get_challenge",
        (0x00, 0x88): "internal_authenticate",
        (0x80, 0x2A): "compute_signature",
    }

    # What SET SESSION KEY (80 AE) answers in an AP without secure messaging (MCARD measured
    # 6982 in JPKI and 住基, 66F1 in the common and visual APs); None: not an instruction here.
    SESSION_KEY_REFUSAL: bytes | None = None

    def __init__(
        self,
        spec: ApSpec,
        efs: dict[int, Ef],
        keyring: KeyRing,
        data_objects: dict[int, bytes] | None = None,
        session_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self.spec = spec
        self.session_key = session_key
        self.name = spec.name
        self.aid = spec.aid
        self.efs = efs
        self.keyring = keyring
        self.data_objects = data_objects or {}
        # The table the card dispatches on: (CLA << 8 | INS) -> bound method.
        self.table: dict[int, Handler] = {
            (cla << 8) | ins: getattr(self, method) for (cla, ins), method in self.COMMANDS.items()
        }
        if session_key is not None or self.SESSION_KEY_REFUSAL is not None:
            self.table[0x80AE] = self.set_session_key

    # -- helpers -------------------------------------------------------------------------------
    def _key_ef(self, session: Session, p2: int, kind: type[_E]) -> _E | bytes:
        """The key EF of class ``kind`` a P2 of 80 (current EF) or 80|SFI names, or the SW to answer."""
        if p2 == 0x80:
            ef = session.ef
            if ef is None or not isinstance(ef, kind):
                return sw.NO_CURRENT_EF
            return ef
        if 0x81 <= p2 <= 0x9E:
            ef = self.efs.get(p2 & 0x1F)
            return ef if isinstance(ef, kind) else sw.DATA_NOT_FOUND
        return sw.WRONG_P1P2

    def _denied(self, ef: Ef) -> bytes:
        """6984 when every key that could open ``ef`` is blocked, else 6982."""
        rule = ef.rule
        if not rule:
            return sw.SECURITY_STATUS_NOT_SATISFIED
        keys = self.keyring.keys
        for name in rule:  # a loop, not all(<generator>): a refused read is on clients' hot path
            if keys[name].tries_left:
                return sw.SECURITY_STATUS_NOT_SATISFIED
        return sw.KEY_BLOCKED

    # -- SELECT (by file identifier; SELECT by AID is the card's) ------------------------------
    def select_file(self, session: Session, p1: int, p2: int, data: bytes, le: int | None, ext: bool) -> bytes:
        if p1 == 0x00 and not data:
            # ISO "select MF": refused in the power-on state, a no-op while an AP is current.
            return sw.WRONG_P1P2 if self.name == "mf" else OK
        if p1 not in (0x00, 0x02):
            return sw.WRONG_P1P2
        if p2 not in (0x0C, 0x00, 0x04):
            return sw.WRONG_P1P2
        if len(data) != 2:
            return sw.WRONG_LENGTH
        ef = self.efs.get((data[0] << 8) | data[1])
        if ef is None:
            return sw.FILE_NOT_FOUND
        session.ef = ef
        if p2 == 0x0C:
            return OK
        fcp = self._fcp(ef)
        # P2=04 asks for the FCP template (62), P2=00 for the FCI (6F), which here wraps the same items.
        return (fcp if p2 == 0x04 else b"\x6f" + fcp[1:]) + OK

    @staticmethod
    def _fcp(ef: Ef) -> bytes:
        """A minimal FCP template (62): size, structure and file id."""
        if isinstance(ef, BinaryEf):
            body = b"\x80\x02" + len(ef.body).to_bytes(2, "big") + b"\x82\x01\x01"
        elif isinstance(ef, RecordEf):
            body = b"\x82\x01\x02"
        else:
            body = b"\x82\x01\x08"  # internal EF (key)
        body += b"\x83\x02" + ef.fid.to_bytes(2, "big")
        return b"\x62" + bytes((len(body),)) + body

    # -- READ BINARY ---------------------------------------------------------------------------
    def read_binary(self, session: Session, p1: int, p2: int, data: bytes, le: int | None, ext: bool) -> bytes:
        if p1 & 0x80:
            if p1 & 0x60:
                return sw.WRONG_P1P2
            ef = self.efs.get(p1 & 0x1F)
            if ef is None:
                return sw.FILE_NOT_FOUND
            session.ef = ef
            offset = p2
        else:
            ef = session.ef
            if ef is None:
                return sw.NO_CURRENT_EF
            offset = (p1 << 8) | p2
        if le is None or data:
            return sw.WRONG_LENGTH
        if ef.__class__ is not BinaryEf:
            return sw.COMMAND_INCOMPATIBLE
        rule = ef.rule
        if rule is not None and rule.isdisjoint(session.verified):
            return self._denied(ef)
        body = ef.body  # type: ignore[attr-defined]
        if offset >= len(body):
            return sw.OFFSET_OUT_OF_RANGE
        return body[offset : offset + le] + OK

    # -- READ RECORD ---------------------------------------------------------------------------
    def read_record(self, session: Session, p1: int, p2: int, data: bytes, le: int | None, ext: bool) -> bytes:
        sfi, mode = p2 >> 3, p2 & 0x07
        if sfi == 0x1F or mode not in (0x04, 0x05) or p1 == 0:
            return sw.WRONG_P1P2
        if le is None or data:
            return sw.WRONG_LENGTH
        if sfi:
            ef = self.efs.get(sfi)
            if ef is None:
                return sw.FILE_NOT_FOUND
            session.ef = ef
        else:
            ef = session.ef
            if ef is None:
                return sw.NO_CURRENT_EF
        if not isinstance(ef, RecordEf):
            return sw.COMMAND_INCOMPATIBLE
        if not ef.allows(session.verified):
            return self._denied(ef)
        if p1 > len(ef.records):
            return sw.RECORD_NOT_FOUND
        body = ef.records[p1 - 1] if mode == 0x04 else b"".join(ef.records[p1 - 1 :])
        return body[:le] + OK

    # -- VERIFY --------------------------------------------------------------------------------
    def verify(self, session: Session, p1: int, p2: int, data: bytes, le: int | None, ext: bool) -> bytes:
        if p1 != 0x00:
            return sw.WRONG_P1P2
        ef = self._key_ef(session, p2, PinEf)
        if isinstance(ef, bytes):
            return ef
        if le is not None:
            return sw.WRONG_LENGTH
        name = ef.key
        keyring = self.keyring
        if not data:  # the retry query: spends nothing, answers 63Cx even when verified
            keyring.check_fresh()
            return TRIES_LEFT[keyring.keys[name].tries_left]
        # One attempt: its decrement is durable before the value is looked at (keys.KeyRing.attempt).
        try:
            outcome = keyring.attempt(name, data)
        except StorageFailure:
            session.verified.discard(name)  # an attempt that did not succeed leaves the key unverified
            raise
        if outcome is MATCH:
            session.verified.add(name)
            return OK
        if outcome is BLOCKED:
            return sw.KEY_BLOCKED
        session.verified.discard(name)
        return TRIES_LEFT[keyring.keys[name].tries_left]

    # -- CHANGE REFERENCE DATA (00 24 01 80) and JICSAP CHANGE KEY (80 32 00 80) ---------------
    def _change(self, session: Session, p2: int, data: bytes, le: int | None, mode: str) -> bytes:
        ef = self._key_ef(session, p2, PinEf)
        if isinstance(ef, bytes):
            return ef
        if le is not None or not data:
            return sw.WRONG_LENGTH
        key = self.keyring[ef.key]
        if key.spec.change != mode:
            return sw.CONDITIONS_NOT_SATISFIED
        if key.tries_left == 0:
            return sw.KEY_BLOCKED
        if ef.key not in session.verified:
            return sw.SECURITY_STATUS_NOT_SATISFIED
        if not format_ok(key.spec.format, data):
            return sw.WRONG_DATA
        self.keyring.change(ef.key, data)
        return OK

    def change_reference_data(
        self, session: Session, p1: int, p2: int, data: bytes, le: int | None, ext: bool
    ) -> bytes:
        if p1 != 0x01:
            return sw.WRONG_P1P2
        return self._change(session, p2, data, le, "iso")

    def change_key(self, session: Session, p1: int, p2: int, data: bytes, le: int | None, ext: bool) -> bytes:
        if p1 != 0x00:
            return sw.WRONG_P1P2
        return self._change(session, p2, data, le, "jicsap")

    # -- COMPUTE DIGITAL SIGNATURE (80 2A) -----------------------------------------------------
    def compute_signature(self, session: Session, p1: int, p2: int, data: bytes, le: int | None, ext: bool) -> bytes:
        lengths = signing.DATA_LENGTHS.get(p1)
        if lengths is None:
            return sw.WRONG_P1P2
        if p2 == 0x00:
            if self.spec.default_key is None:
                return sw.DATA_NOT_FOUND
            ef: Ef | bytes | None = self.efs.get(self.spec.default_key)
        else:
            ef = self._key_ef(session, p2, PrivateKeyEf)
        if isinstance(ef, bytes):
            return ef
        if "sign" not in ef.ops:
            return sw.CONDITIONS_NOT_SATISFIED
        if not ef.allows(session.verified):
            return self._denied(ef)
        if not lengths[0] <= len(data) <= lengths[1]:
            return sw.WRONG_LENGTH
        return signing.sign(ef.key, p1, data) + OK

    # -- INTERNAL AUTHENTICATE (00 88) ---------------------------------------------------------
    def internal_authenticate(
        self, session: Session, p1: int, p2: int, data: bytes, le: int | None, ext: bool
    ) -> bytes:
        if p1 != 0x00:
            return sw.WRONG_P1P2
        ef = self._key_ef(session, p2, PrivateKeyEf)
        if isinstance(ef, bytes):
            return ef
        if "internal_auth" not in ef.ops:
            # PIN-protected keys answer as locked doors; the 券面 APs' keys only sign (MCARD).
            return self._denied(ef) if ef.rule else sw.CONDITIONS_NOT_SATISFIED
        if not ef.allows(session.verified):
            return self._denied(ef)
        if not 1 <= len(data) <= 255:
            return sw.WRONG_LENGTH
        return signing.internal_authenticate(ef.key, data) + OK

    # -- SET SESSION KEY (80 AE) ---------------------------------------------------------------
    def set_session_key(self, session: Session, p1: int, p2: int, data: bytes, le: int | None, ext: bool) -> bytes:
        """Start secure messaging: the seed comes RSA-OAEP(SHA-256)-encrypted (see mynaemu.sm)."""
        key = self.session_key
        if key is None:
            return self.SESSION_KEY_REFUSAL or sw.INS_NOT_SUPPORTED
        if p1 or p2:
            return sw.WRONG_P1P2
        rule = self.spec.session_key_use
        if rule is not None and rule.isdisjoint(session.verified):
            return sw.SECURITY_STATUS_NOT_SATISFIED
        if len(data) != key.key_size // 8 or le is not None:
            return sw.WRONG_LENGTH
        if int.from_bytes(data, "big") >= key.public_key().public_numbers().n:
            return sw.INTERNAL_ERROR  # what MCARD measured for a ciphertext the key cannot hold
        try:
            plain = key.decrypt(data, _OAEP_SHA256)
        except ValueError:
            return sw.WRONG_DATA
        # A0 22 80 20 <32-byte seed>: the only structure the card takes.
        if len(plain) != 36 or plain[:4] != b"\xa0\x22\x80\x20":
            return sw.WRONG_DATA
        session.sm = SmSession(plain[4:])
        return OK

    # -- GET CHALLENGE (00 84) -----------------------------------------------------------------
    def get_challenge(self, session: Session, p1: int, p2: int, data: bytes, le: int | None, ext: bool) -> bytes:
        if p1 or p2:
            return sw.WRONG_P1P2
        if ext:
            return sw.CONDITIONS_NOT_SATISFIED
        if le is None or data:
            return sw.WRONG_LENGTH
        return os.urandom(le) + OK

    # -- GET DATA (00 CA) ----------------------------------------------------------------------
    def get_data(self, session: Session, p1: int, p2: int, data: bytes, le: int | None, ext: bool) -> bytes:
        obj = self.data_objects.get((p1 << 8) | p2)
        if obj is None:
            return sw.DATA_NOT_FOUND
        if le is None or data:
            return sw.WRONG_LENGTH
        if len(obj) > 256 and not ext:
            # Large objects need extended Le; clients retry with it (MCARD card.rs get_data).
            return sw.WRONG_LENGTH
        return obj[:le] + OK


def build_efs(
    spec: ApSpec, content: dict[str, bytes | list[bytes]], private_key: Callable[[str], rsa.RSAPrivateKey]
) -> dict[int, Ef]:
    """Make the EF objects of one application from its profile and the issued content."""
    efs: dict[int, Ef] = {}
    for fid, ef in spec.efs.items():
        if ef.type == "binary":
            body = content.get(ef.content, b"") if ef.content else b""
            if not isinstance(body, bytes):
                raise ValueError(f"content {ef.content!r} must be bytes for binary EF {fid:04X}")
            efs[fid] = BinaryEf(ef, body)
        elif ef.type == "record":
            records = content.get(ef.content, [])
            if not isinstance(records, list):
                raise ValueError(f"content {ef.content!r} must be a list of records for EF {fid:04X}")
            efs[fid] = RecordEf(ef, records)
        elif ef.type == "pin":
            efs[fid] = PinEf(ef)
        elif ef.type == "rsa":
            efs[fid] = PrivateKeyEf(ef, private_key(ef.private_key))
        elif ef.type == "cv_key":
            raw = content.get(ef.content, b"")
            if not isinstance(raw, bytes) or len(raw) < 17:
                raise ValueError(f"content {ef.content!r} of EF {fid:04X} must be a key ID and a 90/91 public key")
            efs[fid] = CvKeyEf(ef, raw[:16], rsa_public_key(raw[16:], f"content {ef.content!r} of EF {fid:04X}"))
        else:
            efs[fid] = OpaqueEf(ef)
    return efs


def rsa_public_key(data: bytes, what: str) -> rsa.RSAPublicKey:
    """The card's RSA public-key encoding, ``90 <e> 91 <n>``; ValueError naming ``what``."""
    try:
        fields = {item.tag: item.value for item in iter_tlvs(data)}
        return rsa.RSAPublicNumbers(int.from_bytes(fields[0x90], "big"), int.from_bytes(fields[0x91], "big")).public_key()
    except (TlvError, KeyError, ValueError):
        raise ValueError(f"{what}: not a 90/91 RSA public key") from None
