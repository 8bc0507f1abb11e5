"""Scenario controls seen through PC/SC: pyscard → pcscd → vpcd → FaultyCard → mynaemu.Card.

Every control is driven through ``CardControls.handle`` (the requests the control channel carries)
and its effect is read with pyscard: exact status words, SCARD_W_REMOVED_CARD, the reader EMPTY.
Waits use SCardGetStatusChange or events set by the fault injector, never fixed sleeps; a PC/SC
call that a fault holds runs in a worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_real_clients import SELECT_AUTH_PIN, SELECT_JPKI, scard_connect, verify_apdu

from mynaemu import Card
from mynaemu.controls import CardControls
from reader_bridge.pcscd import PcscError, find_vpcd_readers, pcsc_context, reader_name, wait_for_card
from reader_bridge.steering import FaultyCard, ReaderSlot
from tests.conftest import SECRETS

pytestmark = pytest.mark.pcsc
__all__ = ["scard_connect"]  # the fixture, imported for this module's tests

OK = b"\x90\x00"
QUERY = bytes.fromhex("00200080")
SLOT = 0
HUNG = 10.0


@dataclass
class Steered:
    card: Card
    faulty: FaultyCard
    controls: CardControls
    reader: str

    def do(self, op: str, **fields: object) -> dict:
        answer = self.controls.handle({"op": op, **fields})
        assert answer["ok"], answer
        return answer


@pytest.fixture
def steered(card_dir: Path, slots) -> Iterator[Steered]:
    # A card an earlier test took out may still show in PC/SC: let pcscd see the reader empty first.
    wait_for_card(reader_name(SLOT, find_vpcd_readers()), present=False, timeout=10)
    card = Card.load(card_dir)
    faulty = FaultyCard(card)
    presence = ReaderSlot(slots.readers, SLOT, faulty)
    reader = slots.insert(SLOT, faulty)
    yield Steered(card, faulty, CardControls(card, presence=presence, faults=faulty), reader)
    faulty.clear_faults()
    slots.close()
    card.close()


def at_auth_pin(conn) -> None:
    assert conn.transmit(SELECT_JPKI) == OK
    assert conn.transmit(SELECT_AUTH_PIN) == OK


def hresult_of(call) -> int:
    with pytest.raises(PcscError) as info:
        call()
    return info.value.hresult


def no_answer(call) -> object:
    """What a command that the card never answers gets: a PC/SC error, or (vpcd) a 0-byte success."""
    try:
        response = call()
    except PcscError as exc:
        return exc.hresult
    assert len(response) < 2, response  # no status word: not an answer of the card
    return response


def answering_again(conn, reader: str) -> None:
    """After a mute card was given up on: reconnect with RESET until it answers SELECT JPKI.

    pcscd may need a poll of the reader to take the new link; between attempts this waits for
    a change of the reader's state (SCardGetStatusChange, at most 0.2 s each), never sleeps.
    """
    from smartcard import scard as sc

    with pcsc_context() as ctx:
        state = sc.SCARD_STATE_UNAWARE
        for _ in range(50):
            try:
                conn.reconnect(sc.SCARD_RESET_CARD)
                if conn.transmit(SELECT_JPKI) == OK:
                    return
            except PcscError:
                pass
            hresult, result = sc.SCardGetStatusChange(ctx, 200, [(reader, state)])
            if hresult == sc.SCARD_S_SUCCESS:
                state = result[0][1] & ~sc.SCARD_STATE_CHANGED
    raise TimeoutError("the card does not answer again")


def test_block_is_seen_as_6984_and_unblock_as_63C3(steered: Steered, scard_connect) -> None:
    conn = scard_connect(steered.reader)
    at_auth_pin(conn)
    assert steered.do("block", key="auth")["tries_left"] == 0
    assert conn.transmit(QUERY) == b"\x63\xc0"  # the empty VERIFY always answers 63Cx (D4)
    assert conn.transmit(verify_apdu(SECRETS["auth"])) == b"\x69\x84"  # blocked: even the right PIN
    steered.do("unblock", key="auth")
    assert conn.transmit(QUERY) == b"\x63\xc3"
    assert conn.transmit(verify_apdu(SECRETS["auth"])) == OK


def test_set_tries_is_seen_as_63Cx_and_never_exceeds_the_limit(steered: Steered, scard_connect) -> None:
    conn = scard_connect(steered.reader)
    at_auth_pin(conn)
    steered.do("set-tries", key="auth", tries=1)
    assert conn.transmit(QUERY) == b"\x63\xc1"
    refused = steered.controls.handle({"op": "set-tries", "key": "auth", "tries": 4})
    assert refused["ok"] is False and "from 0 to 3" in refused["error"]
    assert conn.transmit(QUERY) == b"\x63\xc1"  # the refusal changed nothing
    assert conn.transmit(verify_apdu("0000")) == b"\x63\xc0"  # the last try
    assert conn.transmit(verify_apdu(SECRETS["auth"])) == b"\x69\x84"


def test_reset_pin_sets_the_new_value(steered: Steered, scard_connect) -> None:
    conn = scard_connect(steered.reader)
    at_auth_pin(conn)
    assert conn.transmit(verify_apdu("0000")) == b"\x63\xc2"
    steered.do("reset-pin", key="auth", new="4321")
    assert conn.transmit(QUERY) == b"\x63\xc3"
    assert conn.transmit(verify_apdu(SECRETS["auth"])) == b"\x63\xc2"
    assert conn.transmit(verify_apdu("4321")) == OK


def test_remove_is_seen_as_removed_card_and_empty_reader(steered: Steered, scard_connect) -> None:
    from smartcard import scard as sc

    conn = scard_connect(steered.reader)
    at_auth_pin(conn)
    assert conn.transmit(verify_apdu(SECRETS["auth"])) == OK
    assert steered.do("remove")["inserted"] is False
    assert wait_for_card(steered.reader, present=False, timeout=10) == b""
    assert hresult_of(lambda: conn.transmit(QUERY)) == sc.SCARD_W_REMOVED_CARD
    assert steered.do("status")["inserted"] is False
    steered.do("insert")
    wait_for_card(steered.reader, present=True, timeout=10)
    conn = scard_connect(steered.reader)
    assert steered.card.current_ap is None  # power-on state: the verified PIN is gone
    at_auth_pin(conn)
    assert conn.transmit(QUERY) == b"\x63\xc3"


def test_remove_fault_fires_on_the_nth_apdu_and_not_before(steered: Steered, scard_connect) -> None:
    from smartcard import scard as sc

    conn = scard_connect(steered.reader)
    steered.do("fault", kind="remove", at_apdu=3)
    assert conn.transmit(SELECT_JPKI) == OK  # 1
    assert conn.transmit(SELECT_AUTH_PIN) == OK  # 2
    assert steered.card.keyring["auth"].tries_left == 3
    no_answer(lambda: conn.transmit(verify_apdu("0000")))  # 3: the card leaves instead of answering
    assert wait_for_card(steered.reader, present=False, timeout=10) == b""
    assert hresult_of(lambda: conn.transmit(QUERY)) == sc.SCARD_W_REMOVED_CARD
    assert steered.card.tries_left("auth") == 3  # the command never reached the card
    status = steered.do("status")
    assert status["inserted"] is False and status["faults"] == []  # fired once, then gone
    assert [f.kind for f in steered.faulty.fired] == ["remove"]
    assert steered.faulty.fired[0].command == "0020008004********"  # masked
    steered.do("insert")
    wait_for_card(steered.reader, present=True, timeout=10)
    conn = scard_connect(steered.reader)
    at_auth_pin(conn)
    assert conn.transmit(QUERY) == b"\x63\xc3"


def test_remove_fault_fires_on_a_matching_command(steered: Steered, scard_connect) -> None:
    conn = scard_connect(steered.reader)
    steered.do("fault", kind="remove", match="0020??80 04")
    at_auth_pin(conn)
    assert conn.transmit(QUERY) == b"\x63\xc3"  # 00200080 without Lc does not match
    no_answer(lambda: conn.transmit(verify_apdu("0000")))
    assert wait_for_card(steered.reader, present=False, timeout=10) == b""
    assert steered.card.tries_left("auth") == 3


def test_error_fault_answers_6F00_on_matching_commands_only(steered: Steered, scard_connect) -> None:
    conn = scard_connect(steered.reader)
    steered.do("fault", kind="error", match="002000", times=2)
    assert conn.transmit(SELECT_JPKI) == OK
    assert conn.transmit(SELECT_AUTH_PIN) == OK
    assert conn.transmit(verify_apdu("0000")) == b"\x6f\x00"
    assert steered.card.tries_left("auth") == 3  # unexecuted: no try spent
    assert conn.transmit(QUERY) == b"\x6f\x00"
    assert conn.transmit(QUERY) == b"\x63\xc3"  # times=2: used up
    steered.do("fault", kind="error", match="0020")
    assert conn.transmit(QUERY) == b"\x6f\x00"
    assert steered.do("clear-faults")["cleared"] == 1
    assert conn.transmit(QUERY) == b"\x63\xc3"


def test_mute_fault_holds_the_command_unanswered_until_cleared(steered: Steered, scard_connect) -> None:
    conn = scard_connect(steered.reader)
    at_auth_pin(conn)
    steered.do("fault", kind="mute", match="00200080")
    outcome: dict[str, object] = {}

    def muted_call() -> None:
        try:
            outcome["answer"] = conn.transmit(QUERY)
        except PcscError as exc:
            outcome["error"] = exc.hresult

    worker = threading.Thread(target=muted_call, daemon=True)
    worker.start()
    assert steered.faulty.muted.wait(HUNG)  # the command reached the fault and is held
    assert worker.is_alive() and outcome == {}  # no answer while muted
    assert steered.do("clear-faults")["cleared"] == 0  # fired, so no longer armed; the held one goes
    worker.join(HUNG)
    assert not worker.is_alive()
    assert len(outcome.get("answer", b"")) < 2  # never answered: the reader gave up on the card
    answering_again(conn, steered.reader)  # the card was reset and is back
    assert steered.card.current_ap == "jpki"
    assert conn.transmit(SELECT_AUTH_PIN) == OK
    assert conn.transmit(QUERY) == b"\x63\xc3"


def test_mute_with_seconds_lets_the_reader_give_up_by_itself(steered: Steered, scard_connect) -> None:
    conn = scard_connect(steered.reader)
    steered.do("fault", kind="mute", at_apdu=1, seconds=0.2)
    no_answer(lambda: conn.transmit(SELECT_JPKI))
    answering_again(conn, steered.reader)
    assert steered.faulty.fired[0].kind == "mute"


def test_slow_fault_still_answers_right(steered: Steered, scard_connect) -> None:
    conn = scard_connect(steered.reader)
    steered.do("fault", kind="slow", seconds=0.05)
    at_auth_pin(conn)
    assert conn.transmit(verify_apdu("0000")) == b"\x63\xc2"
    assert conn.transmit(verify_apdu(SECRETS["auth"])) == OK
    assert steered.do("status")["faults"][0]["kind"] == "slow"


def test_clock_offset_is_visible_through_the_api(steered: Steered, card_dir: Path, scard_connect) -> None:
    before = steered.card.now()
    answer = steered.do("clock-offset", expire=True)
    cert_end = max(c.not_valid_after_utc for c in _certificates(steered.card))
    assert steered.card.now() > cert_end
    assert answer["clock_offset_seconds"] == int(steered.card.clock_offset.total_seconds()) > 0
    assert Card.load(card_dir, read_only=True).now() > cert_end  # durable: another view sees it
    steered.do("clock-offset", not_yet_valid=True)
    assert steered.card.now() < min(c.not_valid_before_utc for c in _certificates(steered.card))
    steered.do("clock-offset", seconds=0)
    assert steered.card.now() >= before
    conn = scard_connect(steered.reader)  # the chip is untouched by its clock
    at_auth_pin(conn)
    assert conn.transmit(QUERY) == b"\x63\xc3"


def _certificates(card: Card):
    from mynaemu.controls import _certificates as certificates

    return certificates(card)


def test_send_and_run_reach_the_card_through_a_reader(steered: Steered, tmp_path: Path, capsys) -> None:
    from mynaemu.cli import main

    select = SELECT_JPKI.hex().upper()
    assert main(["send", "--reader", steered.reader, select, "00A4020C020018", QUERY.hex()]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("00200080 -> 63C3")
    script = tmp_path / "read.apdu"
    script.write_text(f"{select} => 9000\n00A4020C02000A => 9000\n00B0000002 => 3082 9000\n")
    assert main(["run", str(script), "--reader", steered.reader]) == 0
    steered.do("fault", kind="error", match="00B0")  # the trainer breaks READ BINARY
    assert main(["run", str(script), "--reader", steered.reader]) == 1
    assert "line 3: expected 3082 9000, got 6F00" in capsys.readouterr().err
