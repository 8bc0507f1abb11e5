"""Durable retry counters: crash at every write step, failed writes, corrupt files (D3)."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from mynaemu import Card, StateError
from mynaemu.state import CRASH_POINTS

from .conftest import query, select_ap, select_ef, verify


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
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 2  # ... is on disk before the answer
    card.store.fault = crash_at(point)
    with pytest.raises(SimulatedCrash):
        verify(card, "0001")  # the crash: no answer leaves the card
    card.close()
    after = Card.load(card_dir, read_only=True).tries_left("auth")
    # Before the rename the old state stands, after it the new one: never more than 2 tries.
    assert after == (2 if CRASH_POINTS.index(point) < CRASH_POINTS.index("renamed") else 1)
    # And the card still works from the state it reloaded.
    reloaded = Card.load(card_dir)
    select_ap(reloaded, "jpki")
    select_ef(reloaded, "0018")
    assert verify(reloaded, "1234") == b"\x90\x00"
    assert reloaded.tries_left("auth") == 3


@pytest.mark.parametrize("write", [1, 2])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_during_right_verify_costs_at_most_one_try(card_dir, point: str, write: int) -> None:
    """A right attempt is two writes (decrement, then reset): a crash in either never gains a try."""
    card = Card.load(card_dir)
    select_ap(card, "jpki")
    select_ef(card, "0018")
    seen: list[str] = []

    def fault(where: str) -> None:
        seen.append(where)
        if len(seen) == (write - 1) * len(CRASH_POINTS) + CRASH_POINTS.index(point) + 1:
            raise SimulatedCrash(where)

    card.store.fault = fault
    with pytest.raises(SimulatedCrash):
        verify(card, "1234")
    card.close()
    after = Card.load(card_dir, read_only=True).tries_left("auth")
    renamed = CRASH_POINTS.index(point) >= CRASH_POINTS.index("renamed")
    expected = {(1, False): 3, (1, True): 2, (2, False): 2, (2, True): 3}[(write, renamed)]
    assert after == expected


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_during_pin_change_keeps_old_or_new_pin(card_dir, point: str) -> None:
    card = Card.load(card_dir)
    select_ap(card, "jpki")
    select_ef(card, "0018")
    verify(card, "1234")
    card.store.fault = crash_at(point)
    with pytest.raises(SimulatedCrash):
        card.transmit(bytes.fromhex("0024018004") + b"4321")
    card.close()
    reloaded = Card.load(card_dir)
    select_ap(reloaded, "jpki")
    select_ef(reloaded, "0018")
    new = CRASH_POINTS.index(point) >= CRASH_POINTS.index("renamed")
    assert verify(reloaded, "4321" if new else "1234") == b"\x90\x00"


def _failing(point: str, err: int = errno.ENOSPC):
    def fault(where: str) -> None:
        if where == point:
            raise OSError(err, os.strerror(err))

    return fault


@pytest.mark.parametrize("value", ["0000", "1234"])
@pytest.mark.parametrize("point", ["open", "written", "synced"])
def test_failed_decrement_refuses_without_comparing(card_dir, point: str, value: str) -> None:
    """A wrong and a right value answer alike (6581) when the decrement cannot be written."""
    card = Card.load(card_dir)
    before = (card_dir / "state.json").read_bytes()
    select_ap(card, "jpki")
    select_ef(card, "0018")
    card.store.fault = _failing(point)
    assert verify(card, value) == b"\x65\x81"
    assert "auth" not in card.session.verified
    assert card.tries_left("auth") == 3
    assert (card_dir / "state.json").read_bytes() == before
    card.store.fault = None
    assert verify(card, "0000") == b"\x63\xc2"


@pytest.mark.parametrize("value", ["0000", "1234"])
@pytest.mark.parametrize("point", ["renamed", "dir_synced"])
def test_write_failing_after_its_rename_leaves_memory_as_the_disk(card_dir, point: str, value: str) -> None:
    """EIO after the rename: the decrement is on disk, so memory takes it too; the answer is 6581."""
    card = Card.load(card_dir)
    select_ap(card, "jpki")
    select_ef(card, "0018")
    card.store.fault = _failing(point, errno.EIO)
    assert verify(card, value) == b"\x65\x81"
    on_disk = Card.load(card_dir, read_only=True).tries_left("auth")
    assert on_disk == 2
    assert card.tries_left("auth") == on_disk
    card.store.fault = None
    assert query(card) == b"\x63\xc2"
    assert verify(card, "0000") == b"\x63\xc1"
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 1


def test_state_that_cannot_be_read_back_refuses_everything_until_it_can(card_dir) -> None:
    card = Card.load(card_dir)
    select_ap(card, "jpki")
    select_ef(card, "0018")
    card.store.fault = _failing("renamed", errno.EIO)
    state = card_dir / "state.json"
    real_load = card.store.load
    card.store.load = lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error"))  # type: ignore[method-assign]
    assert verify(card, "0000") == b"\x65\x81"
    assert card.keyring.stale
    assert query(card) == b"\x65\x81"  # even the retry query: memory may be wrong
    assert verify(card, "1234") == b"\x65\x81"
    card.store.load = real_load  # type: ignore[method-assign]
    card.store.fault = None
    assert query(card) == b"\x63\xc2"  # read back: the decrement that reached the disk
    assert card.keyring.stale is None
    assert json.loads(state.read_bytes())["keys"]["auth"]["tries_left"] == 2


def test_read_only_view_never_compares(card_dir) -> None:
    """A read-only load (e.g. beside a served card) is no oracle: VERIFY with data is 6581 uncompared."""
    before = (card_dir / "state.json").read_bytes()
    card = Card.load(card_dir, read_only=True)
    select_ap(card, "jpki")
    select_ef(card, "0018")
    compared = []
    card.keyring.keys["auth"].digest = _Spy(card.keyring.keys["auth"].digest, compared)
    assert verify(card, "0000") == b"\x65\x81"
    assert verify(card, "1234") == b"\x65\x81"
    assert query(card) == b"\x63\xc3"  # the retry query still answers
    assert compared == []
    assert card.tries_left("auth") == 3
    assert (card_dir / "state.json").read_bytes() == before


class _Spy(bytes):
    """A digest that records being compared (hmac.compare_digest reads it through the buffer protocol)."""

    def __new__(cls, value: bytes, log: list) -> _Spy:
        obj = super().__new__(cls, value)
        obj.log = log  # type: ignore[attr-defined]
        return obj

    def __buffer__(self, flags: int) -> memoryview:  # Python 3.12+; on 3.11 the check below still holds
        self.log.append("compared")  # type: ignore[attr-defined]
        return memoryview(bytes(self))

    def __bool__(self) -> bool:
        self.log.append("compared")  # type: ignore[attr-defined]
        return super().__len__() > 0


def test_read_only_directory_refuses_every_attempt(card_dir) -> None:
    if os.geteuid() == 0:
        # root ignores directory permissions; use a fault that fails like EROFS instead.
        card = Card.load(card_dir)
        card.store.fault = _failing("open", errno.EROFS)
    else:
        card = Card.load(card_dir)
        card_dir.chmod(0o500)
    try:
        select_ap(card, "jpki")
        select_ef(card, "0018")
        assert verify(card, "0000") == b"\x65\x81"
        assert verify(card, "1234") == b"\x65\x81"  # a right value is no different: nothing was compared
        assert "auth" not in card.session.verified
    finally:
        card_dir.chmod(0o700)
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 3


def test_every_attempt_writes_before_it_answers(card_dir) -> None:
    card = Card.load(card_dir)
    writes: list[str] = []
    card.store.fault = writes.append
    select_ap(card, "jpki")
    select_ef(card, "0018")
    assert verify(card, "1234") == b"\x90\x00"
    assert writes == list(CRASH_POINTS) * 2  # the decrement, then the reset
    writes.clear()
    assert verify(card, "0000") == b"\x63\xc2"
    assert writes == list(CRASH_POINTS)  # the decrement
    writes.clear()
    assert query(card) == b"\x63\xc2"
    assert writes == []  # the retry query compares nothing, writes nothing


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
