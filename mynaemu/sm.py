"""Secure messaging of the text AP (docs/card-interface.md §5.2, §7), the card's side.

After the text-AP PIN is verified in clear, SET SESSION KEY (``80 AE 00 00``) carries a 32-byte
seed, RSA-OAEP(SHA-256)-encrypted to the AP's session-key-delivery key (EF 0006 holds its public
half). The session key is the seed's first 16 bytes. Commands then come with CLA ``08`` (no
integrity protection, confidentiality only):

- the command's data, if any, is ``86 L 01 <AES-128-CBC(ISO padded data)>``; a READ BINARY's Le
  is ``96 03 00 <Le hi> <Le lo>`` (with the outer APDU's own Le present);
- command number N starts at 1 and advances with every SM command, refused ones too; the IV of
  command N is AES-ECB(key, N as a 16-byte big-endian number);
- the response's data, if any, is ``86 L 01 <cryptogram>`` under the same IV, the status word in
  clear.

A cryptogram that does not decrypt to ISO padding (or a malformed DO) answers ``6988`` and ends
the session; from then on every SM command answers ``69FC``. CLA ``0C`` (integrity asked for)
answers ``6987``. Selecting an AP, a reset or power-off ends the session (it lives in the
volatile ``Session``).

Choice where the sources are silent: the response uses the IV of the command it answers.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .tlv import TlvError, iter_tlvs, tlv

TAG_CRYPTOGRAM = 0x86
TAG_LE = 0x96
PADDING_INDICATOR = 0x01  # the first byte of an 86 value: "ISO 7816-4 padding"
BLOCK = 16


class SmError(ValueError):
    """A secure-messaging object that cannot be trusted: the session must end (6988)."""


def pad(data: bytes) -> bytes:
    """ISO/IEC 7816-4 padding: 80, then 00 up to the block size (always at least one byte)."""
    return data + b"\x80" + b"\x00" * ((BLOCK - (len(data) + 1) % BLOCK) % BLOCK)


def unpad(data: bytes) -> bytes:
    """Strip ISO/IEC 7816-4 padding; SmError when there is none."""
    stripped = data.rstrip(b"\x00")
    if not data or len(data) % BLOCK or not stripped.endswith(b"\x80") or len(data) - len(stripped) >= BLOCK:
        raise SmError("bad padding")
    return stripped[:-1]


class SmCipher:
    """AES-128-CBC with the command counter's IV: what card and client both do."""

    __slots__ = ("_aes",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 16:
            raise ValueError("the session key is 16 bytes")
        self._aes = algorithms.AES(key)

    def iv(self, counter: int) -> bytes:
        """The IV of command number ``counter``: AES-ECB(key, counter as 16 bytes)."""
        enc = Cipher(self._aes, modes.ECB()).encryptor()
        return enc.update(counter.to_bytes(BLOCK, "big")) + enc.finalize()

    def encrypt(self, counter: int, data: bytes) -> bytes:
        enc = Cipher(self._aes, modes.CBC(self.iv(counter))).encryptor()
        return enc.update(pad(data)) + enc.finalize()

    def decrypt(self, counter: int, cryptogram: bytes) -> bytes:
        if not cryptogram or len(cryptogram) % BLOCK:
            raise SmError("a cryptogram is a whole number of blocks")
        dec = Cipher(self._aes, modes.CBC(self.iv(counter))).decryptor()
        return unpad(dec.update(cryptogram) + dec.finalize())

    def wrap_data(self, counter: int, data: bytes) -> bytes:
        """``86 L 01 <cryptogram>`` for ``data`` (b"" for no data)."""
        return tlv(TAG_CRYPTOGRAM, bytes((PADDING_INDICATOR,)) + self.encrypt(counter, data)) if data else b""

    def unwrap_data(self, counter: int, do: bytes) -> bytes:
        """The plaintext inside one ``86`` object."""
        if len(do) < 2 or do[0] != PADDING_INDICATOR:
            raise SmError("the cryptogram object must start with the padding indicator 01")
        return self.decrypt(counter, do[1:])


def parse_command_data(data: bytes) -> tuple[bytes | None, int | None]:
    """The 86 (cryptogram) and 96 (Le) objects of an SM command's data, each at most once."""
    cryptogram = le = None
    try:
        for item in iter_tlvs(data):
            if item.tag == TAG_CRYPTOGRAM and cryptogram is None:
                cryptogram = item.value
            elif item.tag == TAG_LE and le is None and len(item.value) in (1, 2, 3):
                value = int.from_bytes(item.value, "big")
                le = value or (256 if len(item.value) == 1 else 65536)
            else:
                raise SmError(f"unexpected object {item.tag:X} in an SM command")
    except TlvError as exc:
        raise SmError(str(exc)) from None
    return cryptogram, le


class SmSession:
    """One session's key and command counter, on the card."""

    __slots__ = ("broken", "cipher", "counter")

    def __init__(self, seed: bytes) -> None:
        self.cipher = SmCipher(seed[:16])
        self.counter = 0
        self.broken = False  # after a bad object: every SM command answers 69FC

    def next_counter(self) -> int:
        self.counter += 1
        return self.counter
