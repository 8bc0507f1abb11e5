"""APDU scripts for ``mynaemu run``: one command per line, each with an optional expected answer.

    # select the JPKI-AP, read the first bytes of the auth certificate
    00A4040C0AD392F000260100000001 => 9000
    00A4020C02000A                 => 9000
    00B0000004                     => 30820??? 9000
    00A4020C020018
    0020008004${AUTH_PIN}          => 9000
    00200080                       => 63C?

An APDU is hex (spaces allowed). After ``=>`` comes the expected status word, optionally preceded
by the expected data; ``?`` matches any nibble, and data ending in ``*`` matches any rest. With
only a status word the data is not checked; a line without ``=>`` checks nothing. ``#`` starts a
comment. ``${NAME}`` is replaced by the hex of a variable's value (ASCII), ``${#NAME}`` by its
length as one hex byte (``00200080${#SIGN_PIN}${SIGN_PIN}``); variables are secrets, masked in
everything shown.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_VARIABLE = re.compile(r"\$\{(#?)([A-Za-z_][A-Za-z0-9_]*)\}")
_PATTERN = re.compile(r"[0-9A-F?]*\*?")
_COMMENT = re.compile(r"(?<!\$\{)#")  # "#" starts a comment, except in ${#NAME}


class ScriptError(ValueError):
    """A script line that cannot be run; the message names the line."""


@dataclass(frozen=True, slots=True)
class Expectation:
    """An expected answer: data pattern (None: not checked) and status word pattern, ``?`` wildcards."""

    data: str | None
    sw: str

    def matches(self, response: bytes) -> bool:
        text = response.hex().upper()
        if not _nibbles_match(self.sw, text[-4:]):
            return False
        return self.data is None or _nibbles_match(self.data, text[:-4])

    def __str__(self) -> str:
        return self.sw if self.data is None else f"{self.data} {self.sw}"


def _nibbles_match(pattern: str, text: str) -> bool:
    if pattern.endswith("*"):
        pattern = pattern[:-1]
        text = text[: len(pattern)]
    return len(pattern) == len(text) and all(p in ("?", t) for p, t in zip(pattern, text, strict=True))


@dataclass(frozen=True, slots=True)
class ScriptLine:
    """One command of a script: its line number, the APDU text with variables, what it expects."""

    number: int
    apdu_text: str
    expect: Expectation | None

    def variables(self) -> set[str]:
        return {m.group(2) for m in _VARIABLE.finditer(self.apdu_text)}

    def apdu(self, values: Mapping[str, str]) -> bytes:
        """The APDU with variables filled in; ScriptError (never quoting a value) when it is not hex."""

        def fill(m: re.Match[str]) -> str:
            raw = values[m.group(2)].encode("ascii", "replace")
            if m.group(1):
                if len(raw) > 255:
                    raise ScriptError(f"line {self.number}: ${{#{m.group(2)}}} is longer than 255 bytes")
                return f"{len(raw):02X}"
            return raw.hex()

        text = _VARIABLE.sub(fill, self.apdu_text)
        try:
            apdu = bytes.fromhex(text)
        except ValueError:
            raise ScriptError(f"line {self.number}: the APDU is not whole bytes of hex") from None
        if len(apdu) < 4:
            raise ScriptError(f"line {self.number}: an APDU is at least 4 bytes (CLA INS P1 P2)")
        return apdu


def parse_script(text: str) -> list[ScriptLine]:
    """The commands of a script; ScriptError naming the first line that is not one."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        body = _COMMENT.split(raw, maxsplit=1)[0].strip()
        if not body:
            continue
        command, arrow, expected = body.partition("=>")
        apdu_text = "".join(command.split())
        if not apdu_text:
            raise ScriptError(f"line {number}: no APDU before =>")
        shown = _VARIABLE.sub("", apdu_text)
        if not re.fullmatch(r"[0-9A-Fa-f]*", shown):
            raise ScriptError(f"line {number}: the APDU must be hex digits and ${{NAME}} variables")
        expect = None
        if arrow:
            words = expected.upper().split()
            if not words:
                raise ScriptError(f"line {number}: nothing after =>; give the status word (e.g. 9000)")
            sw, data = words[-1], "".join(words[:-1]) or None
            if not re.fullmatch(r"[0-9A-F?]{4}", sw):
                raise ScriptError(f"line {number}: the expected status word must be 4 hex digits or ? (e.g. 63C?)")
            if data is not None and (not _PATTERN.fullmatch(data) or len(data.rstrip("*")) % 2):
                raise ScriptError(f"line {number}: the expected data must be whole bytes of hex or ?, "
                                  "optionally ending in *")
            expect = Expectation(data, sw)
        lines.append(ScriptLine(number, apdu_text, expect))
    return lines


@dataclass(slots=True)
class Mismatch:
    """The first line whose answer was not the expected one."""

    line: ScriptLine
    command: bytes
    response: bytes


def run_script(lines: list[ScriptLine], values: Mapping[str, str], transmit: Callable[[bytes], bytes],
               show: Callable[[ScriptLine, bytes, bytes], object] | None = None) -> Mismatch | None:
    """Send every line's APDU in order; stop at the first answer that does not match (returned)."""
    missing = sorted({name for line in lines for name in line.variables()} - set(values))
    if missing:
        first = next(line.number for line in lines if line.variables() & set(missing))
        raise ScriptError(f"line {first}: variable(s) {', '.join(missing)} not given (--var NAME=VALUE, "
                          "--var-file, or the environment); nothing was sent")
    commands = [line.apdu(values) for line in lines]  # every line checked before the first is sent
    for line, command in zip(lines, commands, strict=True):
        response = transmit(command)
        if show is not None:
            show(line, command, response)
        if line.expect is not None and not line.expect.matches(response):
            return Mismatch(line, command, response)
    return None
