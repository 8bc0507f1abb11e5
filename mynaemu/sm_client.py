"""The client's side of the text AP's secure messaging: open a session, then talk through it.

    from mynaemu.sm_client import SecureMessagingClient
    client = SecureMessagingClient(card.transmit)            # any transmit(bytes) -> bytes
    # (text AP selected and its PIN verified in clear first)
    client.open()                                             # reads EF 0006, sends SET SESSION KEY
    client.transmit(bytes.fromhex("00A4020C020001"))          # -> b"\\x90\\x00", sent as CLA 08
    client.transmit(bytes.fromhex("00B0000011"))              # -> the My Number + 9000, decrypted

The commands are written as plain CLA 00 APDUs; the client encrypts their data into an ``86``
object, turns their Le into a ``96`` object, counts commands, and decrypts the answers
(docs/card-interface.md §7; the card's side is ``mynaemu.sm``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .apdu import build_command, parse_fields
from .pki import decode_rsa_public_key
from .sm import TAG_LE, SmCipher, SmError
from .tlv import TlvError, parse_tlv, tlv

SELECT_EF_0006 = bytes.fromhex("00A4020C020006")
OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class SecureMessagingError(RuntimeError):
    """The session could not be opened, or an answer could not be decrypted."""


def session_key_delivery_key(ef_0006: bytes) -> rsa.RSAPublicKey:
    """The RSA key of text-AP EF 0006 (``A1 L 90 <e> 91 <n>``, filler after it)."""
    try:
        outer = parse_tlv(ef_0006)
        if outer.tag != 0xA1:
            raise TlvError("EF 0006 must start with A1")
        return decode_rsa_public_key(outer.value)
    except (TlvError, ValueError) as exc:
        raise SecureMessagingError(f"EF 0006 holds no session-key delivery key: {exc}") from None


class SecureMessagingClient:
    """A secure-messaging session with the text AP, over ``transmit``."""

    def __init__(self, transmit: Callable[[bytes], bytes], *, seed: bytes | None = None) -> None:
        self._transmit = transmit
        self.seed = seed if seed is not None else os.urandom(32)
        if len(self.seed) != 32:
            raise ValueError("the seed is 32 bytes")
        self.cipher = SmCipher(self.seed[:16])
        self.counter = 0

    def open(self, public_key: rsa.RSAPublicKey | None = None) -> None:
        """Send SET SESSION KEY (the text AP selected and its PIN verified); raises on refusal."""
        if public_key is None:
            if self._transmit(SELECT_EF_0006)[-2:] != b"\x90\x00":
                raise SecureMessagingError("EF 0006 cannot be selected: is the text AP selected?")
            rsp = self._transmit(build_command(0x00, 0xB0, 0x00, 0x00, le=65536))
            if rsp[-2:] != b"\x90\x00":
                raise SecureMessagingError(f"EF 0006 cannot be read ({rsp[-2:].hex().upper()}): verify the PIN first")
            public_key = session_key_delivery_key(rsp[:-2])
        ciphertext = public_key.encrypt(tlv(0xA0, tlv(0x80, self.seed)), OAEP_SHA256)
        rsp = self._transmit(build_command(0x80, 0xAE, 0x00, 0x00, ciphertext))
        if rsp != b"\x90\x00":
            raise SecureMessagingError(f"SET SESSION KEY answered {rsp.hex().upper()}")
        self.counter = 0

    def wrap(self, apdu: bytes) -> bytes:
        """The CLA 08 form of a plain command APDU (advances the command counter)."""
        _cla, ins, p1, p2, data, le, _ext = parse_fields(apdu)
        self.counter += 1
        body = self.cipher.wrap_data(self.counter, data)
        if le is not None:
            body += tlv(TAG_LE, (le & 0xFFFF).to_bytes(3, "big"))
        return build_command(0x08, ins, p1, p2, body, 65536 if le is not None else None, extended=True)

    def unwrap(self, response: bytes) -> bytes:
        """The plain response (data + SW) of the last wrapped command's answer."""
        sw, body = response[-2:], response[:-2]
        if not body:
            return sw
        try:
            do = parse_tlv(body)
            if do.tag != 0x86 or do.end != len(body):
                raise SmError("the answer is not one 86 object")
            return self.cipher.unwrap_data(self.counter, do.value) + sw
        except (TlvError, SmError) as exc:
            raise SecureMessagingError(f"the answer cannot be decrypted: {exc}") from None

    def transmit(self, apdu: bytes) -> bytes:
        """Send a plain command through the session; returns the plain response."""
        return self.unwrap(self._transmit(self.wrap(apdu)))
