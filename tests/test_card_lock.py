"""One writing process per card: a second one is refused, so no process undoes another's decrement."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mynaemu import Card, StateError

from .conftest import select_ap, select_ef, verify

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mynaemu", *args], capture_output=True, text=True, timeout=60, env=env)


def test_second_process_is_refused_while_card_is_held(card_dir: Path) -> None:
    card = Card.load(card_dir)
    res = cli("send", str(card_dir), "00A4040C0AD392F000260100000001")
    assert res.returncode == 2
    assert "in use by another process" in res.stderr and str(card_dir) in res.stderr
    info = cli("info", str(card_dir), "--json")  # read-only: allowed beside the writer
    assert info.returncode == 0, info.stderr
    card.close()
    res = cli("send", str(card_dir), "00A4040C0AD392F000260100000001")
    assert res.returncode == 0 and "9000" in res.stdout


def test_a_second_writable_load_in_one_process_is_refused(card_dir: Path) -> None:
    first = Card.load(card_dir)
    with pytest.raises(StateError, match="already loaded for writing in this process"):
        Card.load(card_dir)
    first.close()
    second = Card.load(card_dir)  # once the first is closed, the card may be loaded again
    assert cli("send", str(card_dir), "00A40000").returncode == 2  # ... and that load holds it
    second.close()
    assert cli("send", str(card_dir), "00A40000").returncode == 0


def test_read_only_card_refuses_state_changes(card_dir: Path) -> None:
    before = (card_dir / "state.json").read_bytes()
    card = Card.load(card_dir, read_only=True)
    select_ap(card, "jpki")
    select_ef(card, "0018")
    assert verify(card, "0000") == b"\x65\x81"
    assert verify(card, "1234") == b"\x65\x81"  # never compared: a read-only view is no PIN oracle
    assert card.tries_left("auth") == 3
    assert (card_dir / "state.json").read_bytes() == before


def test_forked_child_does_not_keep_the_parents_lock(card_dir: Path) -> None:
    card = Card.load(card_dir)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: waits until the parent let go, then must be able to take the card
        os.close(w)
        os.read(r, 1)
        try:
            Card.load(card_dir).close()
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(r)
    card.close()
    os.write(w, b"x")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_lock_goes_with_the_last_reference_even_without_gc(card_dir: Path) -> None:
    import gc

    gc.disable()
    try:
        card = Card.load(card_dir)
        card.transmit(bytes.fromhex("00A4040C0AD392F000260100000001"))  # exercise the SELECT handler
        del card  # no reference cycle keeps a Card alive: the lock goes at once
        assert cli("send", str(card_dir), "00A40000").returncode == 0
    finally:
        gc.enable()


def test_card_is_a_context_manager(card_dir: Path) -> None:
    with Card.load(card_dir) as card:
        assert cli("send", str(card_dir), "00A40000").returncode == 2
        assert card.transmit(bytes.fromhex("00A40000")) == b"\x6a\x86"
    assert cli("send", str(card_dir), "00A40000").returncode == 0
