"""In-process benchmarks of ``Card.transmit``, each beside a floor measured in the same run.

    python -m pytest benchmarks/test_bench_card.py --benchmark-enable   # numbers
    benchmarks/report                                                  # the table with targets

Every benchmark asserts the exact response, so it fails rather than rots. The floors say what
the same work costs with nothing of the emulator around it: a minimal dict dispatch over the
same bytes (SELECT EF, READ BINARY), raw ``cryptography`` signing with the same key, and a bare
atomic write of a state-sized file on the same filesystem. Each floor shares its operation's
``group``, so ratios come from one run on one machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo
from cryptography.hazmat.primitives.serialization import load_pem_private_key

OK = b"\x90\x00"
AID_JPKI = "D392F000260100000001"
AID_TEXT = "D3921000310001010408"
SELECT_JPKI = bytes.fromhex("00A4040C0A" + AID_JPKI)
SELECT_TEXT = bytes.fromhex("00A4040C0A" + AID_TEXT)
SELECT_000A = bytes.fromhex("00A4020C02000A")
READ_256 = bytes.fromhex("00B0000000")
QUERY = bytes.fromhex("00200080")
VERIFY_AUTH_RIGHT = bytes.fromhex("0020008004") + b"1234"
VERIFY_AUTH_WRONG = bytes.fromhex("0020008004") + b"0000"
DIGEST_INFO = bytes.fromhex("3031300D060960864801650304020105000420") + hashlib.sha256(b"mynaemu bench").digest()
SIGN_AUTH = bytes.fromhex("802A009733") + DIGEST_INFO + b"\x00"  # P2 97: SFI 17, the auth key

# Slow (fsync) benchmarks run a fixed number of rounds; override for a quick or a long look.
FSYNC_ROUNDS = int(os.environ.get("MYNAEMU_BENCH_FSYNC_ROUNDS", "500"))


def sel(fid: str) -> bytes:
    return bytes.fromhex("00A4020C02" + fid)


def rb(offset: int, le: int, *, ext: bool = False) -> bytes:
    """READ BINARY at ``offset``; short Le (256 -> 00) or extended."""
    head = bytes((0x00, 0xB0, offset >> 8, offset & 0xFF))
    return head + (b"\x00" + le.to_bytes(2, "big") if ext else bytes((le & 0xFF,)))


def ef_body(card, content_id: str, size: int, filler: int) -> bytes:
    content = card.dir.content[content_id]
    return content + bytes((filler,)) * (size - len(content))


def tlv_total(head: bytes) -> int:
    """Whole length of a BER TLV with a two-byte tag (FF 20 ...), from its first bytes."""
    b = head[2]
    if b < 0x80:
        return 3 + b
    n = b & 0x7F
    return 3 + n + int.from_bytes(head[3 : 3 + n], "big")


def run_all(card, apdus: list[bytes]) -> list[bytes]:
    """Send a whole command sequence; the flows' benchmarked function."""
    transmit = card.transmit
    return [transmit(a) for a in apdus]


# -- floors -------------------------------------------------------------------------------------
def make_floor_read_binary(table: dict[tuple[int, int], bytes]):
    """The least a READ BINARY can be: dict lookup on (CLA, INS), one slice, + 9000."""

    def floor_read_binary(apdu: bytes) -> bytes:
        body = table[(apdu[0], apdu[1])]
        off = (apdu[2] << 8) | apdu[3]
        le = (apdu[4] or 256) if len(apdu) == 5 else (((apdu[5] << 8) | apdu[6]) or 65536)
        return body[off : off + le] + OK

    return floor_read_binary


def make_floor_select_ef(table: dict[tuple[int, int], dict[bytes, object]]):
    """The least a SELECT EF can be: dict lookup on (CLA, INS), then on the file id."""
    current = [None]

    def floor_select_ef(apdu: bytes) -> bytes:
        ef = table[(apdu[0], apdu[1])].get(apdu[5:7])
        if ef is None:
            return b"\x6a\x82"
        current[0] = ef
        return OK

    return floor_select_ef


def atomic_write(path: Path, data: bytes) -> None:
    """A bare atomic replace: temp file, write, fsync, rename, directory fsync."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@pytest.fixture
def jpki(bench_card):
    """The card with the JPKI AP selected."""
    assert bench_card.transmit(SELECT_JPKI) == OK
    return bench_card


@pytest.fixture(scope="module")
def auth_key(bench_issued):
    """The card's JPKI auth private key, parsed from keys.json with ``cryptography``."""
    doc = json.loads((bench_issued.path / "keys.json").read_text())
    return load_pem_private_key(doc["keys"]["jpki.auth"].encode(), None)


# -- SELECT -------------------------------------------------------------------------------------
@pytest.mark.benchmark(group="select-ap")
def test_select_ap(benchmark, bench_card) -> None:
    assert benchmark(bench_card.transmit, SELECT_JPKI) == OK


@pytest.mark.benchmark(group="select-ef")
def test_select_ef(benchmark, jpki) -> None:
    assert benchmark(jpki.transmit, SELECT_000A) == OK
    assert jpki.session.ef.fid == 0x000A


@pytest.mark.benchmark(group="select-ef")
def test_floor_select_ef(benchmark, jpki) -> None:
    efs = {fid.to_bytes(2, "big"): ef for fid, ef in jpki.applications["jpki"].efs.items()}
    assert benchmark(make_floor_select_ef({(0x00, 0xA4): efs}), SELECT_000A) == OK


# -- READ BINARY --------------------------------------------------------------------------------
@pytest.mark.benchmark(group="read-binary-256")
def test_read_binary_256(benchmark, jpki) -> None:
    assert jpki.transmit(SELECT_000A) == OK
    expected = ef_body(jpki, "jpki.auth_cert", 2048, 0)[:256] + OK
    assert benchmark(jpki.transmit, READ_256) == expected


@pytest.mark.benchmark(group="read-binary-256")
def test_floor_read_binary_256(benchmark, jpki) -> None:
    body = ef_body(jpki, "jpki.auth_cert", 2048, 0)
    assert benchmark(make_floor_read_binary({(0x00, 0xB0): body}), READ_256) == body[:256] + OK


@pytest.mark.benchmark(group="read-cert")
def test_read_cert_extended(benchmark, jpki) -> None:
    """The whole certificate in one READ BINARY with extended Le = its exact length."""
    assert jpki.transmit(SELECT_000A) == OK
    cert = jpki.dir.content["jpki.auth_cert"]
    assert benchmark(jpki.transmit, rb(0, len(cert), ext=True)) == cert + OK


@pytest.mark.benchmark(group="read-cert")
def test_floor_read_cert_extended(benchmark, jpki) -> None:
    body = ef_body(jpki, "jpki.auth_cert", 2048, 0)
    cert = jpki.dir.content["jpki.auth_cert"]
    assert benchmark(make_floor_read_binary({(0x00, 0xB0): body}), rb(0, len(cert), ext=True)) == cert + OK


# -- VERIFY -------------------------------------------------------------------------------------
def interleaved_ratio(op, floor, rounds: int) -> float:
    """Median floor time / median operation time, the two timed in turn in one loop."""
    ops: list[int] = []
    floors: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        start = clock()
        op()
        ops.append(clock() - start)
        start = clock()
        floor()
        floors.append(clock() - start)
    return statistics.median(floors) / statistics.median(ops)


@pytest.mark.benchmark(group="verify-right")
def test_verify_right(benchmark, jpki, bench_card_dir: Path) -> None:
    """The auth PIN: one attempt is two durable writes (the decrement, then the reset).

    Its floor is two bare atomic writes of the state's size, timed interleaved with it
    (``extra_info["ratio_to_floor_interleaved"]``, which the report prefers).
    """
    assert jpki.transmit(sel("0018")) == OK
    writes: list[str] = []
    jpki.store.fault = writes.append
    assert jpki.transmit(VERIFY_AUTH_RIGHT) == OK
    jpki.store.fault = None
    assert writes.count("dir_synced") == 2, "a right VERIFY must write the decrement and the reset"
    resp = benchmark.pedantic(jpki.transmit, (VERIFY_AUTH_RIGHT,), rounds=FSYNC_ROUNDS, iterations=1)
    assert resp == OK
    if not benchmark.disabled:
        path = bench_card_dir / "floor-state.json"
        data = (bench_card_dir / "state.json").read_bytes()

        def two_writes() -> None:
            atomic_write(path, data)
            atomic_write(path, data)

        ratio = interleaved_ratio(lambda: jpki.transmit(VERIFY_AUTH_RIGHT), two_writes, FSYNC_ROUNDS)
        benchmark.extra_info["ratio_to_floor_interleaved"] = round(ratio, 3)
    assert json.loads((bench_card_dir / "state.json").read_bytes())["keys"]["auth"]["tries_left"] == 3


@pytest.mark.benchmark(group="verify-right")
def test_floor_two_atomic_writes(benchmark, bench_card_dir: Path) -> None:
    """Two bare atomic writes of state.json's size: what a right VERIFY must do at least."""
    path = bench_card_dir / "floor-state.json"
    data = (bench_card_dir / "state.json").read_bytes()

    def two_writes() -> None:
        atomic_write(path, data)
        atomic_write(path, data)

    benchmark.pedantic(two_writes, rounds=FSYNC_ROUNDS, iterations=1)
    assert path.read_bytes() == data


@pytest.mark.benchmark(group="verify")
def test_verify_retry_query(benchmark, jpki) -> None:
    """Empty VERIFY: tries left, nothing spent."""
    assert jpki.transmit(sel("0018")) == OK
    assert benchmark(jpki.transmit, QUERY) == b"\x63\xc3"


@pytest.mark.benchmark(group="verify-wrong")
def test_verify_wrong(benchmark, jpki, bench_card_dir: Path) -> None:
    """A wrong PIN (one durable decrement); a right one before each round refills the counter.

    Only the wrong VERIFY is timed; the untimed right VERIFY writes the state too, so each
    timed write follows a write, as in the floor. fsync latency drifts with the machine's other
    I/O, so the ratio to the floor is also measured interleaved (one of each in turn) and kept in
    ``extra_info["ratio_to_floor_interleaved"]``, which the report prefers.
    """
    assert jpki.transmit(sel("0018")) == OK

    def refill() -> None:
        assert jpki.transmit(VERIFY_AUTH_RIGHT) == OK

    resp = benchmark.pedantic(jpki.transmit, (VERIFY_AUTH_WRONG,), setup=refill, rounds=FSYNC_ROUNDS, iterations=1)
    assert resp == b"\x63\xc2"
    if not benchmark.disabled:
        path = bench_card_dir / "floor-state.json"
        data = (bench_card_dir / "state.json").read_bytes()

        def wrong() -> None:
            refill()  # untimed in the ratio too: only the wrong VERIFY's own write is the op
            start = time.perf_counter_ns()
            jpki.transmit(VERIFY_AUTH_WRONG)
            wrong.elapsed.append(time.perf_counter_ns() - start)  # type: ignore[attr-defined]

        wrong.elapsed = []  # type: ignore[attr-defined]
        floors: list[int] = []

        def floor() -> None:
            atomic_write(path, data)  # after a write, as the op's write follows the refill's
            start = time.perf_counter_ns()
            atomic_write(path, data)
            floors.append(time.perf_counter_ns() - start)

        interleaved_ratio(wrong, floor, FSYNC_ROUNDS)
        ratio = statistics.median(floors) / statistics.median(wrong.elapsed)  # type: ignore[attr-defined]
        benchmark.extra_info["ratio_to_floor_interleaved"] = round(ratio, 3)
    assert jpki.tries_left("auth") == 2
    state = json.loads((bench_card_dir / "state.json").read_bytes())
    assert state["keys"]["auth"]["tries_left"] == 2, "the decrement is not in state.json"
    refill()
    assert jpki.tries_left("auth") == 3


@pytest.mark.benchmark(group="verify-wrong")
def test_floor_atomic_write(benchmark, bench_card_dir: Path) -> None:
    """A bare atomic write of state.json's size into the card's directory."""
    path = bench_card_dir / "floor-state.json"
    data = (bench_card_dir / "state.json").read_bytes()

    def prior_write() -> None:
        atomic_write(path, data)

    benchmark.pedantic(atomic_write, (path, data), setup=prior_write, rounds=FSYNC_ROUNDS, iterations=1)
    assert path.read_bytes() == data


# -- COMPUTE DIGITAL SIGNATURE ------------------------------------------------------------------
@pytest.mark.benchmark(group="sign")
def test_compute_signature(benchmark, jpki, auth_key) -> None:
    """80 2A 00 97 with a SHA-256 DigestInfo, after VERIFY of the auth PIN."""
    assert jpki.transmit(sel("0018")) == OK
    assert jpki.transmit(VERIFY_AUTH_RIGHT) == OK
    expected = auth_key.sign(DIGEST_INFO, PKCS1v15(), NoDigestInfo()) + OK
    assert jpki.transmit(SIGN_AUTH) == expected  # parses the key before timing
    assert benchmark(jpki.transmit, SIGN_AUTH) == expected


@pytest.mark.benchmark(group="sign")
def test_floor_rsa_sign(benchmark, auth_key) -> None:
    """Raw ``cryptography`` RSA-2048 PKCS#1 v1.5 signing with the same key and bytes."""
    sig = benchmark(auth_key.sign, DIGEST_INFO, PKCS1v15(), NoDigestInfo())
    auth_key.public_key().verify(sig, DIGEST_INFO, PKCS1v15(), NoDigestInfo())


# -- client flows -------------------------------------------------------------------------------
@pytest.mark.benchmark(group="flow")
def test_flow_myna_text_attrs(benchmark, bench_card) -> None:
    """``myna text attrs``: SEL text AP, SEL 0011, VERIFY, SEL 0002, RB(0,7), RB(7, rest)."""
    basic4 = bench_card.dir.content["text.basic4"]
    total = tlv_total(basic4[:7])
    apdus = [SELECT_TEXT, sel("0011"), bytes.fromhex("0020008004") + b"5678", sel("0002"), rb(0, 7)]
    expected = [OK, OK, OK, OK, basic4[:7] + OK]
    for off in range(7, total, 256):
        n = min(256, total - off)
        apdus.append(rb(off, n))
        expected.append(basic4[off : off + n] + OK)
    benchmark.extra_info["apdus"] = len(apdus)
    assert benchmark(run_all, bench_card, apdus) == expected


@pytest.mark.benchmark(group="flow")
def test_flow_pkcs15_dump(benchmark, bench_card) -> None:
    """OpenSC ``pkcs15-tool --dump``: bind (SEL JPKI, two retry queries), then four objects read."""
    apdus = [SELECT_JPKI, sel("0018"), QUERY, sel("001B"), QUERY]
    expected = [OK, OK, b"\x63\xc3", OK, b"\x63\xc5"]
    for fid, content_id in (
        ("000A", "jpki.auth_cert"),
        ("0001", None),
        ("000B", "jpki.auth_ca_cert"),
        ("0002", "jpki.sign_ca_cert"),
    ):
        apdus += [sel(fid), rb(0, 4)]
        if content_id is None:  # the signing certificate needs the signing password
            expected += [OK, b"\x69\x82"]
            continue
        obj = bench_card.dir.content[content_id]
        expected += [OK, obj[:4] + OK]
        total = int.from_bytes(obj[2:4], "big") + 4
        for off in range(0, total, 256):
            n = min(256, total - off)
            apdus.append(rb(off, n))
            expected.append(obj[off : off + n] + OK)
    benchmark.extra_info["apdus"] = len(apdus)
    assert benchmark(run_all, bench_card, apdus) == expected
