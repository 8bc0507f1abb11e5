"""Real PC/SC clients against ``mynaemu.Card`` in vpcd slot 0, through the real pcscd.

pyscard (``smartcard.scard``), OpenSC (``opensc-tool``, ``pkcs15-tool``, ``pkcs11-tool`` with
``opensc-pkcs11.so``), ``pcsc_scan`` and ``mynaemu serve`` as a subprocess. Every card is a fresh
copy of the session's issued card (auth PIN 1234, signing password ABC123), served by a
:class:`VirtualReaderSet` in this process, so the test reads the card's counters directly.
Waits use ``SCardGetStatusChange`` (``wait_for_card``) or a subprocess's output, never sleeps.

OpenSC runs with ``use_file_caching = no`` (an ``OPENSC_CONF`` written per test, the syntax of
Debian's ``/etc/opensc/opensc.conf`` for OpenSC 0.23) and HOME / XDG_CACHE_HOME in tmp: every run
reads the card, nothing comes from ``~/.cache/opensc``. (Debian's OpenSC 0.23 was not seen to
cache this card's files even with ``yes``; the setting guards versions that do.)
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from reader_bridge.pcscd import PcscError, find_vpcd_readers, pcsc_context, reader_name, wait_for_card
from reader_bridge.trace import ApduTrace
from tests.conftest import AID, SECRETS

pytestmark = pytest.mark.pcsc

REPO = Path(__file__).resolve().parents[2]
SLOT = 0
ATR = bytes.fromhex("3BE000FF8131FE4514")

SELECT_JPKI = bytes.fromhex("00A4040C0A" + AID["jpki"])
SELECT_AUTH_CERT = bytes.fromhex("00A4020C02000A")
SELECT_AUTH_PIN = bytes.fromhex("00A4020C020018")
SHA256_DIGESTINFO = bytes.fromhex("3031300D060960864801650304020105000420")
MESSAGE = b"mynaemu real-client test message\n"
OK = b"\x90\x00"


def verify_apdu(value: str) -> bytes:
    return bytes((0x00, 0x20, 0x00, 0x80, len(value))) + value.encode()


def sign_apdu(message: bytes, p2: int = 0x97) -> bytes:
    """COMPUTE DIGITAL SIGNATURE (CLA 80, P2 = 80|SFI) over DigestInfo(SHA-256(message)), Le 256."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(message)
    data = SHA256_DIGESTINFO + digest.finalize()
    return bytes((0x80, 0x2A, 0x00, p2, len(data))) + data + b"\x00"


def certificate(der_content: bytes) -> x509.Certificate:
    """The X.509 certificate at the start of an EF's content (the EF may be longer)."""
    length = int.from_bytes(der_content[2:4], "big") + 4
    assert der_content[:2] == b"\x30\x82"
    return x509.load_der_x509_certificate(der_content[:length])


def verify_signature(cert: x509.Certificate, signature: bytes, message: bytes) -> None:
    """sha256WithRSAEncryption (PKCS#1 v1.5); raises InvalidSignature."""
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


# -- a thin PC/SC connection (smartcard.scard) -----------------------------------------------------


class Scard:
    """One ``SCardConnect`` handle; raises :class:`PcscError` on any PC/SC failure."""

    def __init__(self, ctx: Any, reader: str) -> None:
        from smartcard import scard

        self.sc = scard
        self.ctx = ctx
        hresult, self.handle, self.protocol = scard.SCardConnect(
            ctx, reader, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        )
        if hresult != scard.SCARD_S_SUCCESS:
            raise PcscError("SCardConnect", hresult)
        self.open = True

    def transmit(self, apdu: bytes | str) -> bytes:
        """Response data + SW1 SW2."""
        command = bytes.fromhex(apdu) if isinstance(apdu, str) else apdu
        hresult, response = self.sc.SCardTransmit(self.handle, self.protocol, list(command))
        if hresult != self.sc.SCARD_S_SUCCESS:
            raise PcscError("SCardTransmit", hresult)
        return bytes(response)

    def reconnect(self, disposition: int) -> None:
        sc = self.sc
        hresult, self.protocol = sc.SCardReconnect(
            self.handle, sc.SCARD_SHARE_SHARED, sc.SCARD_PROTOCOL_T0 | sc.SCARD_PROTOCOL_T1, disposition
        )
        if hresult != sc.SCARD_S_SUCCESS:
            raise PcscError("SCardReconnect", hresult)

    def atr(self) -> bytes:
        hresult, _reader, _state, _protocol, atr = self.sc.SCardStatus(self.handle)
        if hresult != self.sc.SCARD_S_SUCCESS:
            raise PcscError("SCardStatus", hresult)
        return bytes(atr)

    def close(self, disposition: int | None = None) -> None:
        if self.open:
            self.open = False
            self.sc.SCardDisconnect(self.handle, self.sc.SCARD_LEAVE_CARD if disposition is None else disposition)


@pytest.fixture
def scard_connect() -> Iterator[Callable[[str], Scard]]:
    """Open :class:`Scard` connections by reader name; all are closed at teardown."""
    opened: list[Scard] = []
    with pcsc_context() as ctx:

        def _connect(reader: str) -> Scard:
            opened.append(Scard(ctx, reader))
            return opened[-1]

        yield _connect
        for conn in opened:
            with contextlib.suppress(Exception):
                conn.close()


# -- our card in slot 0 ------------------------------------------------------------------------------


@dataclass
class Served:
    """The card in the reader, its directory, the reader set and the APDU trace file."""

    card: Any
    card_dir: Path
    reader: str
    slots: Any
    trace_path: Path

    def records(self) -> list[dict[str, Any]]:
        """Every complete trace line so far (the link may be appending a power event)."""
        return [json.loads(line) for line in self.trace_path.read_text(encoding="utf-8").split("\n")[:-1]]

    def exchanges(self) -> list[dict[str, Any]]:
        """The trace's command/response records so far (events left out)."""
        return [r for r in self.records() if "cmd" in r]

    def mark(self) -> int:
        """Position in the trace, for :meth:`exchanges_since`."""
        return len(self.exchanges())

    def exchanges_since(self, mark: int) -> list[dict[str, Any]]:
        return self.exchanges()[mark:]


@pytest.fixture
def served(card_dir: Path, make_slots, tmp_path: Path) -> Iterator[Served]:
    """A fresh ``mynaemu.Card`` in "Virtual PCD 00 00", traced to ``tmp_path/trace.jsonl``."""
    from mynaemu import Card

    trace_path = tmp_path / "trace.jsonl"
    trace = ApduTrace(trace_path)
    slots = make_slots(trace=trace)
    card = Card.load(card_dir)
    name = slots.insert(SLOT, card)
    assert name == "Virtual PCD 00 00"
    yield Served(card, card_dir, name, slots, trace_path)
    slots.close()
    trace.close()


# -- subprocess output, line by line -----------------------------------------------------------------


class Lines:
    """Reads a subprocess's text stream in a thread; :meth:`expect` waits for a matching line."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\r\n"))
        self._queue.put(None)

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first line (from now on) matching ``pattern``; TimeoutError/EOFError otherwise."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line matching {pattern!r} within {timeout} s; seen: {self.seen[-20:]}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)
                raise EOFError(f"stream ended without {pattern!r}; seen: {self.seen[-20:]}")
            self.seen.append(line)
            if match := regex.search(line):
                return match

    def rest(self, timeout: float = 10.0) -> list[str]:
        """All remaining lines once the stream ends."""
        self._thread.join(timeout)
        out: list[str] = []
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)
                break
            out.append(line)
        self.seen += out
        return out


@contextlib.contextmanager
def running(args: list[str], **kwargs: Any) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """Start ``args`` with stdout (and stderr) piped to a :class:`Lines`; killed if still alive at exit."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    assert proc.stdout is not None
    try:
        yield proc, Lines(proc.stdout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()


# == 1. pyscard =======================================================================================


def test_pyscard_reads_the_auth_certificate(served: Served, scard_connect) -> None:
    expected = served.card.dir.content["jpki.auth_cert"]
    conn = scard_connect(served.reader)
    assert conn.atr() == ATR
    assert conn.transmit(SELECT_JPKI) == OK
    assert conn.transmit(SELECT_AUTH_CERT) == OK
    header = conn.transmit("00B0000004")
    assert header[-2:] == OK and header[:2] == b"\x30\x82"
    size = int.from_bytes(header[2:4], "big") + 4
    assert size <= len(expected)

    # Short READ BINARY in 256-byte chunks, as OpenSC and most clients read.
    data = b""
    while len(data) < size:
        le = min(256, size - len(data))
        rsp = conn.transmit(bytes((0x00, 0xB0, len(data) >> 8, len(data) & 0xFF, le & 0xFF)))
        assert rsp[-2:] == OK, f"READ BINARY at {len(data)}: {rsp[-2:].hex()}"
        data += rsp[:-2]
    assert data == expected[:size]

    # One extended READ BINARY (Le 65536: the whole EF, the profile's 2048 bytes with 00 filler
    # after the certificate), as pyscard scripts do on a real card.
    rsp = conn.transmit("00B00000000000")
    assert rsp[-2:] == OK
    ef = rsp[:-2]
    assert len(ef) == 2048
    assert ef[: len(expected)] == expected
    assert ef[len(expected) :] == bytes(2048 - len(expected))
    certificate(ef)  # parses as X.509


def test_reconnect_leave_keeps_and_reset_clears_security_status(served: Served, scard_connect) -> None:
    """Spec D6: a PC/SC reconnect without reset keeps the verified PIN; a reset clears it."""
    from smartcard import scard

    auth_cert = certificate(served.card.dir.content["jpki.auth_cert"])
    conn = scard_connect(served.reader)
    assert conn.transmit(SELECT_JPKI) == OK
    assert conn.transmit(sign_apdu(MESSAGE)) == b"\x69\x82"  # not verified yet
    assert conn.transmit(SELECT_AUTH_PIN) == OK
    assert conn.transmit(verify_apdu(SECRETS["auth"])) == OK

    conn.reconnect(scard.SCARD_LEAVE_CARD)
    assert served.card.current_ap == "jpki"
    rsp = conn.transmit(sign_apdu(MESSAGE))
    assert rsp[-2:] == OK and len(rsp) == 258
    verify_signature(auth_cert, rsp[:-2], MESSAGE)

    conn.reconnect(scard.SCARD_RESET_CARD)
    assert served.card.current_ap is None  # the card saw the reset: power-on state
    assert conn.atr() == ATR
    assert conn.transmit(SELECT_JPKI) == OK
    assert conn.transmit(sign_apdu(MESSAGE)) == b"\x69\x82"
    assert "reset" in [r.get("event") for r in served.records()]


def test_wrong_pin_through_pyscard_costs_exactly_one_try(served: Served, scard_connect) -> None:
    from mynaemu import Card

    card = served.card
    assert card.tries_left("auth") == 3
    conn = scard_connect(served.reader)
    assert conn.transmit(SELECT_JPKI) == OK
    assert conn.transmit(SELECT_AUTH_PIN) == OK
    assert conn.transmit("00200080") == b"\x63\xc3"  # the retry query costs nothing
    assert conn.transmit(verify_apdu("9999")) == b"\x63\xc2"
    assert card.tries_left("auth") == 2
    assert Card.load(served.card_dir, read_only=True).tries_left("auth") == 2  # durable before the answer
    assert conn.transmit("00200080") == b"\x63\xc2"
    assert card.tries_left("auth") == 2
    assert card.tries_left("sign") == 5


# == 2. OpenSC ========================================================================================

OPENSC_TOOLS = ("opensc-tool", "pkcs15-tool", "pkcs11-tool")
OPENSC_CONF = """\
# Written by tests/bridge/test_real_clients.py: read the card on every run.
app default {
\tframework pkcs15 {
\t\tuse_file_caching = no;
\t}
}
"""
PKCS11_MODULE_GLOBS = (
    "/usr/lib/*/opensc-pkcs11.so",
    "/usr/lib/*/pkcs11/opensc-pkcs11.so",
    "/usr/lib/opensc-pkcs11.so",
    "/usr/lib64/opensc-pkcs11.so",
    "/usr/local/lib/opensc-pkcs11.so",
)
AUTH_TOKEN = "JPKI (User Authentication PIN)"
SIGN_TOKEN = "JPKI (Digital Signature PIN)"


def pkcs11_module() -> str | None:
    for pattern in PKCS11_MODULE_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def opensc_unavailable_reason() -> str | None:
    missing = [tool for tool in OPENSC_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"OpenSC tools not found: {', '.join(missing)} (apt-get install opensc)"
    if pkcs11_module() is None:
        return "opensc-pkcs11.so not found under /usr/lib (apt-get install opensc-pkcs11)"
    return None


@dataclass
class OpenSC:
    """Runs OpenSC's tools with a private configuration, HOME and cache directory."""

    env: dict[str, str]
    home: Path
    module: str
    workdir: Path

    def run(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args),
            env=self.env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def reader_index(self, name: str) -> str:
        """Index of ``name`` in ``opensc-tool -l`` (OpenSC's reader numbering)."""
        out = self.run("opensc-tool", "-l").stdout
        if m := re.search(rf"^(\d+)\s+(?:Yes|No)\s.*?{re.escape(name)}$", out, re.M):
            return m.group(1)
        raise AssertionError(f"reader {name!r} not in opensc-tool -l:\n{out}")

    def p11(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("pkcs11-tool", "--module", self.module, *args, check=check)

    def p11_slots(self, reader: str) -> dict[str, tuple[str, str]]:
        """Token label → (slot id, token flags) of the PKCS#11 slots on ``reader``."""
        out = self.p11("--list-slots").stdout
        slots: dict[str, tuple[str, str]] = {}
        slot_id = slot_reader = label = None
        for line in out.splitlines():
            if m := re.match(r"^Slot \d+ \((0x[0-9a-fA-F]+)\): (.+)$", line):
                slot_id, slot_reader, label = m.group(1), m.group(2).strip(), None
            elif m := re.match(r"^\s+token label\s+: (.+)$", line):
                label = m.group(1).strip()
            elif (m := re.match(r"^\s+token flags\s+: (.+)$", line)) and slot_reader == reader and label:
                assert slot_id is not None
                slots[label] = (slot_id, m.group(1).strip())
        return slots


@pytest.fixture
def opensc(tmp_path: Path) -> OpenSC:
    reason = opensc_unavailable_reason()
    if reason is not None:
        if os.environ.get("MYNAEMU_REQUIRE_PCSC") == "1":
            pytest.fail(f"MYNAEMU_REQUIRE_PCSC=1 but {reason}")
        pytest.skip(reason)
    home = tmp_path / "home"
    cache = home / ".cache"
    cache.mkdir(parents=True)
    conf = tmp_path / "opensc.conf"
    conf.write_text(OPENSC_CONF, encoding="utf-8")
    env = dict(os.environ, OPENSC_CONF=str(conf), HOME=str(home), XDG_CACHE_HOME=str(cache))
    env.pop("OPENSC_DEBUG", None)
    module = pkcs11_module()
    assert module is not None
    return OpenSC(env, home, module, tmp_path)


def assert_nothing_cached(opensc: OpenSC) -> None:
    cached = [p for p in opensc.home.rglob("*") if p.is_file()]
    assert cached == [], f"OpenSC cached files although use_file_caching = no: {cached}"


def verified_on(exchanges: list[dict[str, Any]], ef: str) -> int:
    """How many VERIFYs with data were sent while EF ``ef`` (hex) was selected."""
    current, count = None, 0
    for r in exchanges:
        cmd = r["cmd"]
        if cmd.startswith("00A4020C02"):
            current = cmd[10:14]
        elif cmd.startswith("00A404"):
            current = None
        elif cmd.startswith("00200080") and len(cmd) > 8 and current == ef.upper():
            count += 1
    return count


@pytest.mark.opensc
def test_opensc_tool_names_the_card_jpki(opensc: OpenSC, served: Served) -> None:
    index = opensc.reader_index(served.reader)
    assert opensc.run("opensc-tool", "-r", index, "-n").stdout.strip().splitlines()[-1] == "jpki"
    atr = opensc.run("opensc-tool", "-r", index, "-a").stdout.strip().splitlines()[-1]
    assert bytes.fromhex(atr.replace(":", "")) == ATR
    # OpenSC's other drivers probe with their own SELECTs first: all refused, never 9000.
    for r in served.exchanges():
        if r["cmd"].startswith("00A404") and r["cmd"][10:] != AID["jpki"]:
            assert r["sw"] == "6A82", r


@pytest.mark.opensc
def test_pkcs15_dump_lists_pins_and_certificates(opensc: OpenSC, served: Served) -> None:
    out = opensc.run("pkcs15-tool", "--reader", opensc.reader_index(served.reader), "--dump").stdout
    assert "PKCS#15 Card [JPKI]" in out
    pins = re.findall(r"^PIN \[(.+)\]$", out, re.M)
    assert pins == ["User Authentication PIN", "Digital Signature PIN"]
    assert re.findall(r"Tries left\s+: (\d+)", out) == ["3", "5"]
    certs = dict(re.findall(r"^X\.509 Certificate \[(.+)\]\n(?:\t.*\n)*?\tPath\s+: (\w+)$", out, re.M))
    assert certs == {
        "User Authentication Certificate": "000a",
        "Digital Signature Certificate": "0001",
        "User Authentication Certificate CA": "000b",
        "Digital Signature Certificate CA": "0002",
    }
    assert served.card.tries_left("auth") == 3 and served.card.tries_left("sign") == 5  # queries are free
    assert_nothing_cached(opensc)


@pytest.mark.opensc
def test_pkcs15_read_certificate_01_is_the_auth_certificate(opensc: OpenSC, served: Served) -> None:
    index = opensc.reader_index(served.reader)
    pem = opensc.run("pkcs15-tool", "--reader", index, "--read-certificate", "01").stdout
    start = pem.index("-----BEGIN CERTIFICATE-----")
    cert = x509.load_pem_x509_certificate(pem[start:].encode())
    from cryptography.hazmat.primitives.serialization import Encoding

    der = cert.public_bytes(Encoding.DER)
    assert der == certificate(served.card.dir.content["jpki.auth_cert"]).public_bytes(Encoding.DER)
    assert der == served.card.dir.content["jpki.auth_cert"][: len(der)]
    # Read from the card, not from a cache: the certificate EF was read in this run.
    assert any(r["cmd"] == "00A4020C02000A" for r in served.exchanges())
    assert_nothing_cached(opensc)


@pytest.mark.opensc
def test_pkcs11_tool_signs_with_the_auth_key(opensc: OpenSC, served: Served, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(MESSAGE)
    slot_id, _ = opensc.p11_slots(served.reader)[AUTH_TOKEN]
    opensc.p11(
        "--slot", slot_id, "--login", "--pin", SECRETS["auth"], "--sign", "--id", "01",
        "-m", "SHA256-RSA-PKCS", "-i", "in", "-o", "sig",
    )  # fmt: skip
    signature = (tmp_path / "sig").read_bytes()
    assert len(signature) == 256
    verify_signature(certificate(served.card.dir.content["jpki.auth_cert"]), signature, MESSAGE)
    assert served.card.tries_left("auth") == 3


@pytest.mark.opensc
def test_pkcs11_tool_signs_with_the_signing_key(opensc: OpenSC, served: Served, tmp_path: Path) -> None:
    """The signing key has user_consent (CKA_ALWAYS_AUTHENTICATE): pkcs11-tool logs in to the
    "Digital Signature PIN" slot, then reuses ``--pin`` for the context-specific login."""
    (tmp_path / "in").write_bytes(MESSAGE)
    slots = opensc.p11_slots(served.reader)
    assert set(slots) == {AUTH_TOKEN, SIGN_TOKEN}  # OpenSC: one virtual slot per PIN
    mark = served.mark()
    opensc.p11(
        "--slot", slots[SIGN_TOKEN][0], "--login", "--pin", SECRETS["sign"], "--sign", "--id", "02",
        "-m", "SHA256-RSA-PKCS", "-i", "in", "-o", "sig",
    )  # fmt: skip
    signature = (tmp_path / "sig").read_bytes()
    verify_signature(certificate(served.card.dir.content["jpki.sign_cert"]), signature, MESSAGE)
    run = served.exchanges_since(mark)
    assert verified_on(run, "001B") == 2  # C_Login + context-specific login
    assert verified_on(run, "0018") == 0
    signs = [r for r in run if r["cmd"].startswith("802A0080")]
    assert len(signs) == 1 and signs[0]["sw"] == "9000"
    assert served.card.tries_left("sign") == 5


@pytest.mark.opensc
def test_pkcs11_tool_wrong_pin_costs_one_try_and_locks(opensc: OpenSC, served: Served, scard_connect, tmp_path) -> None:
    """Each wrong C_Login costs exactly one try; the third blocks the PIN.

    OpenSC 0.23 maps the card's blocked-key answer 6984 (docs/card-interface.md, D5) to
    SC_ERROR_REF_DATA_NOT_USABLE, which its PKCS#11 layer returns as CKR_GENERAL_ERROR (only
    6983 becomes CKR_PIN_LOCKED). The lock is reported through the token flags instead:
    CKF_USER_PIN_LOCKED ("user PIN locked"), from the retry query answering 63C0.
    """
    (tmp_path / "in").write_bytes(MESSAGE)
    card = served.card
    slot_id, flags = opensc.p11_slots(served.reader)[AUTH_TOKEN]
    assert "locked" not in flags
    login = ("--slot", slot_id, "--login", "--sign", "--id", "01", "-m", "SHA256-RSA-PKCS", "-i", "in", "-o", "sig")
    for expected_left in (2, 1, 0):
        before = card.tries_left("auth")
        proc = opensc.p11(*login, "--pin", "9999", check=False)
        assert proc.returncode != 0
        assert "CKR_PIN_INCORRECT" in proc.stderr + proc.stdout
        assert card.tries_left("auth") == before - 1 == expected_left
        assert not (tmp_path / "sig").exists()

    _, flags = opensc.p11_slots(served.reader)[AUTH_TOKEN]
    assert "user PIN locked" in flags
    assert card.tries_left("auth") == 0  # listing (retry queries) costs nothing

    mark = served.mark()
    proc = opensc.p11(*login, "--pin", SECRETS["auth"], check=False)
    assert proc.returncode != 0
    assert re.search(r"C_Login failed: rv = (CKR_PIN_LOCKED|CKR_GENERAL_ERROR)", proc.stderr + proc.stdout), proc.stderr
    assert not (tmp_path / "sig").exists()
    verifies = [r for r in served.exchanges_since(mark) if r["cmd"].startswith("0020008004")]
    assert [r["sw"] for r in verifies] == ["6984"]  # the right PIN on a blocked key
    assert card.tries_left("auth") == 0

    conn = scard_connect(served.reader)
    assert conn.transmit(SELECT_JPKI) == OK
    assert conn.transmit(SELECT_AUTH_PIN) == OK
    assert conn.transmit(verify_apdu(SECRETS["auth"])) == b"\x69\x84"
    assert conn.transmit("00200080") == b"\x63\xc0"
    assert card.tries_left("sign") == 5


# == 3. Insertion and removal ======================================================================


def test_remove_and_insert_are_seen_by_pcsc(served: Served, scard_connect) -> None:
    reader = served.reader
    conn = scard_connect(reader)
    assert conn.transmit(SELECT_JPKI) == OK
    assert conn.transmit(SELECT_AUTH_PIN) == OK
    assert conn.transmit(verify_apdu(SECRETS["auth"])) == OK
    conn.close()

    card = served.slots.readers.remove(SLOT)
    assert card is served.card
    assert wait_for_card(reader, present=False, timeout=10) == b""
    served.slots.readers.insert(SLOT, card)
    assert wait_for_card(reader, present=True, timeout=10) == ATR

    # A reinserted card starts from power-on: neither the AP nor the verified PIN survived.
    conn = scard_connect(reader)
    assert served.card.current_ap is None
    assert conn.transmit(sign_apdu(MESSAGE)) != OK
    assert conn.transmit(SELECT_JPKI) == OK
    assert conn.transmit(sign_apdu(MESSAGE)) == b"\x69\x82"


def test_pcsc_scan_sees_removal_and_insertion(served: Served) -> None:
    if shutil.which("pcsc_scan") is None:
        pytest.skip("pcsc_scan not found (apt-get install pcsc-tools)")
    reader = served.reader

    def state_of(lines: Lines, pattern: str) -> None:
        """Wait for a "Reader N: <reader>" block whose card state matches ``pattern``."""
        while True:
            lines.expect(rf"^\s*Reader \d+: {re.escape(reader)}$")
            state = lines.expect(r"^\s*Card state: (.*)$").group(1)
            if re.search(pattern, state):
                return

    with running(["pcsc_scan", "-n"]) as (_proc, lines):
        state_of(lines, "Card inserted")  # the initial scan: our card is there
        served.slots.readers.remove(SLOT)
        state_of(lines, "Card removed")
        served.slots.readers.insert(SLOT, served.card)
        state_of(lines, "Card inserted")
        lines.expect(r"ATR: 3B E0 00 FF 81 31 FE 45 14")
    wait_for_card(reader, present=True, timeout=10)


# == 4. mynaemu serve ==============================================================================


def serve_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "mynaemu", "serve", *args]


def serve_env(data_dir: Path) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return dict(
        os.environ,
        MYNAEMU_DATA_DIR=str(data_dir),
        PYTHONPATH=str(REPO) if not path else f"{REPO}{os.pathsep}{path}",
        PYTHONUNBUFFERED="1",
    )


def stop(proc: subprocess.Popen[str], lines: Lines) -> list[str]:
    """SIGTERM ``proc``; returns its remaining output lines after asserting exit code 0."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, lines.seen + lines.rest()
    return lines.rest()


def test_mynaemu_serve_end_to_end(pcscd, card_dir: Path, tmp_path: Path, _data_dir: Path, scard_connect) -> None:
    from mynaemu import Card

    trace = tmp_path / "serve-trace.jsonl"
    name = reader_name(SLOT, find_vpcd_readers())
    wait_for_card(name, present=False, timeout=10)
    args = serve_args(str(card_dir), "--slot", str(SLOT), "--trace", str(trace), "--no-start-pcscd")
    with running(args, env=serve_env(_data_dir), cwd=tmp_path) as (proc, lines):
        m = lines.expect(r"^Serving card (\S+) in reader '(.+)'\.")
        assert m.group(1) == Card.load(card_dir, read_only=True).dir.card_id
        assert m.group(2) == name
        assert wait_for_card(name, present=True, timeout=10) == ATR

        conn = scard_connect(name)
        assert conn.transmit(SELECT_JPKI) == OK
        assert conn.transmit(SELECT_AUTH_PIN) == OK
        assert conn.transmit(verify_apdu(SECRETS["auth"])) == OK
        assert conn.transmit(SELECT_AUTH_CERT) == OK
        assert conn.transmit("00B0000004")[:2] == b"\x30\x82"
        assert conn.transmit(SELECT_AUTH_PIN) == OK
        assert conn.transmit(verify_apdu("9999")) == b"\x63\xc2"
        conn.close()

        rest = stop(proc, lines)
    assert any("state is saved" in line for line in rest), rest
    assert wait_for_card(name, present=False, timeout=10) == b""

    text = trace.read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines()]
    commands = [r["cmd"] for r in records if "cmd" in r]
    assert "00A4040C0A" + AID["jpki"] in commands
    assert commands.count("0020008004********") == 2
    assert "31323334" not in text and "39393939" not in text
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 2


def test_mynaemu_serve_issues_the_demo_card_once(pcscd, issued_template, _data_dir: Path, tmp_path: Path, scard_connect) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    authority = _data_dir / "authority"
    if authority.is_dir():  # reuse the session's emulated CAs: only the card's keys are generated
        shutil.copytree(authority, data_dir / "authority")
    name = reader_name(SLOT, find_vpcd_readers())
    wait_for_card(name, present=False, timeout=10)
    card_ids = []
    for run in (1, 2):
        with running(serve_args("--no-start-pcscd"), env=serve_env(data_dir), cwd=tmp_path) as (proc, lines):
            card_ids.append(lines.expect(r"^Serving card (\S+) in reader", timeout=60).group(1))
            issued = [line for line in lines.seen if line.startswith("Issued the demo card")]
            assert len(issued) == (1 if run == 1 else 0), lines.seen
            assert wait_for_card(name, present=True, timeout=10) == ATR
            conn = scard_connect(name)
            assert conn.transmit(SELECT_JPKI) == OK
            conn.close()
            stop(proc, lines)
        wait_for_card(name, present=False, timeout=10)
    assert card_ids[0] == card_ids[1]
    assert (data_dir / "demo-card" / "card.json").exists()


def _readme_opensc_commands() -> list[str]:
    """The OpenSC example block of README.md, as shell commands (continuation lines joined)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("OpenSC (driver `jpki`", 1)[1].split("\n\n", 2)[1]
    joined = block.replace("\\\n", " ")
    return [line.split("#", 1)[0].strip() for line in joined.splitlines() if line.strip()]


def test_readme_opensc_examples_run_verbatim_on_the_demo_card(pcscd, opensc: OpenSC, _data_dir: Path,
                                                               tmp_path: Path) -> None:
    """The README's OpenSC commands, pasted as they are, against `mynaemu serve`'s demo card: no try burnt."""
    commands = _readme_opensc_commands()
    assert [c.split()[0] for c in commands] == ["opensc-tool", "pkcs15-tool", "pkcs15-tool", "pkcs11-tool"]
    data_dir = tmp_path / "mynaemu-data"
    data_dir.mkdir(mode=0o700)
    if (_data_dir / "authority").is_dir():
        shutil.copytree(_data_dir / "authority", data_dir / "authority")
    name = reader_name(SLOT, find_vpcd_readers())
    wait_for_card(name, present=False, timeout=10)
    (opensc.workdir / "data").write_bytes(b"the document the README signs")
    with running(serve_args("--no-start-pcscd"), env=serve_env(data_dir), cwd=tmp_path) as (proc, lines):
        lines.expect(r"^Serving card (\S+) in reader", timeout=60)
        wait_for_card(name, present=True, timeout=10)
        outputs = []
        for command in commands:
            res = subprocess.run(command, shell=True, env=opensc.env, cwd=opensc.workdir, capture_output=True,
                                 text=True, timeout=60, stdin=subprocess.DEVNULL)
            assert res.returncode == 0, f"{command}\n{res.stdout}\n{res.stderr}"
            outputs.append(res.stdout)
        stop(proc, lines)
    assert "jpki" in outputs[0]
    assert "-----BEGIN CERTIFICATE-----" in outputs[2]
    assert len((opensc.workdir / "sig").read_bytes()) == 256
    from mynaemu import Card

    with Card.load(data_dir / "demo-card", read_only=True) as demo:
        assert demo.tries_left("auth") == 3  # the README's PIN is the demo card's: nothing was spent
