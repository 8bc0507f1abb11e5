"""Binary formats of the card's files: BER-TLV, JICSAP simple-TLV and PKCS#11 CK_TOKEN_INFO.

The 券面 APs write private-class tags in long form even when the number is below 31 (`FF 10`,
`DF 21`: docs/card-interface.md §4.1), which strict DER decoders reject, so the card needs its own small codec.
Tags are given as integers: `0x90` is one byte, `0xDF21` two, `0x7F21` two. Lengths are written
the way the card writes them: short form below 0x80, then `81 xx`, then `82 xx xx`. That is also
the DER rule, so the same encoder builds the few DER structures the content needs (DigestInfo,
UTF8String).

Every structure here is a `construct` construct; the functions are thin conveniences over them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from construct import (
    Adapter,
    Bytes,
    Construct,
    Int8ub,
    Int32ub,
    Rebuild,
    SizeofError,
    StreamError,
    Struct,
    len_,
    stream_read,
    stream_write,
    this,
)

__all__ = [
    "CK_TOKEN_INFO",
    "BerLength",
    "BerTag",
    "BerTlv",
    "SimpleLength",
    "SimpleTlv",
    "Tlv",
    "TlvError",
    "children",
    "encode_length",
    "encode_tag",
    "find",
    "iter_simple_tlvs",
    "iter_tlvs",
    "parse_simple_tlv",
    "parse_tlv",
    "simple_tlv",
    "tlv",
]

MAX_LENGTH = 0xFFFF


class TlvError(ValueError):
    """Malformed TLV data."""


def encode_length(length: int) -> bytes:
    """BER length: short form below 0x80, else `81 xx` or `82 xx xx`."""
    if length < 0:
        raise TlvError(f"negative length {length}")
    if length < 0x80:
        return bytes([length])
    if length <= 0xFF:
        return bytes([0x81, length])
    if length <= MAX_LENGTH:
        return bytes([0x82]) + length.to_bytes(2, "big")
    raise TlvError(f"length {length} does not fit the card's 82 xx xx form")


def long_form_length(length: int) -> bytes:
    """A BER length in the two-byte long form (82 HH LL) whatever its size.

    DER would take the shortest form; BER allows this one, and some cards write it (§4.5).
    """
    if not 0 <= length <= MAX_LENGTH:
        raise TlvError(f"length {length} does not fit two bytes")
    return b"\x82" + length.to_bytes(2, "big")


def encode_tag(tag: int) -> bytes:
    """A tag number as its 1, 2 or 3 bytes (`0xDF21` -> `DF 21`)."""
    if tag < 0 or tag > 0xFFFFFF:
        raise TlvError(f"tag {tag:#x} out of range")
    size = 1 if tag <= 0xFF else 2 if tag <= 0xFFFF else 3
    return tag.to_bytes(size, "big")


class _BerTagCodec(Construct):
    """BER tag: a first byte whose low five bits are all set continues while b8 of the next is 1."""

    def _parse(self, stream: Any, context: Any, path: str) -> int:
        first = stream_read(stream, 1, path)[0]
        tag = first
        if first & 0x1F == 0x1F:
            while True:
                byte = stream_read(stream, 1, path)[0]
                tag = (tag << 8) | byte
                if not byte & 0x80:
                    break
                if tag > 0xFFFFFF:
                    raise StreamError("tag longer than 3 bytes", path=path)
        return tag

    def _build(self, obj: int, stream: Any, context: Any, path: str) -> int:
        data = encode_tag(obj)
        stream_write(stream, data, len(data), path)
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        raise SizeofError("a BER tag has no fixed size", path=path)


class _BerLengthCodec(Construct):
    """BER definite length, at most `82 xx xx` (the card never needs more)."""

    def _parse(self, stream: Any, context: Any, path: str) -> int:
        first = stream_read(stream, 1, path)[0]
        if first < 0x80:
            return first
        count = first & 0x7F
        if count not in (1, 2):
            raise StreamError(f"unsupported BER length byte {first:#04x}", path=path)
        return int.from_bytes(stream_read(stream, count, path), "big")

    def _build(self, obj: int, stream: Any, context: Any, path: str) -> int:
        data = encode_length(obj)
        stream_write(stream, data, len(data), path)
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        raise SizeofError("a BER length has no fixed size", path=path)


class _SimpleLengthCodec(Construct):
    """JICSAP simple-TLV length: one byte below 0xFF, else `FF` and two bytes."""

    def _parse(self, stream: Any, context: Any, path: str) -> int:
        first = stream_read(stream, 1, path)[0]
        if first < 0xFF:
            return first
        return int.from_bytes(stream_read(stream, 2, path), "big")

    def _build(self, obj: int, stream: Any, context: Any, path: str) -> int:
        if not 0 <= obj <= MAX_LENGTH:
            raise StreamError(f"simple-TLV length {obj} out of range", path=path)
        data = bytes([obj]) if obj < 0xFF else b"\xff" + obj.to_bytes(2, "big")
        stream_write(stream, data, len(data), path)
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        raise SizeofError("a simple-TLV length has no fixed size", path=path)


class _TellCodec(Construct):
    """Current stream position (how many header bytes were consumed)."""

    def _parse(self, stream: Any, context: Any, path: str) -> int:
        return int(stream.tell())

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> int:
        return int(stream.tell())

    def _sizeof(self, context: Any, path: str) -> int:
        return 0


_Tell = _TellCodec()


BerTag = _BerTagCodec()
BerLength = _BerLengthCodec()
SimpleLength = _SimpleLengthCodec()

BerTlv = Struct(
    "tag" / BerTag,
    "length" / Rebuild(BerLength, len_(this.value)),
    "value" / Bytes(this.length),
)

SimpleTlv = Struct(
    "tag" / Int8ub,
    "length" / Rebuild(SimpleLength, len_(this.value)),
    "value" / Bytes(this.length),
)

# Headers alone: values are sliced out of the buffer rather than copied through a stream.
_BER_HEADER = Struct("tag" / BerTag, "length" / BerLength, "size" / _Tell)
_SIMPLE_HEADER = Struct("tag" / Int8ub, "length" / SimpleLength, "size" / _Tell)


@dataclass(frozen=True)
class Tlv:
    """One parsed TLV object and where it sits in the buffer it came from."""

    tag: int
    value: bytes
    start: int  # offset of the first tag byte
    end: int  # offset just past the value

    @property
    def header_len(self) -> int:
        """Bytes of tag and length."""
        return self.end - self.start - len(self.value)

    @property
    def value_start(self) -> int:
        """Offset of the first value byte."""
        return self.end - len(self.value)


def tlv(tag: int, value: bytes) -> bytes:
    """Encode one BER-TLV object."""
    return BerTlv.build({"tag": tag, "value": bytes(value)})


def parse_tlv(data: bytes, offset: int = 0, end: int | None = None) -> Tlv:
    """Parse the BER-TLV object starting at `offset`; it must end by `end` (default: the buffer)."""
    return _parse_with(_BER_HEADER, data, offset, len(data) if end is None else end, "TLV")


def _parse_with(header: Struct, data: bytes, offset: int, limit: int, kind: str) -> Tlv:
    """Parse a header with construct, then slice the value out of `data`."""
    try:
        parsed = header.parse(bytes(data[offset : min(offset + 8, limit)]))
    except Exception as exc:
        raise TlvError(f"bad {kind} header at offset {offset}: {exc}") from None
    value_start = offset + parsed.size
    end = value_start + parsed.length
    if end > limit:
        raise TlvError(f"{kind} {parsed.tag:X} at offset {offset} claims {parsed.length} bytes, only {limit - value_start} left")
    return Tlv(parsed.tag, bytes(data[value_start:end]), offset, end)


def iter_tlvs(data: bytes, offset: int = 0, end: int | None = None) -> Iterator[Tlv]:
    """Parse consecutive BER-TLV objects from `offset` to `end` (offsets stay absolute)."""
    stop = len(data) if end is None else end
    while offset < stop:
        item = parse_tlv(data, offset, stop)
        yield item
        offset = item.end


def children(data: bytes, parent: Tlv) -> list[Tlv]:
    """The objects inside a constructed object, with offsets relative to `data`."""
    return list(iter_tlvs(data, parent.value_start, parent.end))


def find(items: list[Tlv], tag: int) -> Tlv:
    """The first object with `tag`; TlvError if absent."""
    for item in items:
        if item.tag == tag:
            return item
    raise TlvError(f"no object with tag {tag:X}")


def simple_tlv(tag: int, value: bytes) -> bytes:
    """Encode one JICSAP simple-TLV object (record EFs)."""
    return SimpleTlv.build({"tag": tag, "value": bytes(value)})


def parse_simple_tlv(data: bytes, offset: int = 0) -> Tlv:
    """Parse the simple-TLV object starting at `offset`."""
    return _parse_with(_SIMPLE_HEADER, data, offset, len(data), "simple-TLV")


def iter_simple_tlvs(data: bytes) -> Iterator[Tlv]:
    """Parse consecutive simple-TLV objects."""
    offset = 0
    while offset < len(data):
        item = parse_simple_tlv(data, offset)
        yield item
        offset = item.end


class _SpacePadded(Adapter):
    """Fixed-size ASCII field padded with spaces, as PKCS#11 text fields are."""

    def __init__(self, size: int) -> None:
        super().__init__(Bytes(size))
        self.size = size

    def _decode(self, obj: bytes, context: Any, path: str) -> str:
        return obj.decode("ascii").rstrip(" ")

    def _encode(self, obj: str, context: Any, path: str) -> bytes:
        raw = obj.encode("ascii")
        if len(raw) > self.size:
            raise StreamError(f"{obj!r} longer than {self.size} bytes", path=path)
        return raw.ljust(self.size, b" ")


# JPKI EF 0006 (docs/card-interface.md §4.2): PKCS#11 CK_TOKEN_INFO with 32-bit big-endian ULONGs, 160 bytes.
# The two versions are ASCII digit pairs ("03", "01") on real cards, not CK_VERSION binaries.
CK_TOKEN_INFO = Struct(
    "label" / _SpacePadded(32),
    "manufacturer_id" / _SpacePadded(32),
    "model" / _SpacePadded(16),
    "serial_number" / _SpacePadded(16),
    "flags" / Int32ub,
    "max_session_count" / Int32ub,
    "session_count" / Int32ub,
    "max_rw_session_count" / Int32ub,
    "rw_session_count" / Int32ub,
    "max_pin_len" / Int32ub,
    "min_pin_len" / Int32ub,
    "total_public_memory" / Int32ub,
    "free_public_memory" / Int32ub,
    "total_private_memory" / Int32ub,
    "free_private_memory" / Int32ub,
    "hardware_version" / Bytes(2),
    "firmware_version" / Bytes(2),
    "utc_time" / Bytes(16),
)
