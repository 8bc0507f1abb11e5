"""Client-flow transcripts (apdu_specs/transcripts) replayed against a fresh copy of the issued card."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from mynaemu.profile import Profile
from mynaemu.transcript import (
    TRANSCRIPT_DIR,
    ExchangeLog,
    TranscriptError,
    TranscriptMismatch,
    card_variables,
    expand,
    load_transcript,
    parse_transcript,
    replay,
    replay_file,
    transcript_files,
)

from .conftest import SECRETS

REQUIRED = [
    "real-card-trace",
    "opensc-bind",
    "opensc-pkcs15-dump",
    "opensc-pkcs11-sign-auth",
    "opensc-pkcs11-sign-sign",
    "myna-pin-status",
    "myna-text-mynumber",
    "myna-text-attrs",
    "myna-visual-photo",
    "myna-jpki-cert-auth",
    "myna-jpki-cert-auth-ca",
    "myna-jpki-cert-sign",
    "myna-jpki-cert-sign-ca",
    "myna-jpki-pkey-sign-auth",
    "myna-jpki-pkey-sign-sign",
    "new-commands",
    "get-data-7f21",
    "terminal-auth",
    *(f"variant-{v}" for v in Profile.load().variant_names() if v != "default"),
]
FILES = transcript_files()
SEL_JPKI = "00 A4 04 0C data=D392F000260100000001 => 9000"
DIGEST_INFO = "3031300D060960864801650304020105000420" + hashlib.sha256(b"x").hexdigest()


@pytest.fixture
def variables(card, issued_template) -> dict[str, object]:
    return card_variables(card, issued_template.secrets)


class Recorder:
    """Wraps a transmit: records commands, optionally rewrites one response."""

    def __init__(self, transmit: Callable[[bytes], bytes], tamper: Callable[[int, bytes, bytes], bytes] | None = None):
        self.transmit = transmit
        self.tamper = tamper
        self.sent: list[bytes] = []

    def __call__(self, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        resp = self.transmit(apdu)
        return self.tamper(len(self.sent), apdu, resp) if self.tamper else resp


# -- the flows -------------------------------------------------------------------------------


def test_every_required_flow_has_a_file():
    names = {p.stem for p in FILES}
    assert not set(REQUIRED) - names


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_header_names_its_source(path: Path):
    t = load_transcript(path)
    assert "Source:" in t.description and "§" in t.description, "the header must say where in the spec the flow is"
    assert t.items


# A flow written for one card variant is replayed on that variant by tests/test_variants.py.
DEFAULT_FLOWS = [p for p in FILES if load_transcript(p).variant in (None, "default")]


@pytest.mark.parametrize("path", DEFAULT_FLOWS, ids=[p.stem for p in DEFAULT_FLOWS])
def test_flow_replays_on_the_emulator(path: Path, card, variables):
    result = replay_file(path, card.transmit, variables)
    result.raise_for_mismatch()
    assert result.ok and result.exchanges


def test_replay_file_finds_a_bare_name(card, variables):
    assert replay_file("opensc-bind", card.transmit, variables).ok


# -- chunking mirrors the clients ------------------------------------------------------------


def _reads(apdus: list[bytes]) -> list[str]:
    return [a.hex().upper() for a in apdus if a[1] == 0xB0]


def test_opensc_dump_reads_in_256_byte_chunks_from_offset_0(variables):
    cert = variables["content:jpki.auth_cert"]
    assert isinstance(cert, bytes)
    total = ((cert[2] << 8) | cert[3]) + 4
    t = load_transcript(TRANSCRIPT_DIR / "opensc-pkcs15-dump.txt")
    steps = expand(t, variables)
    first_read = next(i for i, (_, apdu, _) in enumerate(steps) if apdu == bytes.fromhex("00A4020C02000A"))
    reads = _reads([apdu for _, apdu, _ in steps[first_read + 1 : first_read + 2 + (total + 255) // 256]])
    want = ["00B0000004"] + [f"00B0{off:04X}{min(256, total - off) & 0xFF:02X}" for off in range(0, total, 256)]
    assert reads == want
    assert reads[-1][-2:] != "00" or total % 256 == 0


def test_myna_cert_read_starts_with_7_bytes_then_reads_from_7(variables):
    cert = variables["content:jpki.auth_cert"]
    assert isinstance(cert, bytes)
    t = load_transcript(TRANSCRIPT_DIR / "myna-jpki-cert-auth.txt")
    reads = _reads([apdu for _, apdu, _ in expand(t, variables)])
    assert reads[0] == "00B0000020"  # token
    assert reads[1] == "00B0000007"
    offs = list(range(7, len(cert), 256))
    assert reads[2:] == [f"00B0{o:04X}{min(256, len(cert) - o) & 0xFF:02X}" for o in offs]


class ObjectCard:
    """A minimal card holding one transparent EF, for chunking edge cases."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __call__(self, apdu: bytes) -> bytes:
        if apdu[:2] == b"\x00\xa4":
            return b"\x90\x00"
        off = (apdu[2] << 8) | apdu[3]
        le = (apdu[4] or 256) if len(apdu) == 5 else int.from_bytes(apdu[5:7], "big")
        if off >= len(self.body):
            return b"\x6b\x00"
        return self.body[off : off + le] + b"\x90\x00"


@pytest.mark.parametrize("size", [252, 256, 508, 512, 513])
def test_opensc_read_exact_multiple_of_256(size: int):
    obj = b"\x30\x82" + (size - 4).to_bytes(2, "big") + bytes(range(256)) * 3
    obj = obj[:size]
    rec = Recorder(ObjectCard(obj + b"\x00" * 64))
    t = parse_transcript("@read opensc 000A {obj}")
    assert replay(t, rec, {"obj": obj}).ok
    want = ["00B0000004"] + [f"00B0{o:04X}{min(256, size - o) & 0xFF:02X}" for o in range(0, size, 256)]
    assert _reads(rec.sent) == want


@pytest.mark.parametrize("value_len", [0x62, 0x7F, 0x80, 249, 256, 1000])
def test_myna_read_ber_header_forms(value_len: int):
    if value_len < 0x80:
        head = b"\xff\x20" + bytes((value_len,))
    elif value_len < 0x100:
        head = b"\xff\x20\x81" + bytes((value_len,))
    else:
        head = b"\xff\x20\x82" + value_len.to_bytes(2, "big")
    obj = head + bytes(i & 0xFF for i in range(value_len))
    rec = Recorder(ObjectCard(obj + b"\xff" * 300))
    t = parse_transcript("@read myna 0002 - save=got")
    result = replay(t, rec, {})
    assert result.ok and result.variables["got"] == obj
    assert _reads(rec.sent)[0] == "00B0000007"
    assert _reads(rec.sent)[1:] == [f"00B0{o:04X}{min(256, len(obj) - o) & 0xFF:02X}" for o in range(7, len(obj), 256)]


def test_command_encoding_computes_lc_and_le():
    t = parse_transcript(
        "\n".join(
            [
                "00 20 00 80 data={pin} => 9000",
                "00 B0 00 04 le=061F => 9000",
                "00 B0 00 04 le={len:blob[4:]} => 9000",
                "00 B0 00 00 le=00 => 9000",
                "00 B0 00 00 le=04 ext => 9000",
                "80 2A 00 80 data=30 31 {blob[0:2]} le=00 => 9000",
                "00 A4 02 0C 02 00 0A => 9000",
            ]
        )
    )
    apdus = [a.hex().upper() for _, a, _ in expand(t, {"pin": "123456", "blob": bytes(300)})]
    assert apdus == [
        "0020008006313233343536",
        "00B0000400061F",
        "00B00004000128",
        "00B0000000",
        "00B00000000004",
        "802A0080043031000000",
        "00A4020C02000A",
    ]


# -- mismatches are caught and explained -----------------------------------------------------


def test_wrong_status_word_is_reported(card, variables):
    text = f"{SEL_JPKI}\n00 A4 02 0C data=0001 => 9000\n00 B0 00 00 le=04 => {{content:jpki.sign_cert[0:4]}} 9000\n"
    result = replay(parse_transcript(text, "sign-cert.txt"), card.transmit, variables)
    assert not result.ok
    m = result.mismatch
    assert m is not None and (m.step, m.line) == (3, 3)
    assert m.command == "00B0000004" and m.actual == "6982"
    assert "status word: expected 9000 (success), got 6982 (security status not satisfied)" in m.explanation
    with pytest.raises(TranscriptMismatch) as exc:
        result.raise_for_mismatch()
    msg = str(exc.value)
    assert msg.startswith("sign-cert.txt:3: step 3: status word")
    assert "expected:" in msg and "actual:   6982" in msg


def test_wrong_byte_in_a_certificate_chunk_is_reported(card, variables):
    def flip(n: int, apdu: bytes, resp: bytes) -> bytes:
        if apdu == bytes.fromhex("00B0010700"):  # the second 256-byte chunk of the myna read
            return resp[:10] + bytes((resp[10] ^ 0x01,)) + resp[11:]
        return resp

    path = TRANSCRIPT_DIR / "myna-jpki-cert-auth.txt"
    result = replay_file(path, Recorder(card.transmit, flip), variables)
    m = result.mismatch
    assert m is not None
    assert m.step == 7 and m.line == load_transcript(path).items[-1].line
    assert m.explanation.startswith("data differs at byte 10 (0xA): expected")
    assert "chunk 2" in m.source and m.command == "00B0010700"
    assert len(result.exchanges) == 7  # stopped at the mismatch


def test_truncated_response_is_reported(card, variables):
    def cut(n: int, apdu: bytes, resp: bytes) -> bytes:
        return resp[:-10] + resp[-2:] if apdu[1] == 0xB0 and len(resp) > 200 else resp

    result = replay_file("myna-jpki-cert-sign-ca", Recorder(card.transmit, cut), variables)
    assert result.mismatch is not None
    assert "response length: expected 256 data bytes + SW, got 248 + SW" in result.mismatch.explanation


def test_signature_that_does_not_verify_is_reported(card, variables):
    def corrupt(n: int, apdu: bytes, resp: bytes) -> bytes:
        return bytes((resp[0] ^ 0x80,)) + resp[1:] if apdu[:2] == b"\x80\x2a" else resp

    result = replay_file("myna-jpki-pkey-sign-auth", Recorder(card.transmit, corrupt), variables)
    m = result.mismatch
    assert m is not None and m.step == 7
    assert "does not verify against cert:auth's public key" in m.explanation
    assert "{sig:auth}" in m.expected


def test_signature_by_the_other_key_is_rejected(card, variables):
    swapped = dict(variables, **{"cert:auth": variables["cert:sign"]})
    result = replay_file("myna-jpki-pkey-sign-auth", card.transmit, swapped)
    assert result.mismatch is not None and "does not verify" in result.mismatch.explanation


def test_sign_schemes_by_p1_are_verified(card, variables):
    lines = [SEL_JPKI, "00 A4 02 0C data=0018 => 9000", "00 20 00 80 data={auth_pin} => 9000"]
    lines.append(f"80 2A 00 97 data={DIGEST_INFO} le=00 => {{sig:auth}} 9000")
    digest = hashlib.sha256(b"x").hexdigest()
    for p1, data in (("01", "68656C6C6F"), ("02", digest), ("03", "68656C6C6F"), ("04", digest), ("05", "68")):
        lines.append(f"80 2A {p1} 97 data={data} le=00 => {{sig:auth}} 9000")
    result = replay(parse_transcript("\n".join(lines)), card.transmit, variables)
    result.raise_for_mismatch()


def test_secrets_are_masked_in_the_report(card, variables):
    wrong = "9753"
    text = f"{SEL_JPKI}\n00 A4 02 0C data=0018 => 9000\n00 20 00 80 data={{auth_pin}} => 9000\n"
    seen: list[ExchangeLog] = []
    result = replay(parse_transcript(text, "login.txt"), card.transmit, dict(variables, auth_pin=wrong), trace=seen.append)
    m = result.mismatch
    assert m is not None and m.explanation.startswith("status word: expected 9000 (success), got 63C2")
    assert m.command == "0020008004********"
    with pytest.raises(TranscriptMismatch) as exc:
        result.raise_for_mismatch()
    report = str(exc.value) + repr(result.exchanges) + repr(seen)
    for secret in (wrong, SECRETS["auth"]):
        assert secret not in report and secret.encode().hex().upper() not in report
    assert "{auth_pin}" in report  # the source line shows the placeholder, never the value


def test_missing_variable_stops_before_sending(card, variables):
    rec = Recorder(card.transmit)
    del variables["sign_pin"]
    with pytest.raises(TranscriptError, match="variables not given: sign_pin"):
        replay_file("opensc-pkcs11-sign-sign", rec, variables)
    assert rec.sent == []


def test_real_card_style_read_binds_the_certificate_for_the_signature_check(card, issued_template):
    # A real card's certificate is not known in advance: read it, bind it, check the signature.
    text = "\n".join(
        [
            SEL_JPKI,
            "@read myna 000A - save=cert:auth",
            "00 A4 02 0C data=0018 => 9000",
            "00 20 00 80 data={auth_pin} => 9000",
            "00 A4 02 0C data=0017 => 9000",
            f"80 2A 00 80 data={DIGEST_INFO} le=00 => {{sig:auth}} 9000",
        ]
    )
    t = parse_transcript(text)
    assert t.variables_needed() == {"auth_pin"}
    result = replay(t, card.transmit, {"auth_pin": issued_template.secrets["auth"]})
    result.raise_for_mismatch()
    assert result.variables["cert:auth"] == card.dir.content["jpki.auth_cert"]


def test_any_matchers():
    def answer(apdu: bytes) -> bytes:
        return bytes(range(10)) + b"\x90\x00"

    ok = parse_transcript("00 84 00 00 le=0A => {any:10} 9000\n00 84 00 00 le=0A => 00 01 {any} 09 9000")
    assert replay(ok, answer, {}).ok
    bad = parse_transcript("00 84 00 00 le=0A => {any:8} 9000")
    m = replay(bad, answer, {}).mismatch
    assert m is not None and "expected 8 data bytes" in m.explanation
    bad = parse_transcript("00 84 00 00 le=0A => {any} 07 09 9000")
    m = replay(bad, answer, {}).mismatch
    assert m is not None and m.explanation.startswith("data differs at byte 8")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("00 A4 04 0C data=D392", "a step is 'COMMAND => RESPONSE'"),
        ("00 A4 04 0C data=XY => 9000", "not hex"),
        ("00 A4 04 0C foo=12 => 9000", "unknown or repeated field"),
        ("00 B0 00 00 le=04 => {sig:auth[0:4]} 9000", "sig takes a key name only"),
        ("00 20 00 80 data={any:4} => 9000", "any is a response matcher"),
        ("@read foo 000A -", "unknown read style"),
        ("@fetch x", "unknown directive"),
    ],
)
def test_syntax_errors_name_the_line(text: str, message: str):
    with pytest.raises(TranscriptError) as exc:
        parse_transcript("# header\n\n" + text, "bad.txt")
    assert str(exc.value).startswith("bad.txt:3:") and message in str(exc.value)
