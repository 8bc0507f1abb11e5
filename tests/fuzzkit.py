"""Shared APDU/frame generators, answer checks and fuzz loops (tests/test_fuzz.py, scripts/fuzz).

Nothing here imports pytest: ``scripts/fuzz`` runs the same loops for long runs.

- ``encode``: ``mynaemu.apdu.build_command`` with an ``ext`` flag (the parser is checked against it).
- ``transcripts(values)``: the client command sequences of docs/card-interface.md §10, with a card's right values.
- ``mutate`` / ``random_apdu`` / ``apdu_stream``: mutated transcripts, random APDUs, the mix.
- ``check_answer``: well-formedness (status word whitelist, data only with 9000, size bound).
- ``CardFuzzer`` / ``LinkFuzzer``: the loops, counting into ``Stats``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mynaemu.apdu import build_command

AIDS = {
    "mf": bytes.fromhex("A0000001510000"),
    "jpki": bytes.fromhex("D392F000260100000001"),
    "text": bytes.fromhex("D3921000310001010408"),
    "visual": bytes.fromhex("D3921000310001010402"),
    "juki": bytes.fromhex("D3921000310001010401"),
    "common": bytes.fromhex("D3921000310001010100"),
}
# AIDs other drivers probe with (OpenSC's driver list, §10.1): the card must answer 6A82.
FOREIGN_AIDS = [
    bytes.fromhex("A000000308000010000100"),  # PIV
    bytes.fromhex("D27600012401"),  # OpenPGP
    bytes.fromhex("A0000000770100000710000000000000"),  # esteid-ish, 16 bytes
    bytes.fromhex("E828BD080FD25047656E65726963"),  # sc-hsm
    bytes.fromhex("A0000000030000"),  # GP card manager (Visa)
    bytes.fromhex("D392"),
]

SHA256_DIGESTINFO = bytes.fromhex("3031300D060960864801650304020105000420") + bytes(range(32))
SHA1_DIGESTINFO = bytes.fromhex("3021300906052B0E03021A05000414") + bytes(range(20))

OK = b"\x90\x00"
# Every status word the card may answer (docs/card-interface.md §9; D9: never 61xx/6Cxx). 63Cx is added per
# profile (x up to the largest retry limit). 6F00 is left out: the card uses it for internal errors.
BASE_SWS = frozenset(
    bytes.fromhex(h)
    for h in ("9000", "6700", "6881", "6882", "6884", "6981", "6982", "6984", "6985", "6986", "6987", "6988",
              "69FC", "66F1", "6A80", "6A82", "6A83", "6A86", "6A88", "6B00", "6D00", "6E00")
)
MAX_ANSWER = 65_537
# Instructions whose 9000 may legitimately restore a retry counter (a match or a change).
COUNTER_RESTORERS = {(0x00, 0x20), (0x00, 0x24), (0x80, 0x32)}


def allowed_sws(max_limit: int = 15) -> frozenset[bytes]:
    """The whitelist: the base status words plus 63C0..63C<max_limit>."""
    return BASE_SWS | {bytes((0x63, 0xC0 | n)) for n in range(max_limit + 1)}


def encode(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None, ext: bool = False) -> bytes:
    """Encode a command APDU; ``le`` 256 (short) / 65536 (extended) encode as zeros."""
    return build_command(cla, ins, p1, p2, data, le, extended=ext)


def sel_ap(name: str) -> bytes:
    return encode(0x00, 0xA4, 0x04, 0x0C, AIDS[name])


def sel(fid: int) -> bytes:
    return encode(0x00, 0xA4, 0x02, 0x0C, fid.to_bytes(2, "big"))


def rb(offset: int, le: int, ext: bool = False) -> bytes:
    return encode(0x00, 0xB0, offset >> 8, offset & 0xFF, le=le, ext=ext)


def vfy(value: str | bytes, p2: int = 0x80) -> bytes:
    return encode(0x00, 0x20, 0x00, p2, value.encode() if isinstance(value, str) else value)


def qry(p2: int = 0x80) -> bytes:
    return encode(0x00, 0x20, 0x00, p2)


def sign(data: bytes, p1: int = 0x00, p2: int = 0x80) -> bytes:
    return encode(0x80, 0x2A, p1, p2, data, le=256)


def read_chunks(size: int, chunk: int = 256) -> list[bytes]:
    """READ BINARY commands for ``size`` bytes in short chunks (OpenSC/myna style)."""
    return [rb(off, min(chunk, size - off)) for off in range(0, size, chunk)]


def transcripts(values: dict[str, str]) -> list[list[bytes]]:
    """The client sequences of docs/card-interface.md §10 with a card's right values (changes keep the value)."""
    v = values
    jpki_certs = []
    for ef in (0x000A, 0x0001, 0x000B, 0x0002):
        jpki_certs += [sel(ef), rb(0, 4), *read_chunks(0x0700)]
    return [
        # 10.0 TEX2E reference trace
        [sel_ap("jpki"), sel(0x000A), rb(0, 4), encode(0x00, 0xB0, 0x00, 0x04, le=0x061F, ext=True),
         sel(0x0018), vfy(v["auth"]), sel(0x0017), sign(SHA256_DIGESTINFO),
         sel(0x001B), vfy(v["sign"]), sel(0x0001), rb(0, 4),
         sel_ap("text"), sel(0x0011), vfy(v["text"]), sel(0x0001), rb(0, 256),
         sel(0x0002), rb(2, 1), rb(0, 0x70)],
        # 10.1 OpenSC bind, pkcs15-tool --dump, pkcs11-tool --sign, logout
        [sel_ap("jpki"), sel(0x0018), qry(), sel(0x001B), qry(), *jpki_certs],
        [sel_ap("jpki"), sel(0x0018), qry(), sel(0x0018), vfy(v["auth"]), sel(0x0017), sign(SHA256_DIGESTINFO),
         sel(0x001B), vfy(v["sign"]), sel(0x001A), sel(0x001B), vfy(v["sign"]), sel(0x001A), sign(SHA1_DIGESTINFO),
         sel_ap("jpki")],
        # 10.2 myna: token, cert with PIN, pin status, pin change (to the same value), unknown AP
        [sel_ap("jpki"), sel(0x0006), rb(0, 0x20), sel(0x001B), vfy(v["sign"].lower()), vfy(v["sign"]),
         sel(0x0001), rb(0, 7), rb(7, 256), rb(263, 256)],
        [sel_ap("text"), sel(0x0011), qry(), sel(0x0014), qry(), sel(0x0015), qry(), sel_ap("visual"),
         sel(0x0013), qry(), sel(0x0012), qry(), sel_ap("jpki"), sel(0x0006), rb(0, 0x20), sel(0x0018), qry(),
         sel(0x001B), qry()],
        [sel_ap("text"), sel(0x0011), vfy(v["text"]), encode(0x00, 0x24, 0x01, 0x80, v["text"].encode()),
         sel_ap("jpki"), sel(0x0018), vfy(v["auth"]), encode(0x00, 0x24, 0x01, 0x80, v["auth"].encode())],
        [sel_ap("text"), sel(0x0011), vfy(v["text"]), sel(0x0001), rb(0, 0x11), sel_ap("visual"), sel(0x0013),
         vfy(v["visual-a"]), sel(0x0002), rb(0, 7), *read_chunks(0x0D00)],
        [sel_ap("common"), encode(0x00, 0xB2, 0x01, 0x0C, le=256)],
        # 10.3 old Go myna: 336-byte signature EF, 568-byte CV cert, 256-byte basic info
        [sel_ap("jpki"), sel(0x0006), sel(0x0006), rb(0, 0x20), sel_ap("text"), sel(0x0011), vfy(v["text"]),
         sel(0x0003), rb(0, 256), rb(0x100, 0x50), sel(0x0004), rb(0, 256), rb(0x100, 256), rb(0x200, 0x38),
         sel(0x0005), rb(0, 256)],
        # 10.4 myna-card read_card: GET DATA at the MF, common AP, text, visual, JPKI; SFI signing
        [sel_ap("mf"), encode(0x00, 0xCA, 0x00, 0x45, le=256), encode(0x00, 0xCA, 0x00, 0xF8, le=256),
         encode(0x00, 0xCA, 0x00, 0xF8, le=65536, ext=True), encode(0x00, 0xCA, 0x7F, 0x21, le=65536, ext=True),
         sel_ap("common"), encode(0x00, 0xCA, 0x5F, 0x51, le=256), sel(0x0001), encode(0x00, 0xB2, 0x01, 0x04, le=256),
         sel_ap("text"), sel(0x0004), rb(0, 256), sel(0x0005), rb(0, 256), sel(0x0011), vfy(v["text"]),
         sel(0x0007), rb(0, 256), sel(0x0001), rb(0, 256), sel(0x0003), rb(0, 256),
         sel_ap("visual"), sel(0x0004), rb(0, 256), sel(0x0003), rb(0, 256), sel(0x0011), vfy(v["visual-birth"]),
         sel(0x0001), rb(0, 256), sel(0x0012), vfy(v["visual-b"]), sel(0x0002), rb(0, 256),
         encode(0x00, 0x84, 0x00, 0x00, le=0x10), sign(SHA256_DIGESTINFO, p2=0x00),
         sel_ap("jpki"), sel(0x0006), rb(0, 256), sel(0x0018), qry(), sel(0x001B), qry(),
         vfy(v["auth"], p2=0x98), sign(bytes(32), p1=0x02, p2=0x97), sign(b"hello", p1=0x03, p2=0x97),
         sign(bytes(32), p1=0x04, p2=0x97), sign(b"x" * 255, p1=0x05, p2=0x97)],
        # 10.6 jsapdu: SFI VERIFY and whole-file extended reads
        [sel_ap("text"), vfy(v["text"], p2=0x91), *(encode(0x00, 0xB0, 0x80 | s, 0x00, le=65536) for s in (1, 2, 3, 4, 7)),
         sel_ap("visual"), vfy(v["visual-a"], p2=0x93), *(encode(0x00, 0xB0, 0x80 | s, 0x00, le=65536) for s in (4, 2, 5)),
         sel_ap("text"), sign(bytes(32), p1=0x05, p2=0x00), sign(bytes(32), p1=0x00, p2=0x00)],
        # JICSAP CHANGE KEY (juki/common), INTERNAL AUTHENTICATE, and the odd corners
        [sel_ap("juki"), sel(0x001C), qry(), vfy(v["juki"]), encode(0x80, 0x32, 0x00, 0x80, v["juki"].encode()),
         encode(0x00, 0xB2, 0x01, 0x14, le=256), sel_ap("common"), sel(0x001C), vfy(v["common"]),
         encode(0x80, 0x32, 0x00, 0x80, v["common"].encode()), encode(0x00, 0x88, 0x00, 0x99, bytes(16), le=256)],
        [encode(0x00, 0xA4, 0x00, 0x00), sel(0x3F00), sel(0x2F10), sel(0x001E), rb(0, 4),
         encode(0x00, 0x84, 0x00, 0x00, le=256), encode(0x00, 0x84, 0x00, 0x00, le=0x101, ext=True),
         encode(0x00, 0xA4, 0x04, 0x00, AIDS["jpki"], le=256), encode(0x00, 0xA4, 0x04, 0x0C, AIDS["text"][:8]),
         *(encode(0x00, 0xA4, 0x04, 0x00, a, le=256) for a in FOREIGN_AIDS),
         encode(0x80, 0xA2, 0x06, 0xC1, b"\x7f\x21\x82\x02\x33" + bytes(302)), encode(0x80, 0xFC, 0x00, 0x00),
         encode(0x08, 0xA4, 0x02, 0x0C, bytes(4)), encode(0x01, 0xA4, 0x04, 0x0C, AIDS["jpki"])],
    ]


# -- mutation ------------------------------------------------------------------------------------

CLAS = [0x00, 0x80, 0x01, 0x02, 0x03, 0x04, 0x08, 0x0C, 0x10, 0x40, 0x41, 0x60, 0x81, 0x83, 0x84, 0x88,
        0x90, 0xA0, 0xC0, 0xE0, 0xFF]
INSS = [0xA4, 0xB0, 0xB1, 0xB2, 0x20, 0x24, 0x2C, 0x32, 0x2A, 0x84, 0x88, 0xCA, 0xCB, 0xC0, 0x22, 0xA2,
        0xAE, 0xFC, 0x8A, 0x06, 0x50, 0x44, 0x0E, 0xD6, 0xE0, 0x00, 0xFF]
PS = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x08, 0x0C, 0x0D, 0x0F, 0x10, 0x14, 0x1F, 0x7F, 0x80, 0x81,
      0x82, 0x8A, 0x91, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9E, 0x9F, 0xA0, 0xC0, 0xE0, 0xFF]
LENGTHS = [0, 1, 2, 3, 4, 6, 0x0A, 0x0C, 0x0E, 0x10, 0x11, 0x20, 0x33, 0x7F, 0x80, 0xF5, 0xF6, 0xFE, 0xFF,
           0x100, 0x101, 0x7FFF, 0x8000, 0xFFFF]
OVERSIZE = [256, 257, 300, 4096, 32768, 65535, 65536, 65544]


def _split(apdu: bytes) -> tuple[bytes, bytes, int | None]:
    """Leniently read (header, data, le) from a short or extended APDU (garbage -> raw data)."""
    head, n = apdu[:4], len(apdu)
    if n <= 4:
        return head, b"", None
    if n == 5:
        return head, b"", apdu[4] or 256
    if apdu[4]:
        lc = apdu[4]
        data = apdu[5 : 5 + lc]
        le = (apdu[5 + lc] or 256) if n == 6 + lc else None
        return head, data, le
    if n < 7:
        return head, apdu[5:], None
    if n == 7:
        return head, b"", ((apdu[5] << 8) | apdu[6]) or 65536
    lc = (apdu[5] << 8) | apdu[6]
    data = apdu[7 : 7 + lc]
    le = (((apdu[7 + lc] << 8) | apdu[8 + lc]) or 65536) if n == 9 + lc else None
    return head, data, le


def _bit_flip(rng: random.Random, a: bytes) -> bytes:
    b = bytearray(a or b"\x00")
    for _ in range(rng.randint(1, 4)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def _byte_set(rng: random.Random, a: bytes) -> bytes:
    b = bytearray(a or b"\x00")
    b[rng.randrange(len(b))] = rng.choice(PS + LENGTHS[:19] + [rng.randrange(256)])
    return bytes(b)


def _header(rng: random.Random, a: bytes) -> bytes:
    b = bytearray(a.ljust(4, b"\x00"))
    i = rng.randrange(4)
    if i == 0:
        b[0] = rng.choice(CLAS) if rng.random() < 0.7 else b[0] ^ (1 << rng.randrange(8))
    elif i == 1:
        b[1] = rng.choice(INSS) if rng.random() < 0.8 else rng.randrange(256)
    else:
        b[i] = rng.choice(PS) if rng.random() < 0.8 else rng.randrange(256)
    return bytes(b)


def _truncate(rng: random.Random, a: bytes) -> bytes:
    return a[: rng.randrange(len(a))] if a else a


def _append(rng: random.Random, a: bytes) -> bytes:
    return a + rng.randbytes(rng.choice((1, 1, 2, 3, 8, 16)))


def _lc_skew(rng: random.Random, a: bytes) -> bytes:
    if len(a) < 5:
        return a + bytes((rng.choice(LENGTHS[:19]),))
    b = bytearray(a)
    pos = 4 if b[4] or len(b) < 7 else rng.choice((5, 6))
    b[pos] = (b[pos] + rng.choice((-2, -1, 1, 2, 0x80))) & 0xFF if rng.random() < 0.6 else rng.randrange(256)
    return bytes(b)


def _le_change(rng: random.Random, a: bytes) -> bytes:
    head, data, le = _split(a)
    choice = rng.randrange(5)
    if choice == 0:
        le = None
    elif choice == 1:
        le = rng.choice((1, 4, 0x11, 255, 256))
    elif choice == 2:
        return encode(*head.ljust(4, b"\x00"), data, rng.choice((1, 256, 257, 0x1000, 65535, 65536)), ext=True)
    elif choice == 3:
        return a[:-1] if len(a) > 4 else a
    else:
        return a + rng.choice((b"\x00", b"\x00\x00", b"\x01\x00"))
    return encode(*head.ljust(4, b"\x00"), data, le)


def _to_extended(rng: random.Random, a: bytes) -> bytes:
    head, data, le = _split(a)
    return encode(*head.ljust(4, b"\x00"), data, le, ext=True)


def _to_short(rng: random.Random, a: bytes) -> bytes:
    head, data, le = _split(a)
    if len(data) > 255 or (le is not None and le > 256):
        return bytes(head) + bytes((len(data) & 0xFF,)) + data[:255]
    return encode(*head.ljust(4, b"\x00"), data, le)


def _oversize(rng: random.Random, a: bytes) -> bytes:
    size = rng.choice(OVERSIZE)
    if rng.random() < 0.5:  # raw: the length fits no case (up to 65,544 bytes in all)
        return (a + rng.randbytes(size))[: rng.randint(size - 8, size)]
    head, data, le = _split(a)
    data = (data + rng.randbytes(size))[: min(size, 65535)]
    return encode(*head.ljust(4, b"\x00"), data, le if rng.random() < 0.5 else 65536, ext=True)


def _ext_inconsistent(rng: random.Random, a: bytes) -> bytes:
    head, data, _ = _split(a)
    lc = max(0, len(data) + rng.choice((-3, -1, 1, 2, 3, 300)))
    return bytes(head.ljust(4, b"\x00")) + b"\x00" + (lc & 0xFFFF).to_bytes(2, "big") + data + rng.randbytes(rng.randrange(3))


def _splice(rng: random.Random, a: bytes) -> bytes:
    cut = rng.randrange(len(a) + 1)
    return a[:cut] + rng.randbytes(rng.randrange(1, 12)) + a[cut:][rng.randrange(len(a[cut:]) + 1) :]


def _data_swap(rng: random.Random, a: bytes) -> bytes:
    head, _, le = _split(a)
    pool = [*AIDS.values(), *FOREIGN_AIDS, b"\x00\x0a", b"\x00\x18", b"\x3f\x00", b"1234", b"ABC123", b"abc123",
            b"", SHA256_DIGESTINFO, bytes(32), b"\xff" * 16, rng.randbytes(rng.randrange(1, 40))]
    return encode(*head.ljust(4, b"\x00"), rng.choice(pool), le, ext=rng.random() < 0.2)


MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [
    _bit_flip, _byte_set, _header, _header, _truncate, _append, _lc_skew, _le_change, _to_extended,
    _to_short, _oversize, _ext_inconsistent, _splice, _data_swap,
]
# _oversize is costly in bytes; keep it at roughly 1 mutation in 60.
MUTATOR_WEIGHTS = [6, 6, 10, 10, 5, 4, 5, 6, 4, 3, 1, 4, 3, 5]


def mutate(rng: random.Random, apdu: bytes) -> bytes:
    """Apply one to three random mutations."""
    for op in rng.choices(MUTATORS, MUTATOR_WEIGHTS, k=rng.choice((1, 1, 1, 2, 3))):
        apdu = op(rng, apdu)
    return apdu


def random_apdu(rng: random.Random) -> bytes:
    """A random APDU of a random case and length form, mostly with plausible header bytes."""
    cla = rng.choice(CLAS) if rng.random() < 0.85 else rng.randrange(256)
    ins = rng.choice(INSS) if rng.random() < 0.85 else rng.randrange(256)
    p1 = rng.choice(PS) if rng.random() < 0.7 else rng.randrange(256)
    p2 = rng.choice(PS) if rng.random() < 0.7 else rng.randrange(256)
    shape = rng.randrange(10)
    data = rng.randbytes(rng.choice((1, 2, 4, 6, 10, 12, 14, 16, 32, 51, 245, 255)))
    if shape == 0:
        return encode(cla, ins, p1, p2)
    if shape == 1:
        return encode(cla, ins, p1, p2, le=rng.randint(1, 256))
    if shape == 2:
        return encode(cla, ins, p1, p2, le=rng.randint(1, 65536), ext=True)
    if shape == 3:
        return encode(cla, ins, p1, p2, data)
    if shape == 4:
        return encode(cla, ins, p1, p2, data, ext=True)
    if shape == 5:
        return encode(cla, ins, p1, p2, data, le=rng.randint(1, 256))
    if shape == 6:
        return encode(cla, ins, p1, p2, data, le=rng.randint(1, 65536), ext=True)
    if shape == 7:
        return rng.randbytes(rng.randrange(0, 12))
    if shape == 8:
        return bytes((cla, ins, p1, p2)) + rng.randbytes(rng.randrange(1, 300))
    return encode(cla, ins, p1, p2, rng.randbytes(rng.choice((256, 300, 1000))), le=rng.choice((None, 65536)), ext=True)


def apdu_stream(rng: random.Random, scripts: list[list[bytes]]) -> Iterator[bytes]:
    """Endless mix: transcripts played with some steps mutated, single mutations, random APDUs."""
    flat = [a for s in scripts for a in s]
    while True:
        r = rng.random()
        if r < 0.35:
            p = rng.choice((0.0, 0.1, 0.3, 0.6))
            for apdu in rng.choice(scripts):
                if rng.random() < p:
                    yield mutate(rng, apdu)
                    if rng.random() < 0.5:
                        yield apdu
                else:
                    yield apdu
        elif r < 0.8:
            yield mutate(rng, rng.choice(flat))
        else:
            yield random_apdu(rng)


# -- checks --------------------------------------------------------------------------------------


def check_answer(apdu: bytes, resp: object, whitelist: frozenset[bytes]) -> str | None:
    """None if ``resp`` is a well-formed answer to ``apdu``, else what is wrong."""
    if not isinstance(resp, bytes):
        return f"answer is {type(resp).__name__}, not bytes"
    n = len(resp)
    if n < 2:
        return f"answer of {n} bytes has no status word"
    if n > MAX_ANSWER:
        return f"answer of {n} bytes is longer than {MAX_ANSWER}"
    sw = resp[-2:]
    if sw[0] in (0x61, 0x6C):
        return f"forbidden {sw.hex().upper()} (D9)"
    if sw == b"\x6f\x00" and apdu[:2] != b"\x80\xae":
        return "6F00: internal error"
    if sw not in whitelist and sw != b"\x6f\x00":
        return f"status word {sw.hex().upper()} not in the whitelist"
    if n > 2 and sw != OK:
        return f"{n - 2} data bytes with status {sw.hex().upper()}"
    return None


def ef_body(card, ap: str, fid: int) -> bytes:
    """The expected physical body of a transparent EF, from the profile and ``card.dir.content``."""
    spec = card.profile.aps[ap].efs[fid]
    content = card.dir.content.get(spec.content, b"") if spec.content else b""
    size = spec.size or len(content)
    return bytes(content) + bytes((spec.filler,)) * (size - len(content))


def dead_card_check(card) -> str | None:
    """None if a fresh SELECT JPKI + SELECT 000A + READ gives the right bytes and QRY answers 63Cx."""
    body = ef_body(card, "jpki", 0x000A)
    steps = [
        (sel_ap("jpki"), OK),
        (sel(0x000A), OK),
        (rb(0, 4), body[:4] + OK),
        (rb(0, len(body), ext=True), body + OK),
        (sel(0x0018), OK),
        (qry(), bytes((0x63, 0xC0 | card.tries_left("auth")))),
    ]
    for apdu, want in steps:
        try:
            got = card.transmit(apdu)
        except Exception as exc:  # reported, not raised: the caller counts dead cards
            return f"{apdu.hex().upper()} raised {exc!r}"
        if got != want:
            sws = got[-2:].hex().upper(), want[-2:].hex().upper()
            return f"{apdu.hex().upper()} answered {sws[0]} ({len(got)} bytes), expected {sws[1]}"
    return None


# -- loops ---------------------------------------------------------------------------------------


@dataclass
class Stats:
    """What a fuzz run counted; ``failures`` keeps the first examples of each problem."""

    apdus: int = 0
    link_apdus: int = 0
    frames: int = 0
    probes: int = 0
    connections: int = 0
    exceptions: int = 0
    logged_errors: int = 0
    bad_answers: int = 0
    counter_rises: int = 0
    dead_checks: int = 0
    dead_cards: int = 0
    cards: int = 0
    sws: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def fail(self, what: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(what)

    @property
    def problems(self) -> int:
        return self.exceptions + self.logged_errors + self.bad_answers + self.counter_rises + self.dead_cards

    def report(self) -> str:
        """A human-readable summary."""
        lines = [
            f"APDUs sent:       {self.apdus:,} to Card.transmit",
            f"frames sent:      {self.frames:,} to the vpcd link ({self.link_apdus:,} of them APDUs), "
            f"+{self.probes:,} probe frames, {self.connections:,} connections",
            f"cards used:       {self.cards:,}",
            f"exceptions:       {self.exceptions:,}",
            f"errors logged:    {self.logged_errors:,}",
            f"bad answers:      {self.bad_answers:,}",
            f"counter rises:    {self.counter_rises:,}",
            f"dead-card checks: {self.dead_checks:,} ({self.dead_cards:,} dead)",
            "SW histogram:",
            *(f"  {sw}  {n:>10,}" for sw, n in sorted(self.sws.items())),
            f"elapsed:          {self.elapsed:.1f} s",
        ]
        if self.failures:
            lines += ["first failures:", *(f"  {f}" for f in self.failures)]
        return "\n".join(lines)


class _ErrorCounter(logging.Handler):
    def __init__(self, stats: Stats) -> None:
        super().__init__(logging.ERROR)
        self.stats = stats

    def emit(self, record: logging.LogRecord) -> None:
        self.stats.logged_errors += 1
        self.stats.fail(f"logged: {record.name}: {record.getMessage()}")


@contextlib.contextmanager
def count_logged_errors(stats: Stats) -> Iterator[None]:
    """Count ERROR records of mynaemu and reader_bridge (the card's caught exceptions)."""
    handler = _ErrorCounter(stats)
    loggers = [logging.getLogger("mynaemu"), logging.getLogger("reader_bridge")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def check_counters(stats: Stats, keys: list[str], limits: dict[str, int], prev: list[int], now: list[int],
                   apdu: bytes | None, resp: object) -> None:
    """Count counter moves D3 forbids (called for every answer, changed counters or not).

    A counter rises only by a 9000 to a VERIFY/CHANGE, never from 0 (a blocked key never
    matches) and stays in 0..limit. A 63Cx to a VERIFY with data decrements exactly one counter
    by one, to x; a 63Cx to a query (no data) changes nothing.
    """
    what = "a control frame" if apdu is None else apdu[:24].hex().upper()
    sw = resp[-2:] if isinstance(resp, bytes) and len(resp) >= 2 else b""
    restorer = apdu is not None and sw == OK and (apdu[0], apdu[1]) in COUNTER_RESTORERS
    for k, a, b in zip(keys, prev, now, strict=True):
        if (b > a and (not restorer or a == 0)) or not 0 <= b <= limits[k]:
            stats.counter_rises += 1
            stats.fail(f"{what} moved counter {k} {a}->{b} (answer {sw.hex().upper()})")
    if apdu is not None and len(apdu) >= 4 and apdu[1] == 0x20 and sw[:1] == b"\x63":
        moved = [(k, a, b) for k, a, b in zip(keys, prev, now, strict=True) if a != b]
        one_down = len(moved) == 1 and moved[0][2] == moved[0][1] - 1 == sw[1] & 0x0F
        if not (one_down if _split(apdu)[1] else not moved):
            stats.counter_rises += 1
            stats.fail(f"{what} answered {sw.hex().upper()} but moved counters {moved}")


def key_homes(card) -> dict[str, str]:
    """Key name -> the application whose PIN EF holds it."""
    return {ef.key: ap for ap, spec in card.profile.aps.items() for ef in spec.efs.values() if ef.type == "pin"}


def check_session(stats: Stats, card, homes: dict[str, str], apdu: bytes | None, resp: object = None) -> None:
    """Security status after an answer (D3, D6, and the profile's access rules).

    A verified key is never blocked and always belongs to the current application; a READ
    answered with data read an EF that the current security status opens.
    """
    session = card.session
    verified = session.verified
    ap = card.current_ap or "mf"
    what = "a control frame" if apdu is None else apdu[:24].hex().upper()
    if verified:
        bad = [k for k in verified if homes.get(k) != ap or card.tries_left(k) == 0]
        if bad:
            stats.counter_rises += 1
            stats.fail(f"after {what}: verified {sorted(bad)} while in {ap} (blocked or of another AP)")
    if apdu is not None and apdu[1:2] in (b"\xb0", b"\xb2") and isinstance(resp, bytes) and len(resp) > 2:
        ef = session.ef
        spec = card.profile.aps[ap].efs.get(ef.fid) if ef is not None else None
        if spec is None or (spec.read is not None and spec.read.isdisjoint(verified)):
            stats.bad_answers += 1
            stats.fail(f"{what} returned {len(resp) - 2} bytes of a protected EF without its credential")


class CardFactory:
    """Fresh copies of one issued card directory, each loaded and powered on."""

    def __init__(self, template: Path, workdir: Path | None = None) -> None:
        self.template = Path(template)
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="mynaemu-fuzz-"))
        self._n = 0
        self._last: Path | None = None

    def __call__(self):
        from mynaemu import Card

        if self._last is not None:
            shutil.rmtree(self._last, ignore_errors=True)
        self._n += 1
        dest = self.workdir / f"card{self._n}"
        shutil.copytree(self.template, dest)
        self._last = dest
        card = Card.load(dest)
        card.power_on()
        return card


class CardFuzzer:
    """Sends a stream of APDUs straight to ``Card.transmit`` and checks every answer."""

    def __init__(self, factory: Callable, rng: random.Random, stats: Stats, *, refresh_every: int = 10_000) -> None:
        self.factory = factory
        self.rng = rng
        self.stats = stats
        self.refresh_every = refresh_every
        self.card = None
        self.whitelist = BASE_SWS
        self.sent_on_card = 0

    def _new_card(self):
        self.card = self.factory()
        self.sent_on_card = 0
        self.stats.cards += 1
        self.keys = list(self.card.keyring.keys)
        self.homes = key_homes(self.card)
        self.limits = {k: self.card.keyring[k].spec.limit for k in self.keys}
        self.whitelist = allowed_sws(max(self.limits.values()))
        return self.card

    def counters(self) -> list[int]:
        card = self.card
        return [card.tries_left(k) for k in self.keys]

    def finish_card(self) -> None:
        """Dead-card check, then a restart from disk whose counters must equal the live card's."""
        from mynaemu import Card

        card, stats = self.card, self.stats
        if card is None:
            return
        stats.dead_checks += 1
        problem = dead_card_check(card)
        if problem is None:
            try:
                reloaded = Card.load(card.dir.path, read_only=True)
                if [reloaded.tries_left(k) for k in self.keys] != self.counters():
                    problem = "counters on disk differ from the live card's"
                else:
                    problem = dead_card_check(reloaded)
            except Exception as exc:
                problem = f"reload raised {exc!r}"
        if problem is not None:
            stats.dead_cards += 1
            stats.fail(f"dead card: {problem}")

    def run(self, stream: Iterator[bytes], n: int) -> None:
        """Send ``n`` APDUs from ``stream``, a fresh card every ``refresh_every``."""
        stats = self.stats
        card = self.card or self._new_card()
        prev = self.counters()
        for _ in range(n):
            if self.sent_on_card >= self.refresh_every:
                self.finish_card()
                card = self._new_card()
                prev = self.counters()
            apdu = next(stream)
            self.sent_on_card += 1
            stats.apdus += 1
            try:
                resp = card.transmit(apdu)
            except Exception as exc:
                stats.exceptions += 1
                stats.fail(f"{apdu[:24].hex().upper()}…({len(apdu)} B) raised {exc!r}")
                prev = self.counters()
                continue
            problem = check_answer(apdu, resp, self.whitelist)
            if problem is None:
                stats.sws[resp[-2:].hex().upper()] += 1
            else:
                stats.bad_answers += 1
                stats.fail(f"{apdu[:24].hex().upper()}…({len(apdu)} B): {problem}")
                if isinstance(resp, bytes) and len(resp) >= 2:
                    stats.sws[resp[-2:].hex().upper()] += 1
            now = self.counters()
            if now != prev or apdu[1:2] == b"\x20":
                check_counters(stats, self.keys, self.limits, prev, now, apdu, resp)
                prev = now
            check_session(stats, card, self.homes, apdu, resp)


def frame(payload: bytes) -> bytes:
    """A vpcd frame: 2-byte big-endian length, then the payload."""
    return len(payload).to_bytes(2, "big") + payload


class LoopbackVpcd:
    """A fake vpcd on 127.0.0.1: accepts the card's link and speaks the framing by hand."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(timeout)
        self.timeout = timeout
        self.port: int = self.server.getsockname()[1]
        self.conn: socket.socket | None = None

    def accept(self) -> None:
        conn, _ = self.server.accept()
        conn.settimeout(self.timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = conn

    def send(self, raw: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(raw)

    def _exact(self, n: int) -> bytes:
        assert self.conn is not None
        buf = bytearray()
        while len(buf) < n:
            chunk = self.conn.recv(n - len(buf))
            if not chunk:
                raise EOFError("link hung up")
            buf += chunk
        return bytes(buf)

    def recv(self) -> bytes:
        return self._exact(int.from_bytes(self._exact(2), "big"))

    def hung_up(self) -> bool:
        """True if the link closes without sending anything more."""
        assert self.conn is not None
        try:
            return self.conn.recv(1) == b""
        except ConnectionResetError:
            return True

    def hang_up(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None

    def close(self) -> None:
        self.hang_up()
        self.server.close()


# Frame kinds and their weights: mostly well-formed traffic, some control codes, a few breaks.
FRAME_KINDS = {
    "apdu": 60, "split": 6, "coalesced": 5, "atr": 4, "power": 4, "unknown_ctrl": 4, "max": 1,
    "zero": 2, "truncated": 2, "huge": 2, "garbage": 2, "abrupt": 1,
}


class LinkFuzzer:
    """Feeds raw frames to a ``VpcdLink`` through a fake vpcd server on loopback."""

    def __init__(self, card, rng: random.Random, stats: Stats, stream: Iterator[bytes]) -> None:
        self.card = card
        self.rng = rng
        self.stats = stats
        self.stream = stream
        self.keys = list(card.keyring.keys)
        self.homes = key_homes(card)
        self.limits = {k: card.keyring[k].spec.limit for k in self.keys}
        self.whitelist = allowed_sws(max(self.limits.values()))
        self.body = ef_body(card, "jpki", 0x000A)
        self.prev = self._counters()

    def _counters(self) -> list[int]:
        return [self.card.tries_left(k) for k in self.keys]

    def _check_counters(self, apdu: bytes | None, resp: object) -> None:
        now = self._counters()
        if now != self.prev or (apdu is not None and apdu[1:2] == b"\x20"):
            check_counters(self.stats, self.keys, self.limits, self.prev, now, apdu, resp)
            self.prev = now
        check_session(self.stats, self.card, self.homes, apdu, resp)

    def _apdu_payload(self) -> bytes:
        apdu = next(self.stream)
        while len(apdu) < 2:
            apdu += self.rng.randbytes(2)
        return apdu[:0xFFFF]

    def _answer(self, vpcd: LoopbackVpcd, apdu: bytes, state: bool = True) -> None:
        """Read and check one answer; ``state=False`` while the link may already run later APDUs."""
        resp = vpcd.recv()
        problem = check_answer(apdu, resp, self.whitelist)
        if len(resp) >= 2:
            self.stats.sws[resp[-2:].hex().upper()] += 1
        if problem is not None:
            self.stats.bad_answers += 1
            self.stats.fail(f"link {apdu[:24].hex().upper()}…({len(apdu)} B): {problem}")
        if state:
            self._check_counters(apdu, resp)

    def _probe(self, vpcd: LoopbackVpcd) -> None:
        """The next well-formed APDUs get the right answers (select + read the auth cert head)."""
        for apdu, want in ((sel_ap("jpki"), OK), (encode(0x00, 0xB0, 0x8A, 0x00, le=8), self.body[:8] + OK)):
            vpcd.send(frame(apdu))
            self.stats.probes += 1
            got = vpcd.recv()
            if got != want:
                self.stats.bad_answers += 1
                self.stats.fail(f"link probe {apdu.hex().upper()} answered {got.hex().upper()[:40]}")
            self._check_counters(apdu, got)

    def _reconnect(self, vpcd: LoopbackVpcd) -> None:
        """Hang up, accept the link's next connection, check it came back clean, probe it."""
        vpcd.hang_up()
        vpcd.accept()
        self.stats.connections += 1
        # The link powered the card off when the connection ended (before it reconnected):
        # no security status survives a cut link (D6).
        if self.card.session.verified or self.card.current_ap is not None:
            self.stats.bad_answers += 1
            self.stats.fail(f"after a cut link: AP {self.card.current_ap}, verified {sorted(self.card.session.verified)}")
        self._probe(vpcd)

    def run(self, n: int, link_factory: Callable[[int], object]) -> None:
        """Send ``n`` frames; ``link_factory(port)`` starts the link under test."""
        rng, stats = self.rng, self.stats
        kinds, weights = list(FRAME_KINDS), list(FRAME_KINDS.values())
        vpcd = LoopbackVpcd()
        link = link_factory(vpcd.port)
        try:
            vpcd.accept()
            stats.connections += 1
            sent = 0
            while sent < n:
                kind = rng.choices(kinds, weights)[0]
                try:
                    sent += self._one(vpcd, kind)
                except (TimeoutError, EOFError, OSError) as exc:
                    stats.bad_answers += 1
                    stats.fail(f"link stalled or hung up after a {kind!r} frame: {exc!r}")
                    self._reconnect(vpcd)
                self._check_counters(None, None)
            stats.frames += sent
            self._probe(vpcd)
            if getattr(link, "connections", stats.connections) != stats.connections:
                stats.bad_answers += 1
                stats.fail(f"link counted {link.connections} connections, the server accepted {stats.connections}")
            if not getattr(link, "running", True):
                stats.bad_answers += 1
                stats.fail("the link thread died")
        finally:
            link.close()  # type: ignore[attr-defined]
            vpcd.close()

    def _one(self, vpcd: LoopbackVpcd, kind: str) -> int:
        """Send one frame (or a few) of ``kind``; returns how many frames went out."""
        rng = self.rng
        if kind == "apdu":
            apdu = self._apdu_payload()
            vpcd.send(frame(apdu))
            self.stats.link_apdus += 1
            self._answer(vpcd, apdu)
            return 1
        if kind == "split":
            apdu = self._apdu_payload()
            raw = frame(apdu)
            cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, 4))))
            for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
                vpcd.send(raw[a:b])
            self.stats.link_apdus += 1
            self._answer(vpcd, apdu)
            return 1
        if kind == "coalesced":
            apdus = [self._apdu_payload() for _ in range(rng.randint(2, 5))]
            vpcd.send(b"".join(frame(a) for a in apdus))
            for a in apdus:
                self.stats.link_apdus += 1
                self._answer(vpcd, a, state=False)
            now = self._counters()  # several APDUs ran: only "a blocked key never comes back" applies
            for k, a, b in zip(self.keys, self.prev, now, strict=True):
                if (a == 0 and b > 0) or not 0 <= b <= self.limits[k]:
                    self.stats.counter_rises += 1
                    self.stats.fail(f"coalesced frames moved counter {k} {a}->{b}")
            self.prev = now
            return len(apdus)
        if kind == "atr":
            vpcd.send(frame(b"\x04"))
            got = vpcd.recv()
            if got != self.card.atr:
                self.stats.bad_answers += 1
                self.stats.fail(f"get ATR answered {got.hex()}")
            return 1
        if kind == "power":
            vpcd.send(frame(bytes((rng.choice((0x00, 0x01, 0x02)),))))
            return 1
        if kind == "unknown_ctrl":
            vpcd.send(frame(bytes((rng.choice([c for c in range(256) if c not in (0, 1, 2, 4)]),))))
            return 1
        if kind == "max":
            apdu = bytes((rng.choice((0x00, 0x80)), rng.choice(INSS), 0, 0)) + rng.randbytes(0xFFFF - 4)
            vpcd.send(frame(apdu))
            self.stats.link_apdus += 1
            self._answer(vpcd, apdu)
            return 1
        if kind == "zero":
            vpcd.send(b"\x00\x00")
            if not vpcd.hung_up():
                self.stats.bad_answers += 1
                self.stats.fail("a zero-length frame did not drop the connection")
        elif kind == "truncated":
            raw = frame(self._apdu_payload())
            vpcd.send(raw[: rng.randrange(1, len(raw))])
        elif kind == "huge":
            declared = rng.choice((0xFFFF, 0xFFFE, 0x8000, rng.randrange(0x100, 0x10000)))
            vpcd.send(declared.to_bytes(2, "big") + rng.randbytes(rng.randrange(0, min(declared, 4096))))
        elif kind == "garbage":
            vpcd.send(rng.randbytes(rng.randrange(1, 300)))
        self._reconnect(vpcd)
        return 1


def default_link_factory(card) -> Callable[[int], object]:
    """A ``VpcdLink`` with quick reconnects, pointed at the fake server's port."""
    from reader_bridge.vpcd import VpcdLink

    def start(port: int):
        return VpcdLink(card, host="127.0.0.1", port=port, backoff_initial=0.001, backoff_max=0.02).start()

    return start


def quiet_bridge_logs() -> None:
    """The link logs a warning per malformed frame; the fuzzer makes thousands on purpose."""
    logging.getLogger("reader_bridge").setLevel(logging.ERROR)


def seed_from_env(default: int = 20_241_127) -> int:
    """The fuzz seed: MYNAEMU_FUZZ_SEED if set, else a fixed one (CI is reproducible)."""
    return int(os.environ.get("MYNAEMU_FUZZ_SEED", default))


def timed(fn: Callable[[], None], stats: Stats) -> None:
    """Run ``fn`` and add its wall time to ``stats.elapsed``."""
    start = time.perf_counter()
    try:
        fn()
    finally:
        stats.elapsed += time.perf_counter() - start
