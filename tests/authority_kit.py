"""Test helpers for the emulated authority: a running service, openssl, signatures as the card makes them."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mynaemu import Card

SHA256_DIGEST_INFO = bytes.fromhex("3031300D060960864801650304020105000420")
SELECT_JPKI = "00A4040C0AD392F000260100000001"


@contextlib.contextmanager
def running_authority(authority_dir: Path, *, port: int = 0, **options) -> Iterator[str]:
    """``authority serve``'s app on uvicorn in a thread, on a free loopback port; yields the base URL.

    The socket listens before the server starts, so a client connecting at once is queued, not
    refused: nothing needs to wait for the server to come up.
    """
    import uvicorn

    from mynaemu.authority.service import create_app, loopback_socket

    sock = loopback_socket("127.0.0.1", port)
    server = uvicorn.Server(uvicorn.Config(create_app(authority_dir, **options), log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def card_certificate(card_dir: Path, which: str) -> x509.Certificate:
    from mynaemu.authority.lifecycle import card_certificates

    return card_certificates(card_dir)[which]


def write_pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def openssl(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def card_signature(card_dir: Path, message: bytes, key: str = "sign", pin: str | None = None) -> bytes:
    """COMPUTE DIGITAL SIGNATURE over DigestInfo(SHA-256(message)), through the card's APDUs."""
    from tests.conftest import SECRETS

    card = Card.load(card_dir)
    try:
        card.power_on()
        assert card.transmit(bytes.fromhex(SELECT_JPKI)) == b"\x90\x00"
        pin_ef, key_ef = ("001B", "001A") if key == "sign" else ("0018", "0017")
        value = (pin or SECRETS[key]).encode()
        assert card.transmit(bytes.fromhex(f"00A4020C02{pin_ef}")) == b"\x90\x00"
        assert card.transmit(bytes((0, 0x20, 0, 0x80, len(value))) + value) == b"\x90\x00"
        assert card.transmit(bytes.fromhex(f"00A4020C02{key_ef}")) == b"\x90\x00"
        data = SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
        response = card.transmit(bytes((0x80, 0x2A, 0x00, 0x80, len(data))) + data + b"\x00")
        assert response[-2:] == b"\x90\x00", response.hex()
        return response[:-2]
    finally:
        card.close()
