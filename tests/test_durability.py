"""Durable retry counters: crash at every write step, failed writes, corrupt files (Part A.3)."""

from __future__ import annotations

import errno
import json
import stat

import pytest

from mynaemu import Card, StateError
from mynaemu.state import CRASH_POINTS

from .conftest import select_ap, select_ef, verify


class SimulatedCrash(BaseException):
    """The process dies here: nothing after this instant happens (not even an answer)."""


def crash_at(point: str):
    def fault(where: str) -> None:
        if where == point:
            raise SimulatedCrash(where)

    return fault


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_during_wrong_verify_never_gives_an_extra_try(card_dir, point: str) -> None:
    card = Card.load(card_dir)
    select_ap(card, "jpki")
    select_ef(card, "0018")
    assert verify(card, "0000") == b"\x63\xc2"  # an answered attempt ...
    assert Card.load(card_dir).tries_left("auth") == 2  # ... is on disk before the answer
    card.store.fault = crash_at(point)
    with pytest.raises(SimulatedCrash):
        verify(card, "0001")  # the crash: no answer leaves the card
    after = Card.load(card_dir).tries_left("auth")
    # Before the rename the old state stands, after it the new one: never more than 2 tries.
    assert after == (2 if CRASH_POINTS.index(point) < CRASH_POINTS.index("renamed") else 1)
    # And the card still works from the state it reloaded.
    reloaded = Card.load(card_dir)
    select_ap(reloaded, "jpki")
    select_ef(reloaded, "0018")
    assert verify(reloaded, "1234") == b"\x90\x00"
    assert reloaded.tries_left("auth") == 3


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_during_pin_change_keeps_old_or_new_pin(card_dir, point: str) -> None:
    card = Card.load(card_dir)
    select_ap(card, "jpki")
    select_ef(card, "0018")
    verify(card, "1234")
    card.store.fault = crash_at(point)
    with pytest.raises(SimulatedCrash):
        card.transmit(bytes.fromhex("0024018004") + b"4321")
    reloaded = Card.load(card_dir)
    select_ap(reloaded, "jpki")
    select_ef(reloaded, "0018")
    new = CRASH_POINTS.index(point) >= CRASH_POINTS.index("renamed")
    assert verify(reloaded, "4321" if new else "1234") == b"\x90\x00"


def test_failed_write_refuses_command_and_changes_nothing(card_dir) -> None:
    card = Card.load(card_dir)
    before = (card_dir / "state.json").read_bytes()
    select_ap(card, "jpki")
    select_ef(card, "0018")

    def disk_full(where: str) -> None:
        if where == "written":
            raise OSError(errno.ENOSPC, "No space left on device")

    card.store.fault = disk_full
    assert verify(card, "0000") == b"\x65\x81"
    assert card.tries_left("auth") == 3
    assert (card_dir / "state.json").read_bytes() == before
    card.store.fault = None
    assert verify(card, "0000") == b"\x63\xc2"


def test_read_only_directory_refuses_wrong_verify(card_dir) -> None:
    import os

    if os.geteuid() == 0:
        # root ignores directory permissions; use a fault that fails like EROFS instead.
        card = Card.load(card_dir)

        def read_only(where: str) -> None:
            if where == "open":
                raise OSError(errno.EROFS, "Read-only file system")

        card.store.fault = read_only
    else:
        card = Card.load(card_dir)
        card_dir.chmod(0o500)
    try:
        select_ap(card, "jpki")
        select_ef(card, "0018")
        assert verify(card, "0000") == b"\x65\x81"
        assert verify(card, "1234") == b"\x90\x00"  # a match on a full counter needs no write
    finally:
        card_dir.chmod(0o700)
    assert Card.load(card_dir).tries_left("auth") == 3


def test_right_verify_on_full_counter_writes_nothing(card_dir) -> None:
    card = Card.load(card_dir)
    writes = []
    card.store.fault = lambda where: writes.append(where)
    select_ap(card, "jpki")
    select_ef(card, "0018")
    assert verify(card, "1234") == b"\x90\x00"
    assert writes == []
    verify(card, "0000")
    assert writes == list(CRASH_POINTS)


def _mutations():
    def truncate(raw: bytes) -> bytes:
        return raw[: len(raw) // 2]

    def garbage(raw: bytes) -> bytes:
        return b"\x00\xff not json"

    def version(raw: bytes) -> bytes:
        doc = json.loads(raw)
        doc["version"] = 99
        return json.dumps(doc).encode()

    def foreign(raw: bytes) -> bytes:
        doc = json.loads(raw)
        doc["card_id"] = "999999999999999"
        return json.dumps(doc).encode()

    def out_of_range(raw: bytes) -> bytes:
        doc = json.loads(raw)
        doc["keys"]["auth"]["tries_left"] = 7
        return json.dumps(doc).encode()

    def empty(raw: bytes) -> bytes:
        return b""

    return {"truncated": truncate, "garbage": garbage, "version": version, "foreign": foreign,
            "out_of_range": out_of_range, "empty": empty}


CORRUPTIONS = [
    (name, kind)
    for name in ("state.json", "content.json", "keys.json", "card.json")
    for kind in _mutations()
    if kind != "out_of_range" or name == "state.json"  # tries_left exists only in state.json
]


@pytest.mark.parametrize(("name", "kind"), CORRUPTIONS)
def test_corrupt_files_are_refused_and_left_untouched(card_dir, kind: str, name: str) -> None:
    path = card_dir / name
    raw = path.read_bytes()
    bad = _mutations()[kind](raw)
    path.write_bytes(bad)
    with pytest.raises(StateError) as exc:
        Card.load(card_dir)
    assert str(path) in str(exc.value)
    assert path.read_bytes() == bad


def test_missing_state_is_refused_not_recreated(card_dir) -> None:
    (card_dir / "state.json").unlink()
    with pytest.raises(StateError, match="missing"):
        Card.load(card_dir)
    assert not (card_dir / "state.json").exists()


def test_secret_files_are_0600(card_dir, issued_template) -> None:
    for path in (issued_template.path / "state.json", issued_template.path / "keys.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(issued_template.path.stat().st_mode) == 0o700
    card = Card.load(card_dir)
    select_ap(card, "jpki")
    select_ef(card, "0018")
    verify(card, "0000")  # rewrites state.json
    assert stat.S_IMODE((card_dir / "state.json").stat().st_mode) == 0o600
