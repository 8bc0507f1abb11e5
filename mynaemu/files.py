"""The file model of one application: transparent, record, key-reference and private-key EFs.

Built once per card from the profile and the issued content; file bodies are immutable ``bytes``
padded to their physical size, so READ BINARY is one slice.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import rsa

from .profile import EfSpec


class Ef:
    """Base of all EFs. ``rule``: None = free, empty = never, else any one of these keys."""

    __slots__ = ("fid", "rule", "spec")
    kind = "ef"

    def __init__(self, spec: EfSpec) -> None:
        self.spec = spec
        self.fid = spec.fid
        self.rule = spec.read

    def allows(self, verified: set[str]) -> bool:
        """Whether the security status opens this EF (read, or key use)."""
        rule = self.rule
        return rule is None or not rule.isdisjoint(verified)


NO_READS: dict[bytes, bytes] = {}  # the kept answers of an EF not read yet: empty, never written


class BinaryEf(Ef):
    """A transparent EF at its physical size, padded with the filler byte."""

    __slots__ = ("body", "reads")
    kind = "binary"

    def __init__(self, spec: EfSpec, content: bytes) -> None:
        super().__init__(spec)
        size = spec.size or len(content)
        if len(content) > size:
            raise ValueError(f"EF {spec.fid:04X}: content of {len(content)} bytes exceeds its size {size}")
        self.body = content + bytes((spec.filler,)) * (size - len(content))
        # The card's fast path keeps short READ BINARY answers here by their exact bytes (the
        # body never changes); NO_READS (shared, never written) until the first one.
        self.reads: dict[bytes, bytes] = NO_READS


class RecordEf(Ef):
    """A linear record EF (common and 住基 APs)."""

    __slots__ = ("records",)
    kind = "record"

    def __init__(self, spec: EfSpec, records: list[bytes]) -> None:
        super().__init__(spec)
        self.records = tuple(records)


class PinEf(Ef):
    """A key reference EF: VERIFY and CHANGE target it; it cannot be read."""

    __slots__ = ("key",)
    kind = "pin"

    def __init__(self, spec: EfSpec) -> None:
        super().__init__(spec)
        self.key = spec.key


class PrivateKeyEf(Ef):
    """A private-key EF (the key is parsed when the card loads, so a broken one is refused then)."""

    __slots__ = ("key", "ops")
    kind = "rsa"

    def __init__(self, spec: EfSpec, key: rsa.RSAPrivateKey) -> None:
        super().__init__(spec)
        self.ops = frozenset(spec.ops)
        self.key = key


class CvKeyEf(Ef):
    """A CV public-key reference (JPKI 0016): selectable, never readable; ``80 A2`` checks
    terminal certificates against it. ``key_id`` and ``public_key`` come from the issued content."""

    __slots__ = ("key_id", "public_key")
    kind = "cv_key"

    def __init__(self, spec: EfSpec, key_id: bytes, public_key: rsa.RSAPublicKey) -> None:
        super().__init__(spec)
        self.key_id = key_id
        self.public_key = public_key


class OpaqueEf(Ef):
    """Selectable, never readable (e.g. MF 001E, JPKI 0016)."""

    __slots__ = ()
    kind = "opaque"
