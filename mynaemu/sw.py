"""Status words the card answers, as 2-byte constants, and their meanings.

JICSAP (the Japanese IC-card spec the card follows) gives a few words meanings that differ from
ISO 7816-4; the meanings below are the card's (docs/card-interface.md §9).
"""

from __future__ import annotations

OK = b"\x90\x00"
WRONG_LENGTH = b"\x67\x00"
MEMORY_FAILURE = b"\x65\x81"
LOGICAL_CHANNEL_NOT_SUPPORTED = b"\x68\x81"
SECURE_MESSAGING_NOT_SUPPORTED = b"\x68\x82"
CHAINING_NOT_SUPPORTED = b"\x68\x84"
COMMAND_INCOMPATIBLE = b"\x69\x81"
SM_DATA_OBJECTS_MISSING = b"\x69\x87"
SM_DATA_OBJECTS_INCORRECT = b"\x69\x88"
NO_SESSION_KEY_HERE = b"\x66\xf1"
NO_SM_SESSION = b"\x69\xfc"
SECURITY_STATUS_NOT_SATISFIED = b"\x69\x82"
KEY_BLOCKED = b"\x69\x84"
CONDITIONS_NOT_SATISFIED = b"\x69\x85"
NO_CURRENT_EF = b"\x69\x86"
WRONG_DATA = b"\x6a\x80"
FILE_NOT_FOUND = b"\x6a\x82"
RECORD_NOT_FOUND = b"\x6a\x83"
WRONG_P1P2 = b"\x6a\x86"
DATA_NOT_FOUND = b"\x6a\x88"
OFFSET_OUT_OF_RANGE = b"\x6b\x00"
INS_NOT_SUPPORTED = b"\x6d\x00"
CLA_NOT_SUPPORTED = b"\x6e\x00"
INTERNAL_ERROR = b"\x6f\x00"

# 63Cx for every x, precomputed: the VERIFY path answers one of these on every wrong try.
TRIES_LEFT = tuple(bytes((0x63, 0xC0 | n)) for n in range(16))

MEANINGS: dict[bytes, str] = {
    OK: "success",
    WRONG_LENGTH: "wrong length",
    MEMORY_FAILURE: "memory failure (state could not be written; nothing changed)",
    LOGICAL_CHANNEL_NOT_SUPPORTED: "logical channel not supported",
    SECURE_MESSAGING_NOT_SUPPORTED: "secure messaging not supported",
    CHAINING_NOT_SUPPORTED: "command chaining not supported",
    COMMAND_INCOMPATIBLE: "command incompatible with file structure",
    SM_DATA_OBJECTS_MISSING: "secure messaging data objects missing",
    SM_DATA_OBJECTS_INCORRECT: "secure messaging data objects incorrect (the session has ended)",
    NO_SESSION_KEY_HERE: "no secure messaging in this application",
    NO_SM_SESSION: "no secure messaging session",
    SECURITY_STATUS_NOT_SATISFIED: "security status not satisfied",
    KEY_BLOCKED: "referenced key blocked",
    CONDITIONS_NOT_SATISFIED: "conditions of use not satisfied",
    NO_CURRENT_EF: "no current EF",
    WRONG_DATA: "incorrect data",
    FILE_NOT_FOUND: "file or application not found",
    RECORD_NOT_FOUND: "record not found",
    WRONG_P1P2: "incorrect P1/P2",
    DATA_NOT_FOUND: "referenced data not found",
    OFFSET_OUT_OF_RANGE: "offset beyond end of file",
    INS_NOT_SUPPORTED: "instruction not supported",
    CLA_NOT_SUPPORTED: "class not supported",
    INTERNAL_ERROR: "internal error",
}


def describe(sw: bytes) -> str:
    """A short English meaning of a status word."""
    if len(sw) != 2:
        return "no status word"
    if sw[0] == 0x63 and sw[1] & 0xF0 == 0xC0:
        n = sw[1] & 0x0F
        return "key blocked (0 tries left)" if n == 0 else f"verification failed or queried, {n} tries left"
    return MEANINGS.get(bytes(sw), "unknown status")
