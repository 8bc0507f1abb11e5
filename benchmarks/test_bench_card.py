"""In-process benchmarks of ``Card.transmit``, each timed interleaved with its floor.

    MYNAEMU_BENCH_TIMED=1 python -m pytest benchmarks/test_bench_card.py   # timed (benchmarks/interleave.py)
    benchmarks/report                                                     # the table with targets

Every benchmark asserts the exact response, so it fails rather than rots. The floors say what
the same work costs with nothing of the emulator around it: a minimal dict dispatch over the
same bytes (SELECT EF, READ BINARY), a successful SELECT (for a refused one), raw
``cryptography`` signing with the same key, a replay from a dict (for whole client flows) and a
bare atomic write of a state-sized file (VERIFY, still on pytest-benchmark with an interleaved
ratio of its own in ``extra_info``). Operation and floor run in the same loop, round by round.
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
from interleave import bind, interleave, paired_medians

from mynaemu.testing import TEST_SECRETS
from mynaemu.transcript import TRANSCRIPT_DIR, card_variables, expand, load_transcript, transcript_files

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
# Another driver's AID that OpenSC probes first (PIV), refused with 6A82.
SELECT_PIV = bytes.fromhex("00A4040009A0000003080000100000")
FLOWS = Path(__file__).resolve().parent / "flows"


def recorded_flows() -> list[str]:
    return sorted(p.stem for p in FLOWS.glob("*.json"))


def load_flow(name: str) -> list[bytes]:
    """A recorded flow's command APDUs, the ``{auth_pin}`` placeholder filled in."""
    doc = json.loads((FLOWS / f"{name}.json").read_text())
    pin = TEST_SECRETS["auth"].encode().hex()
    return [bytes.fromhex(a.replace("{auth_pin}", pin)) for a in doc["apdus"]]


def myna_transcripts() -> list[str]:
    return [p.name.removesuffix(".txt") for p in transcript_files() if p.name.startswith("myna-")]


def transcript_apdus(card, name: str) -> list[bytes]:
    """The APDUs of transcript ``name`` against ``card`` (its variables, the test PINs)."""
    transcript = load_transcript(TRANSCRIPT_DIR / f"{name}.txt")
    return [apdu for _line, apdu, _expected in expand(transcript, card_variables(card, TEST_SECRETS))]


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


# -- SELECT and READ BINARY, interleaved with their floors ---------------------------------------
def test_select_ef_vs_dict_floor(jpki) -> None:
    """SELECT EF 000A in the JPKI AP against a dict dispatch on the same bytes (target >= 0.5)."""
    efs = {fid.to_bytes(2, "big"): ef for fid, ef in jpki.applications["jpki"].efs.items()}
    floor = make_floor_select_ef({(0x00, 0xA4): efs})
    assert jpki.transmit(SELECT_000A) == OK and floor(SELECT_000A) == OK
    interleave("SELECT EF 000A", bind(jpki.transmit, SELECT_000A), bind(floor, SELECT_000A), floor_name="dict SELECT")
    assert jpki.session.ef.fid == 0x000A


def test_read_binary_256_vs_slice_floor(jpki) -> None:
    """READ BINARY 256 of EF 000A against a dict lookup and one slice (target >= 0.6)."""
    assert jpki.transmit(SELECT_000A) == OK
    body = ef_body(jpki, "jpki.auth_cert", 2048, 0)
    floor = make_floor_read_binary({(0x00, 0xB0): body})
    assert jpki.transmit(READ_256) == floor(READ_256) == body[:256] + OK
    interleave("READ BINARY 256", bind(jpki.transmit, READ_256), bind(floor, READ_256), floor_name="dict + slice")


def test_read_cert_extended_vs_slice_floor(jpki) -> None:
    """The whole certificate in one READ BINARY with extended Le = its exact length."""
    assert jpki.transmit(SELECT_000A) == OK
    cert = jpki.dir.content["jpki.auth_cert"]
    floor = make_floor_read_binary({(0x00, 0xB0): ef_body(jpki, "jpki.auth_cert", 2048, 0)})
    apdu = rb(0, len(cert), ext=True)
    assert jpki.transmit(apdu) == floor(apdu) == cert + OK
    interleave("READ BINARY cert (ext Le)", bind(jpki.transmit, apdu), bind(floor, apdu), floor_name="dict + slice")


def test_refused_select_aid_vs_successful(bench_card) -> None:
    """A SELECT of another driver's AID (refused 6A82) against a SELECT of the JPKI AP.

    OpenSC's ``pkcs15-tool --dump`` sends ~30 such probes before it finds the JPKI driver; the
    target is a refusal costing at most 1.2x a successful SELECT (ratio >= 1/1.2).
    """
    assert bench_card.transmit(SELECT_PIV) == b"\x6a\x82"
    assert bench_card.transmit(SELECT_JPKI) == OK
    interleave(
        "refused SELECT by AID",
        bind(bench_card.transmit, SELECT_PIV),
        bind(bench_card.transmit, SELECT_JPKI),
        floor_name="successful SELECT by AID",
    )
    assert bench_card.transmit(SELECT_PIV) == b"\x6a\x82"


# -- VERIFY -------------------------------------------------------------------------------------
def interleaved_ratio(op, floor, rounds: int) -> float:
    """Median floor time / median operation time, the two timed in turn in one loop."""
    op_s, floor_s = paired_medians(op, floor, rounds)
    return floor_s / op_s


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
def test_sign_vs_cryptography(jpki, auth_key) -> None:
    """80 2A 00 97 with a SHA-256 DigestInfo (after VERIFY) against raw ``cryptography`` signing."""
    assert jpki.transmit(sel("0018")) == OK
    assert jpki.transmit(VERIFY_AUTH_RIGHT) == OK
    expected = auth_key.sign(DIGEST_INFO, PKCS1v15(), NoDigestInfo()) + OK
    assert jpki.transmit(SIGN_AUTH) == expected  # parses the key before timing
    interleave(
        "SIGN auth RSA-2048",
        bind(jpki.transmit, SIGN_AUTH),
        bind(auth_key.sign, DIGEST_INFO, PKCS1v15(), NoDigestInfo()),
        floor_name="cryptography sign",
    )
    assert jpki.transmit(SIGN_AUTH) == expected


# -- client flows against replay floors ------------------------------------------------------------
class ReplayCard:
    """The least a card answering this flow can be: ``transmit`` is one dict lookup, by position.

    Called exactly like the card (``power_on``, then ``transmit`` per APDU, in ``run_flow``), so
    both sides pay the same loop and call overhead.
    """

    def __init__(self, apdus: list[bytes], responses: list[bytes]) -> None:
        self.tables = [{a: r} for a, r in zip(apdus, responses, strict=True)]
        self.pos = 0

    def power_on(self) -> None:
        self.pos = 0

    def transmit(self, apdu: bytes) -> bytes:
        pos = self.pos
        self.pos = pos + 1
        return self.tables[pos][apdu]


def run_flow(card, apdus: list[bytes]) -> list[bytes]:
    """A client flow from a fresh connection: power on, then every APDU in turn."""
    card.power_on()
    transmit = card.transmit
    return [transmit(a) for a in apdus]


def bench_flow(name: str, card, apdus: list[bytes]) -> None:
    """Time the flow on ``card`` against its replay floor; the card's answers must stay the same."""
    responses = run_flow(card, apdus)
    replay = ReplayCard(apdus, responses)
    assert run_flow(replay, apdus) == responses
    interleave(
        f"flow: {name}",
        bind(run_flow, card, apdus),
        bind(run_flow, replay, apdus),
        floor_name="replay from a dict",
        apdus=len(apdus),
    )
    assert run_flow(card, apdus) == responses


@pytest.mark.parametrize("flow", recorded_flows())
def test_flow_recorded_opensc(bench_card, flow: str) -> None:
    """A real OpenSC tool's APDUs (recorded by benchmarks/flows/record.py), other drivers' probes included."""
    apdus = load_flow(flow)
    bench_flow(flow, bench_card, apdus)
    if flow == "opensc-pkcs15-dump":  # the certificates are read, not refused
        assert run_flow(bench_card, apdus)[apdus.index(SELECT_JPKI)] == OK


@pytest.mark.parametrize("name", myna_transcripts())
def test_flow_myna_transcript(bench_card, name: str) -> None:
    """A ``myna`` CLI flow of apdu_specs/transcripts/ (VERIFYs write the state: fsync-bound)."""
    bench_flow(name, bench_card, transcript_apdus(bench_card, name))
