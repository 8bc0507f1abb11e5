"""APDU transcripts: a text format for client flows, a parser, and a replayer for any card.

A transcript is what a client program sends and what a right card answers, written so that one
file checks the emulator and a real card alike: ``replay`` takes any ``transmit(bytes) -> bytes``.
Files live in ``apdu_specs/transcripts/``, one flow per file. A transcript starts in the
power-on state (a fresh connection, no AP selected, nothing verified).

Format (line based; ``#`` starts a comment; the leading comment block is the description)::

    # myna jpki pkey sign -t auth        (what the flow is and where the spec says so)
    00 A4 04 0C data=D392F000260100000001        => 9000           # SEL-AP(JPKI)
    00 20 00 80                                  => 63C{tries:auth}
    00 20 00 80 data={auth_pin}                  => 9000
    80 2A 00 80 data=3031300D...{digest} le=00   => {sig:auth} 9000
    00 A4 02 0C 02 00 0A                         => 9000           # raw form
    @read myna 000A {content:jpki.auth_cert} save=cert:auth

Step: ``COMMAND => RESPONSE``. COMMAND is either the fields form ``CLA INS P1 P2 [data=HEX]
[le=LE] [ext]``, encoded by ``mynaemu.apdu.build_command`` (so Lc is computed; a value runs up to
the next ``key=`` or ``ext`` and may hold spaces), or a raw APDU (hex bytes beyond the four
header bytes, sent as written). ``le=`` is hex as in an APDU: one byte is a short Le (``00`` =
256), two bytes an extended Le (``0000`` = 65536); a placeholder giving a number is a byte count
(extended when above 256). ``ext`` forces extended length. RESPONSE is the whole expected
response, data then SW, as hex with placeholders; spaces inside values are ignored.

Placeholders ``{...}`` (no spaces inside):

* ``{NAME}`` a variable: str -> UTF-8 bytes (PINs are ASCII), bytes as is, int -> its hex digits
  (so ``63C{tries:auth}`` is ``63C3``). ``{NAME[a:b]}`` / ``{NAME[i]}`` slice or index bytes (or a
  list of records). ``{len:NAME[a:b]}`` is the length as a number (for ``le=``).
* Response matchers: ``{any:N}`` N arbitrary bytes, ``{any}`` any number of bytes (once per
  response); ``{sig:NAME}`` a signature by the key of the certificate in variable
  ``cert:NAME`` that must verify over the command's data, by the scheme P1 names (P1 ``00``:
  PKCS#1 v1.5 over the data as given, i.e. ``NoDigestInfo``; docs/card-interface.md §5.1).

Variable names (what ``card_variables`` provides; any mapping with these keys will do for a real
card): ``auth_pin sign_pin text_pin juki_pin common_pin``, ``my_number``, ``check_a``,
``check_b``, ``birth_yymmdd`` (era), ``birth_yyyymmdd``, ``persona.FIELD``, ``content:ID`` (issued
content objects, e.g. ``content:jpki.auth_cert``), ``cert:auth`` / ``cert:sign`` (DER), and
``tries:KEY`` (tries left now, per profile key name: auth, sign, text, text-a, ...), and
``terminal_cert`` (a terminal CV certificate by the card's terminal CA, for ``80 A2``).

A description line ``Variant: NAME`` marks a flow for one card variant only (D13); replaying it
on a card of another variant is refused before anything is sent.

Macro ``@read STYLE EF EXPECTED [save=NAME]`` reads a TLV-headed EF the way a client does, with
the chunk sizes computed from the header the card returns (as the client computes them):

* ``opensc`` (docs/card-interface.md §10.1): SEL(EF); RB(0,04); length = bytes 2..3 + 4; then the whole object
  from offset 0 in 256-byte chunks (Le ``00``), the last one with its exact Le.
* ``myna`` (docs/card-interface.md §10.2): SEL(EF); RB(0,07); length from the BER header; then RB(7, ...) in chunks
  of at most 256 until the length is reached.

EXPECTED is a value template the bytes read must equal (chunk by chunk), or ``-`` to accept
any; ``save=NAME`` binds what was read to NAME for later steps (e.g. ``cert:auth`` for
``{sig:auth}`` on a real card). Every variable a transcript needs is checked before the first
APDU is sent, so a missing one never leaves a real card half way through a PIN flow.

API: ``load_transcript`` / ``parse_transcript`` -> ``Transcript``; ``replay(transcript, transmit,
variables)`` and ``replay_file(path, transmit, variables)`` -> ``ReplayResult``; ``expand`` (the
APDUs a transcript sends when the card answers as expected, no card needed); ``card_variables(card,
secrets)``; ``transcript_files()``. A step is one APDU (a ``@read`` makes several). The first
mismatch stops the replay: ``ReplayResult.mismatch`` gives the step, the file line, the command
(secrets masked with ``redact.mask_command``), expected and actual responses and a one-line
explanation; ``raise_for_mismatch()`` raises it as ``TranscriptMismatch``. Syntax faults and
missing variables raise ``TranscriptError`` naming file and line.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed

from . import sw
from .apdu import ApduError, build_command, parse_command
from .redact import mask_command

if TYPE_CHECKING:
    from .card import Card

__all__ = [
    "TRANSCRIPT_DIR",
    "ExchangeLog",
    "Mismatch",
    "ReplayResult",
    "Transcript",
    "TranscriptError",
    "TranscriptMismatch",
    "card_variables",
    "expand",
    "load_transcript",
    "parse_transcript",
    "replay",
    "replay_file",
    "transcript_files",
]

# Package data (apdu_specs/transcripts), found in a wheel as in the source tree.
TRANSCRIPT_DIR: Traversable = resources.files("apdu_specs") / "transcripts"

Transmit = Callable[[bytes], bytes]


class TranscriptError(ValueError):
    """A transcript that cannot be parsed or run (bad syntax, missing variable)."""


class TranscriptMismatch(AssertionError):
    """The card answered something the transcript does not expect."""

    def __init__(self, mismatch: Mismatch) -> None:
        super().__init__(str(mismatch))
        self.mismatch = mismatch


# -- templates -------------------------------------------------------------------------------

_NAME = r"[A-Za-z_][\w.:\-]*"
_EXPR = re.compile(r"^(?:(?P<func>len|any|sig):)?(?P<name>[\w.:\-]+)?(?:\[(?P<a>-?\d*)(?P<colon>:)?(?P<b>-?\d*)\])?$")
_PLACEHOLDER = re.compile(r"\{([^{}\s]*)\}")
_HEX = re.compile(r"[0-9A-Fa-f]*")


@dataclass(frozen=True, slots=True)
class Expr:
    """One placeholder: a variable (optionally sliced), ``len:``, ``any:N`` or ``sig:NAME``."""

    func: str  # "" (value), "len", "any", "sig"
    name: str
    index: int | None = None
    slice: tuple[int | None, int | None] | None = None
    count: int | None = None  # any:N

    def __str__(self) -> str:
        if self.func == "any":
            return "{any}" if self.count is None else f"{{any:{self.count}}}"
        sub = ""
        if self.index is not None:
            sub = f"[{self.index}]"
        elif self.slice is not None:
            a, b = self.slice
            sub = f"[{'' if a is None else a}:{'' if b is None else b}]"
        return "{" + (f"{self.func}:" if self.func else "") + self.name + sub + "}"


def _parse_expr(text: str, *, response: bool) -> Expr:
    m = _EXPR.match(text)
    if not m:
        raise ValueError(f"bad placeholder {{{text}}}")
    func, name = m["func"] or "", m["name"] or ""
    if text == "any":
        func, name = "any", ""
    if func == "any":
        if m["a"] is not None:
            raise ValueError(f"{{{text}}}: any takes a byte count, not a slice")
        if name and not name.isdigit():
            raise ValueError(f"{{{text}}}: write {{any}} or {{any:N}} with N a decimal byte count")
        if not response:
            raise ValueError(f"{{{text}}}: any is a response matcher")
        return Expr("any", "", count=int(name) if name else None)
    if not re.fullmatch(_NAME, name):
        raise ValueError(f"bad placeholder {{{text}}}: a variable name starts with a letter or '_'")
    if func == "sig" and not response:
        raise ValueError(f"{{{text}}}: sig is a response matcher")
    index: int | None = None
    sl: tuple[int | None, int | None] | None = None
    if m["a"] is not None:
        if m["colon"]:
            sl = (int(m["a"]) if m["a"] else None, int(m["b"]) if m["b"] else None)
        elif m["a"]:
            index = int(m["a"])
        else:
            raise ValueError(f"{{{text}}}: empty index")
    if func == "sig" and (index is not None or sl is not None):
        raise ValueError(f"{{{text}}}: sig takes a key name only")
    return Expr(func, name, index, sl)


Part = str | Expr


@dataclass(frozen=True, slots=True)
class Template:
    """Hex digits and placeholders, as written (spaces removed)."""

    parts: tuple[Part, ...]
    source: str

    def names(self) -> set[str]:
        """Variables this template reads (``sig:NAME`` reads ``cert:NAME``)."""
        out = set()
        for p in self.parts:
            if isinstance(p, Expr) and p.func != "any":
                out.add(f"cert:{p.name}" if p.func == "sig" else p.name)
        return out

    def is_single_expr(self) -> bool:
        return len(self.parts) == 1 and isinstance(self.parts[0], Expr)

    def __str__(self) -> str:
        return self.source


def _parse_template(text: str, *, response: bool = False) -> Template:
    compact = "".join(text.split())
    parts: list[Part] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(compact):
        lit = compact[pos : m.start()]
        if lit:
            parts.append(lit)
        parts.append(_parse_expr(m[1], response=response))
        pos = m.end()
    if compact[pos:]:
        parts.append(compact[pos:])
    for p in parts:
        if isinstance(p, str) and not _HEX.fullmatch(p):
            raise ValueError(f"not hex: {p!r}")
    anys = [p for p in parts if isinstance(p, Expr) and p.func == "any" and p.count is None]
    if len(anys) > 1:
        raise ValueError("only one {any} without a count per response")
    return Template(tuple(p.upper() if isinstance(p, str) else p for p in parts), text.strip())


def _lookup(expr: Expr, variables: Mapping[str, object]) -> object:
    if expr.name not in variables:
        raise TranscriptError(f"variable {expr.name!r} is not defined")
    value = variables[expr.name]
    if isinstance(value, str):
        value = value.encode("utf-8")
    elif isinstance(value, bytearray | memoryview):
        value = bytes(value)
    elif isinstance(value, date):
        value = value.strftime("%Y%m%d").encode()
    if expr.index is not None or expr.slice is not None:
        if not isinstance(value, bytes | list | tuple):
            raise TranscriptError(f"{expr}: variable {expr.name!r} cannot be sliced")
        if expr.index is not None:
            try:
                value = value[expr.index]
            except IndexError:
                raise TranscriptError(f"{expr}: index out of range") from None
            if isinstance(value, int):
                value = bytes((value,))
        else:
            value = value[slice(*expr.slice)]  # type: ignore[misc]
    return value


def _value(expr: Expr, variables: Mapping[str, object]) -> bytes | int:
    value = _lookup(expr, variables)
    if expr.func == "len":
        if not isinstance(value, bytes | list | tuple):
            raise TranscriptError(f"{expr}: variable {expr.name!r} has no length")
        return len(value)
    if isinstance(value, bool) or not isinstance(value, bytes | int):
        raise TranscriptError(f"{expr}: variable {expr.name!r} is a {type(value).__name__}, not bytes or a number")
    return value


def _hex_of(value: bytes | int) -> str:
    return value.hex().upper() if isinstance(value, bytes) else f"{value:X}"


def _render_bytes(t: Template, variables: Mapping[str, object]) -> bytes:
    digits = "".join(p if isinstance(p, str) else _hex_of(_value(p, variables)) for p in t.parts)
    if len(digits) % 2:
        raise TranscriptError(f"{t}: an odd number of hex digits ({len(digits)})")
    return bytes.fromhex(digits)


# -- response patterns -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Lit:
    hex: str


@dataclass(frozen=True, slots=True)
class _Any:
    count: int | None


@dataclass(frozen=True, slots=True)
class _Sig:
    name: str
    key: rsa.RSAPublicKey

    @property
    def size(self) -> int:
        return (self.key.key_size + 7) // 8


Segment = _Lit | _Any | _Sig


def _der_length(data: bytes) -> int | None:
    """Total length of the BER TLV at the start of ``data`` (tag + length + value), if it parses."""
    if not data:
        return None
    i = 1
    if data[0] & 0x1F == 0x1F:
        while i < len(data) and data[i] & 0x80:
            i += 1
        i += 1
    if i >= len(data):
        return None
    first = data[i]
    i += 1
    if first < 0x80:
        return i + first
    n = first & 0x7F
    if n == 0 or n > 3 or i + n > len(data):
        return None
    return i + n + int.from_bytes(data[i : i + n], "big")


def _public_key(name: str, variables: Mapping[str, object]) -> rsa.RSAPublicKey:
    der = variables.get(f"cert:{name}")
    if not isinstance(der, bytes | bytearray):
        raise TranscriptError(f"{{sig:{name}}} needs the certificate in variable 'cert:{name}' (DER bytes)")
    der = bytes(der)
    total = _der_length(der)
    try:
        cert = x509.load_der_x509_certificate(der[:total] if total else der)
    except ValueError as exc:
        raise TranscriptError(f"variable 'cert:{name}' is not a DER certificate: {exc}") from None
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise TranscriptError(f"variable 'cert:{name}' does not hold an RSA key")
    return key


def _resolve(t: Template, variables: Mapping[str, object]) -> list[Segment]:
    segs: list[Segment] = []
    for p in t.parts:
        if isinstance(p, str):
            seg: Segment = _Lit(p)
        elif p.func == "any":
            seg = _Any(p.count)
        elif p.func == "sig":
            seg = _Sig(p.name, _public_key(p.name, variables))
        else:
            seg = _Lit(_hex_of(_value(p, variables)))
        if isinstance(seg, _Lit) and segs and isinstance(segs[-1], _Lit):
            segs[-1] = _Lit(segs[-1].hex + seg.hex)
        elif not (isinstance(seg, _Lit) and not seg.hex):
            segs.append(seg)
    if any(isinstance(s, _Lit) and len(s.hex) % 2 for s in segs):
        raise TranscriptError(f"{t}: hex digits between matchers must make whole bytes")
    return segs


def _seg_digits(s: Segment) -> int | None:
    if isinstance(s, _Lit):
        return len(s.hex)
    if isinstance(s, _Sig):
        return 2 * s.size
    return None if s.count is None else 2 * s.count


def _pattern_text(segs: list[Segment]) -> str:
    out = []
    for s in segs:
        if isinstance(s, _Lit):
            out.append(s.hex)
        elif isinstance(s, _Sig):
            out.append(f"{{sig:{s.name}}}")
        else:
            out.append("{any}" if s.count is None else f"{{any:{s.count}}}")
    return "".join(out)


def _expected_sw(segs: list[Segment]) -> str | None:
    if segs and isinstance(segs[-1], _Lit) and len(segs[-1].hex) >= 4:
        return segs[-1].hex[-4:]
    return None


def _verify_sig(key: rsa.RSAPublicKey, signature: bytes, p1: int, data: bytes) -> str | None:
    """None when ``signature`` verifies over ``data`` by scheme P1, else why not."""
    pkcs1 = padding.PKCS1v15()
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
    try:
        if p1 == 0x00:
            key.verify(signature, data, pkcs1, NoDigestInfo())
        elif p1 == 0x01:
            key.verify(signature, hashlib.sha256(data).digest(), pkcs1, NoDigestInfo())
        elif p1 == 0x02:
            key.verify(signature, data, pkcs1, Prehashed(hashes.SHA256()))
        elif p1 == 0x03:
            key.verify(signature, data, pkcs1, hashes.SHA256())
        elif p1 == 0x04:
            key.verify(signature, data, pss, Prehashed(hashes.SHA256()))
        elif p1 == 0x05:
            key.verify(signature, data, pss, hashes.SHA256())
        else:
            return f"no signature scheme for P1={p1:02X}"
    except InvalidSignature:
        return "invalid"
    except ValueError as exc:
        return f"cannot verify: {exc}"
    return None


def _match(segs: list[Segment], actual: bytes, command: bytes) -> tuple[str | None, int | None]:
    """(explanation, differing byte offset) - (None, None) when ``actual`` matches."""
    act = actual.hex().upper()
    want_sw = _expected_sw(segs)
    if len(actual) < 2:
        return f"no status word: the card answered {len(actual)} byte(s)", None
    got_sw = act[-4:]
    if want_sw is not None and want_sw != got_sw:
        return (
            f"status word: expected {want_sw} ({sw.describe(bytes.fromhex(want_sw))}), got {got_sw} ({sw.describe(actual[-2:])})"
        ), None
    sizes = [_seg_digits(s) for s in segs]
    fixed = sum(n for n in sizes if n is not None)
    if None not in sizes and fixed != len(act):
        return (
            f"response length: expected {fixed // 2 - 2} data bytes + SW, got {len(actual) - 2} + SW",
            None,
        )
    if None in sizes and len(act) < fixed:
        return (
            f"response length: expected at least {fixed // 2 - 2} data bytes + SW, got {len(actual) - 2} + SW",
            None,
        )
    # Lay the segments over the actual digits: left of an {any} from the start, right of it from the end.
    cut = sizes.index(None) if None in sizes else len(segs)
    spans: list[tuple[Segment, int]] = []
    pos = 0
    for s, n in zip(segs[:cut], sizes[:cut], strict=True):
        spans.append((s, pos))
        pos += n  # type: ignore[operator]
    pos = len(act)
    for s, n in reversed(list(zip(segs[cut + 1 :], sizes[cut + 1 :], strict=True))):
        pos -= n  # type: ignore[operator]
        spans.append((s, pos))
    spans.sort(key=lambda sp: sp[1])
    cmd_p1 = command[2] if len(command) > 2 else 0
    for s, start in spans:
        if isinstance(s, _Lit):
            got = act[start : start + len(s.hex)]
            if got != s.hex:
                k = next(i for i, (x, y) in enumerate(zip(s.hex, got, strict=True)) if x != y)
                b = (start + k) // 2
                e = s.hex[2 * b - start : 2 * b - start + 2]
                if b >= len(actual) - 2:
                    want = (s.hex[-4:] if len(s.hex) >= 4 else e).upper()
                    return f"status word: expected {want}, got {got_sw} ({sw.describe(actual[-2:])})", None
                return f"data differs at byte {b} (0x{b:X}): expected {e}, got {act[2 * b : 2 * b + 2]}", b
        elif isinstance(s, _Sig):
            sig = actual[start // 2 : start // 2 + s.size]
            why = _verify_sig(s.key, sig, cmd_p1, _command_data(command))
            if why is not None:
                return (
                    f"signature ({s.size} bytes at data offset {start // 2}) does not verify against "
                    f"cert:{s.name}'s public key over the command data (P1={cmd_p1:02X}): {why}"
                ), start // 2
    return None, None


def _command_data(apdu: bytes) -> bytes:
    try:
        return parse_command(apdu).data
    except ApduError:
        return b""


def _synthesize(segs: list[Segment]) -> bytes:
    """A response that a dry run pretends the card gave (matchers filled with zeros)."""
    out = b""
    for s in segs:
        if isinstance(s, _Lit):
            out += bytes.fromhex(s.hex)
        elif isinstance(s, _Sig):
            out += bytes(s.size)
        else:
            out += bytes(s.count or 0)
    return out


# -- transcript items ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One command line and the response it expects."""

    line: int
    text: str
    header: Template
    data: Template | None
    le: Template | None
    ext: bool
    expect: Template

    def names(self) -> set[str]:
        out = self.header.names() | self.expect.names()
        for t in (self.data, self.le):
            if t is not None:
                out |= t.names()
        return out

    def command(self, variables: Mapping[str, object]) -> bytes:
        head = _render_bytes(self.header, variables)
        if len(head) < 4:
            raise TranscriptError("a command needs CLA INS P1 P2")
        if len(head) > 4:
            if self.data is not None or self.le is not None or self.ext:
                raise TranscriptError("a raw APDU takes no data=/le=/ext")
            return head
        data = _render_bytes(self.data, variables) if self.data is not None else b""
        le, ext = None, self.ext
        if self.le is not None:
            v = _value(self.le.parts[0], variables) if self.le.is_single_expr() else None  # type: ignore[arg-type]
            if isinstance(v, int):
                le = v
            else:
                raw = _render_bytes(self.le, variables)
                if len(raw) == 1:
                    le = raw[0] or 256
                elif len(raw) == 2:
                    le, ext = int.from_bytes(raw, "big") or 65536, True
                else:
                    raise TranscriptError("le= is one byte (short) or two (extended)")
            if not 1 <= le <= 65536:
                raise TranscriptError(f"Le {le} out of range")
        if len(data) > 65535:
            raise TranscriptError("data longer than 65535 bytes")
        return build_command(head[0], head[1], head[2], head[3], data, le, extended=ext)


@dataclass(frozen=True, slots=True)
class ReadMacro:
    """``@read STYLE EF EXPECTED [save=NAME]``: a client's chunked read of one EF."""

    line: int
    text: str
    style: str
    fid: bytes
    expect: Template | None
    save: str | None

    def names(self) -> set[str]:
        return self.expect.names() if self.expect is not None else set()


Item = Step | ReadMacro
STYLES = {"opensc": 4, "myna": 7}


@dataclass(frozen=True)
class Transcript:
    """A parsed transcript: its description (leading comments) and its items in order."""

    name: str
    description: str
    items: tuple[Item, ...]
    path: Path | Traversable | None = None

    @property
    def title(self) -> str:
        return self.description.splitlines()[0] if self.description else self.name

    @property
    def variant(self) -> str | None:
        """The card variant the flow is for (a ``Variant: NAME`` description line), None for any."""
        for line in self.description.splitlines():
            if line.startswith("Variant: "):
                return line.removeprefix("Variant: ").strip()
        return None

    def variables_needed(self) -> set[str]:
        """Variables that must be given (those bound by ``save=`` on an earlier line excluded)."""
        need: set[str] = set()
        bound: set[str] = set()
        for item in self.items:
            need |= item.names() - bound
            if isinstance(item, ReadMacro) and item.save:
                bound.add(item.save)
        return need


def _strip_comment(line: str) -> str:
    return line.partition("#")[0].strip()


def _parse_step(lineno: int, text: str, body: str) -> Step:
    if "=>" not in body:
        raise ValueError("a step is 'COMMAND => RESPONSE'")
    cmd, _, resp = body.partition("=>")
    fields: dict[str, list[str]] = {"": []}
    current = ""
    ext = False
    for tok in cmd.split():
        key, eq, val = tok.partition("=")
        if eq:
            current = key.lower()
            if current not in ("data", "le") or current in fields:
                raise ValueError(f"unknown or repeated field {key!r} (data=, le= once each)")
            fields[current] = [val]
        elif tok.lower() == "ext":
            ext = True
        else:
            fields[current].append(tok)  # a value may be written in several groups of digits
    header = fields[""]
    data = _parse_template(" ".join(fields["data"])) if "data" in fields else None
    le = _parse_template(" ".join(fields["le"])) if "le" in fields else None
    if not header:
        raise ValueError("no command")
    if not resp.strip():
        raise ValueError("no expected response after '=>'")
    return Step(lineno, text, _parse_template(" ".join(header)), data, le, ext, _parse_template(resp, response=True))


def _parse_macro(lineno: int, text: str, body: str) -> ReadMacro:
    toks = body.split()
    if toks[0] != "@read":
        raise ValueError(f"unknown directive {toks[0]!r} (known: @read)")
    save = None
    rest = []
    for tok in toks[1:]:
        if tok.startswith("save="):
            save = tok[5:]
            if not re.fullmatch(_NAME, save):
                raise ValueError(f"bad variable name in {tok!r}")
        else:
            rest.append(tok)
    if len(rest) < 3:
        raise ValueError("@read STYLE EF EXPECTED [save=NAME]  (EXPECTED may be '-')")
    style, fid_hex, expect = rest[0], rest[1], " ".join(rest[2:])
    if style not in STYLES:
        raise ValueError(f"unknown read style {style!r} (known: {', '.join(STYLES)})")
    if not re.fullmatch(r"[0-9A-Fa-f]{4}", fid_hex):
        raise ValueError(f"EF must be 4 hex digits, not {fid_hex!r}")
    tmpl = None if expect == "-" else _parse_template(expect)
    return ReadMacro(lineno, text, style, bytes.fromhex(fid_hex), tmpl, save)


def parse_transcript(text: str, name: str = "<transcript>", path: Path | Traversable | None = None) -> Transcript:
    """Parse transcript text; raise TranscriptError naming the file and line of a fault."""
    items: list[Item] = []
    desc: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not items and stripped.startswith("#"):
            desc.append(stripped[1:].strip())  # the leading comment block describes the flow
            continue
        body = _strip_comment(raw)
        if not body:
            continue
        try:
            items.append(
                _parse_macro(lineno, raw.strip(), body) if body.startswith("@") else _parse_step(lineno, raw.strip(), body)
            )
        except ValueError as exc:
            raise TranscriptError(f"{name}:{lineno}: {exc}") from None
    while desc and not desc[-1]:
        desc.pop()
    return Transcript(name, "\n".join(desc), tuple(items), path)


def load_transcript(path: Path | str | Traversable) -> Transcript:
    """Read and parse a transcript file; raise TranscriptError naming it when it cannot be read."""
    p = Path(path) if isinstance(path, str) else path
    try:
        if p.is_dir() or (isinstance(p, Path) and p.exists() and not p.is_file()):
            raise TranscriptError(f"{p}: not a transcript file (a directory or a device); give a .txt transcript")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TranscriptError(f"{p}: no such transcript (see `mynaemu replay --list`)") from None
    except UnicodeDecodeError:
        raise TranscriptError(f"{p}: not a transcript: not UTF-8 text (a binary file?)") from None
    except OSError as exc:
        raise TranscriptError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    if "\0" in text:
        raise TranscriptError(f"{p}: not a transcript: holds NUL bytes (a binary file?)")
    return parse_transcript(text, p.name, p)


# -- running ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Exchange:
    apdu: bytes
    expect: list[Segment]
    label: str = ""


@dataclass(frozen=True)
class Mismatch:
    """Where and how the card's answer differed from the transcript."""

    transcript: str
    step: int
    line: int
    source: str
    command: str  # hex, secrets masked
    expected: str
    actual: str
    explanation: str

    def __str__(self) -> str:
        return (
            f"{self.transcript}:{self.line}: step {self.step}: {self.explanation}\n"
            f"  line:     {self.source}\n"
            f"  command:  {self.command}\n"
            f"  expected: {self.expected}\n"
            f"  actual:   {self.actual}"
        )


@dataclass(frozen=True, slots=True)
class ExchangeLog:
    """One APDU sent: step number, transcript line, masked command, response."""

    step: int
    line: int
    command: str
    response: str
    ok: bool


@dataclass
class ReplayResult:
    """The outcome of one replay: every exchange made and the first mismatch, if any."""

    transcript: Transcript
    exchanges: list[ExchangeLog] = field(default_factory=list)
    mismatch: Mismatch | None = None
    variables: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.mismatch is None

    def raise_for_mismatch(self) -> None:
        """Raise TranscriptMismatch if the card did not answer as the transcript expects."""
        if self.mismatch is not None:
            raise TranscriptMismatch(self.mismatch)

    def summary(self) -> str:
        """One line: the transcript, OK or the mismatch's first line."""
        if self.mismatch is None:
            return f"{self.transcript.name}: OK ({len(self.exchanges)} APDUs)"
        return str(self.mismatch).splitlines()[0]


def _show(hexstr: str, focus: int | None = None, limit: int = 48) -> str:
    """Hex for a report, shortened around ``focus`` (a byte offset) when long."""
    n = len(hexstr) // 2
    if n <= limit:
        return hexstr
    head = hexstr[:32]
    tail = hexstr[-4:]
    mid = ""
    if focus is not None and 16 <= focus < n - 2:
        a, b = max(16, focus - 8), min(n - 2, focus + 8)
        mid = f"…[{a}:]" + hexstr[2 * a : 2 * b] + "…"
        return f"{head}{mid}{tail} ({n} bytes)"
    return f"{head}…{tail} ({n} bytes)"


def _show_pattern(segs: list[Segment], focus: int | None) -> str:
    text = _pattern_text(segs)
    if all(isinstance(s, _Lit) for s in segs):
        return _show(text, focus)
    parts = []
    for s in segs:
        parts.append(_show(s.hex, None, 24) if isinstance(s, _Lit) else _pattern_text([s]))
    return " ".join(parts)


def _item_exchanges(item: Item, variables: dict[str, object]) -> Generator[_Exchange, bytes, None]:
    if isinstance(item, Step):
        yield _Exchange(item.command(variables), _resolve(item.expect, variables))
        return
    yield from _read_exchanges(item, variables)


def _rb(offset: int, le: int) -> bytes:
    if offset > 0x7FFF:
        raise TranscriptError(f"READ BINARY offset {offset:#x} beyond 0x7FFF")
    return build_command(0x00, 0xB0, offset >> 8, offset & 0xFF, le=le)


def _read_exchanges(m: ReadMacro, variables: dict[str, object]) -> Generator[_Exchange, bytes, None]:
    obj = _render_bytes(m.expect, variables) if m.expect is not None else None

    def want(off: int, n: int) -> list[Segment]:
        body: Segment = _Lit(obj[off : off + n].hex().upper()) if obj is not None else _Any(n)
        return [body, _Lit("9000")]

    resp = yield _Exchange(build_command(0x00, 0xA4, 0x02, 0x0C, m.fid), [_Lit("9000")], f"SEL({m.fid.hex().upper()})")
    head_len = STYLES[m.style]
    resp = yield _Exchange(_rb(0, head_len), want(0, head_len), f"header RB(0,{head_len:02X})")
    head = resp[:-2]
    if m.style == "opensc":
        total = ((head[2] << 8) | head[3]) + 4
        got, off = b"", 0
    else:
        parsed = _der_length(head)
        if parsed is None:
            raise TranscriptError(f"the card's header {head.hex().upper()} is not a BER TLV header")
        total = parsed
        got, off = head, head_len
    chunk = 0
    while off < total:
        n = min(256, total - off)
        chunk += 1
        resp = yield _Exchange(_rb(off, n), want(off, n), f"chunk {chunk} RB({off:04X},{n & 0xFF:02X})")
        data = resp[:-2]
        if not data:
            raise TranscriptError(f"READ BINARY at {off:#x} returned no data")
        got += data
        off += len(data)
    if m.save:
        variables[m.save] = got


def _run(
    transcript: Transcript,
    transmit: Transmit | None,
    variables: Mapping[str, object],
    trace: Callable[[ExchangeLog], None] | None = None,
    sent: list[bytes] | None = None,
) -> ReplayResult:
    missing = sorted(n for n in transcript.variables_needed() if n not in variables)
    if missing:
        raise TranscriptError(f"{transcript.name}: variables not given: {', '.join(missing)} (nothing was sent)")
    run_vars = dict(variables)
    result = ReplayResult(transcript, variables=run_vars)
    step = 0
    for item in transcript.items:
        gen = _item_exchanges(item, run_vars)
        try:
            ex = next(gen)
            while True:
                step += 1
                if sent is not None:
                    sent.append(ex.apdu)
                if transmit is None:  # dry run
                    actual = _synthesize(ex.expect)
                    why, at = None, None
                else:
                    actual = bytes(transmit(ex.apdu))
                    why, at = _match(ex.expect, actual, ex.apdu)
                log = ExchangeLog(step, item.line, mask_command(ex.apdu), actual.hex().upper(), why is None)
                result.exchanges.append(log)
                if trace is not None:
                    trace(log)
                if why is not None:
                    label = f" ({ex.label})" if ex.label else ""
                    result.mismatch = Mismatch(
                        transcript.name,
                        step,
                        item.line,
                        item.text + label,
                        mask_command(ex.apdu),
                        _show_pattern(ex.expect, at),
                        _show(actual.hex().upper(), at),
                        why,
                    )
                    return result
                ex = gen.send(actual)
        except StopIteration:
            pass
        except TranscriptError as exc:
            raise TranscriptError(f"{transcript.name}:{item.line}: {exc}") from None
    return result


def replay(
    transcript: Transcript,
    transmit: Transmit,
    variables: Mapping[str, object],
    *,
    trace: Callable[[ExchangeLog], None] | None = None,
) -> ReplayResult:
    """Send the transcript's APDUs through ``transmit``; stop at the first unexpected answer.

    Raises TranscriptError (before anything is sent) when a variable is missing.
    ``trace`` is called with every exchange (command already masked).
    """
    return _run(transcript, transmit, variables, trace)


def replay_file(
    path: Path | str,
    transmit: Transmit,
    variables: Mapping[str, object],
    *,
    trace: Callable[[ExchangeLog], None] | None = None,
) -> ReplayResult:
    """``replay(load_transcript(path), ...)``; a bare name is looked up in apdu_specs/transcripts."""
    p: Path | Traversable = Path(path)
    if not p.exists() and p.parent == Path() and (TRANSCRIPT_DIR / p.with_suffix(".txt").name).is_file():
        p = TRANSCRIPT_DIR / p.with_suffix(".txt").name
    return replay(load_transcript(p), transmit, variables, trace=trace)


def expand(transcript: Transcript, variables: Mapping[str, object]) -> list[tuple[int, bytes, str]]:
    """The APDUs a transcript sends when the card answers as expected: (line, APDU, expected).

    Needs every value a read depends on (a ``@read`` with ``-`` is sized from zeros).
    """
    sent: list[bytes] = []
    result = _run(transcript, None, variables, sent=sent)
    return [(log.line, apdu, log.response) for log, apdu in zip(result.exchanges, sent, strict=True)]


def transcript_files(directory: Path | str | Traversable = TRANSCRIPT_DIR) -> list[Traversable]:
    """The transcript files (``*.txt``) of a directory, sorted by name; empty when there is none."""
    root = Path(directory) if isinstance(directory, str) else directory
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.endswith(".txt") and p.is_file()), key=lambda p: p.name)


# -- variables of an emulated card ----------------------------------------------------------

_SECRET_VARS = {"auth": "auth_pin", "sign": "sign_pin", "text": "text_pin", "juki": "juki_pin"}


def card_variables(card: Card, secrets: Mapping[str, str]) -> dict[str, Any]:
    """Variables for replaying against ``card`` (issued with ``secrets``: auth, sign, text, juki)."""
    from .issuance import persona_from_json
    from .persona import check_number_b, japanese_era_yymmdd

    out: dict[str, Any] = {}
    for key, var in _SECRET_VARS.items():
        if key in secrets:
            out[var] = secrets[key]
    if "juki" in secrets:
        out["common_pin"] = secrets["juki"]
    doc = card.dir.meta["persona"]
    for k, v in doc.items():
        out[f"persona.{k}"] = v
    persona = persona_from_json(doc)
    era = card.profile.check_b_japanese_era
    out["my_number"] = out["check_a"] = persona.my_number
    out["check_b"] = check_number_b(persona, japanese_era=era)
    out["birth_yymmdd"] = japanese_era_yymmdd(persona.birth) if era else persona.birth.strftime("%y%m%d")
    out["birth_yyyymmdd"] = persona.birth.strftime("%Y%m%d")
    for cid, value in card.dir.content.items():
        out[f"content:{cid}"] = value
    for name, cid in (("auth", "jpki.auth_cert"), ("sign", "jpki.sign_cert")):
        if card.dir.content.get(cid):
            out[f"cert:{name}"] = card.dir.content[cid]
    for name in card.profile.keys:
        out[f"tries:{name}"] = card.tries_left(name)
    # A terminal certificate the card's terminal CA issued (for 80 A2), of a fixed test key ID.
    from .cv_issuers import CvIssuers

    issuers = CvIssuers.load_or_create()
    out["terminal_cert"] = issuers.terminal_certificate(TEST_TERMINAL_KEY_ID, issuers.text_municipality.public_key())
    return out


TEST_TERMINAL_KEY_ID = bytes.fromhex("39303030393031080530303100000000")  # key_id("9000901"), emulated
