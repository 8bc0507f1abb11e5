"""Scenario controls without a reader: KeyRing.set_tries, the card clock, certificate hooks, faults, scripts, ctl."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest

from mynaemu import Card, StateError
from mynaemu.cli import main
from mynaemu.controls import (
    CardControls,
    CommandPattern,
    ControlError,
    FaultSpec,
    NotAvailable,
    register_certificate_operations,
)
from tests.conftest import SECRETS

SELECT_JPKI = "00A4040C0AD392F000260100000001"


# -- keys -------------------------------------------------------------------------------------------
def test_set_tries_never_raises_a_counter_above_the_limit(card: Card, card_dir: Path) -> None:
    ring = card.keyring
    ring.set_tries("auth", 1)
    for bad in (4, -1, True, 2.0, "2"):
        with pytest.raises(ValueError, match="from 0 to 3"):
            ring.set_tries("auth", bad)  # type: ignore[arg-type]
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 1  # durable, and unchanged by the refusals
    ring.set_tries("auth", 3)
    assert ring["auth"].tries_left == 3


def test_block_then_the_right_pin_answers_6984(card: Card) -> None:
    controls = CardControls(card)
    assert controls.block("sign") == 0
    card.transmit(bytes.fromhex(SELECT_JPKI))
    card.transmit(bytes.fromhex("00A4020C02001B"))
    value = SECRETS["sign"].encode()
    assert card.transmit(bytes((0, 0x20, 0, 0x80, len(value))) + value) == b"\x69\x84"
    assert controls.unblock("sign") == 5


def test_reader_controls_need_a_reader(card: Card) -> None:
    controls = CardControls(card)
    for request in ({"op": "remove"}, {"op": "insert"}, {"op": "fault", "kind": "error", "at_apdu": 1}):
        answer = controls.handle(request)
        assert answer == {"ok": False, "error": answer["error"], "kind": "failed"} and "reader" in answer["error"]


# -- the clock --------------------------------------------------------------------------------------
def test_clock_offset_is_durable_private_and_checked(card: Card, card_dir: Path) -> None:
    controls = CardControls(card)
    assert card.clock_offset == dt.timedelta(0)
    controls.set_clock_offset(400 * 86400)
    assert (card.now() - dt.datetime.now(dt.UTC)).days in (399, 400)
    path = card_dir / "controls.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Card.load(card_dir, read_only=True).clock_offset == dt.timedelta(days=400)
    with pytest.raises(ControlError, match="whole number of seconds"):
        controls.set_clock_offset(10**12)
    assert card.clock_offset == dt.timedelta(days=400)
    answer = controls.handle({"op": "clock-offset", "shift": -86400})
    assert answer["clock_offset_seconds"] == 399 * 86400
    card.close()
    doc = json.loads(path.read_text())
    doc["clock_offset_seconds"] = "soon"
    path.write_text(json.dumps(doc))
    with pytest.raises(StateError, match=r"controls\.json: clock_offset_seconds"):
        Card.load(card_dir)


def test_expire_and_not_yet_valid_move_the_clock_past_the_certificates(card: Card) -> None:
    from mynaemu.controls import _certificates

    certs = _certificates(card)
    assert len(certs) == 2
    controls = CardControls(card)
    controls.expire_certificates()
    assert all(card.now() > c.not_valid_after_utc for c in certs)
    controls.make_certificates_not_yet_valid()
    assert all(card.now() < c.not_valid_before_utc for c in certs)
    assert card.clock()() <= card.now()


# -- certificate operations -------------------------------------------------------------------------
@pytest.fixture
def without_the_authority():
    """The built-in certificate operations, as when mynaemu.authority is not installed."""
    from mynaemu.authority.hooks import AuthorityCertificateOperations
    from mynaemu.controls import BUILTIN_CERTIFICATE_OPERATIONS

    register_certificate_operations(BUILTIN_CERTIFICATE_OPERATIONS)
    yield
    register_certificate_operations(AuthorityCertificateOperations())


def test_certificate_operations_are_not_available_without_the_authority(card: Card, without_the_authority) -> None:
    controls = CardControls(card)
    for op in ("hold", "lift", "reissue"):
        answer = controls.handle({"op": op})
        assert answer == {"ok": False, "kind": "failed",
                          "error": f"{op}: not available: the authority service is not installed (mynaemu.authority)"}
    with pytest.raises(NotAvailable):
        controls.certificate_operation("hold")


def test_revoke_is_backed_by_suspend_until_the_authority_registers(card: Card, without_the_authority) -> None:
    answer = CardControls(card).handle({"op": "revoke"})
    assert answer["ok"], answer
    assert answer["revoke"]["suspended"] == card.dir.meta["suspended"]
    assert set(answer["revoke"]["crls"]) == {"auth", "sign"}


def test_registered_certificate_operations_are_called_holding_the_card(card: Card) -> None:
    calls: list[tuple[str, bool, dt.datetime]] = []

    class Authority:
        def _note(self, op: str, c: Card) -> dict:
            held = c.mutex._is_owned()  # type: ignore[attr-defined]
            calls.append((op, held, c.now()))
            return {"status": op}

        def hold(self, c: Card) -> dict:
            return self._note("hold", c)

        def lift(self, c: Card) -> dict:
            return self._note("lift", c)

        def revoke(self, c: Card) -> dict:
            return self._note("revoke", c)

        def reissue(self, c: Card) -> dict:
            return self._note("reissue", c)

    register_certificate_operations(Authority())
    try:
        controls = CardControls(card)
        controls.set_clock_offset(3600)
        for op in ("hold", "lift", "revoke", "reissue"):
            assert controls.handle({"op": op}) == {"ok": True, op: {"status": op}}
    finally:
        from mynaemu.authority.hooks import AuthorityCertificateOperations

        register_certificate_operations(AuthorityCertificateOperations())  # the installed authority's again
    assert [c[0] for c in calls] == ["hold", "lift", "revoke", "reissue"] and all(c[1] for c in calls)
    assert calls[0][2] > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=59)  # at the card's time
    with pytest.raises(TypeError):
        register_certificate_operations(object())  # type: ignore[arg-type]


# -- faults -----------------------------------------------------------------------------------------
def test_command_patterns_match_prefixes_with_wildcards_and_masks() -> None:
    p = CommandPattern.parse("00 20 ?? 80")
    assert p.matches(bytes.fromhex("0020008004313233")) and p.matches(bytes.fromhex("00200180"))
    assert not p.matches(bytes.fromhex("00200081")) and not p.matches(bytes.fromhex("002000"))
    masked = CommandPattern.parse("0020", mask="FCFF")  # any logical channel in the class byte
    assert masked.matches(bytes.fromhex("03200080")) and not masked.matches(bytes.fromhex("04200080"))
    for bad in ("0G", "002", "", 7):
        with pytest.raises(ControlError):
            CommandPattern.parse(bad)


@pytest.mark.parametrize("request_, message", [
    ({"kind": "explode"}, "fault kind must be one of"),
    ({"kind": "remove"}, "needs match or at_apdu"),
    ({"kind": "remove", "match": "00", "at_apdu": 2}, "not both"),
    ({"kind": "remove", "at_apdu": 0}, "at_apdu must be a whole number from 1"),
    ({"kind": "slow"}, "needs seconds"),
    ({"kind": "slow", "seconds": float("inf")}, "seconds must be a number"),
    ({"kind": "error", "at_apdu": 1, "seconds": 1}, "takes no seconds"),
    ({"kind": "mute", "at_apdu": 1, "times": 2}, "fires once"),
    ({"kind": "error", "at_apdu": 1, "colour": "red"}, "unknown fault field"),
])
def test_bad_fault_requests_are_refused(request_: dict, message: str) -> None:
    with pytest.raises(ControlError, match=message):
        FaultSpec.from_request(request_)


def test_fault_spec_describes_itself_as_a_request() -> None:
    spec = FaultSpec.from_request({"kind": "error", "match": "00b0", "times": 2})
    assert spec.describe() == {"kind": "error", "match": "00B0", "times": 2}
    assert FaultSpec.from_request(spec.describe()) == spec


# -- ctl on a card that is not served ---------------------------------------------------------------
def test_ctl_works_on_a_card_directory_that_is_not_served(card_dir: Path, capsys, private_authority: Path) -> None:
    assert main(["ctl", str(card_dir), "set-tries", "auth", "1"]) == 0
    assert capsys.readouterr().out == "auth: 1/3 tries\n"
    assert main(["ctl", str(card_dir), "clock-offset", "+2d"]) == 0
    assert main(["ctl", str(card_dir), "--json", "status"]) == 0
    status = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert status["clock_offset_seconds"] == 2 * 86400 and status["keys"]["auth"]["tries_left"] == 1
    assert status["inserted"] is None
    assert main(["ctl", str(card_dir), "clock-offset", "--", "-1h"]) == 0
    assert Card.load(card_dir, read_only=True).clock_offset == dt.timedelta(hours=-1)
    assert main(["ctl", str(card_dir), "set-tries", "auth", "7"]) == 2
    assert "from 0 to 3" in capsys.readouterr().err
    assert main(["ctl", str(card_dir), "remove"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in a reader" in err
    assert main(["ctl", str(card_dir), "--json", "reissue"]) == 0  # the office: a new card beside this one
    answer = json.loads(capsys.readouterr().out.splitlines()[-1])["reissue"]
    assert answer["new_card_dir"] == str(card_dir.with_name(card_dir.name + "-reissued"))
    assert answer["status"] == "superseded" and set(answer["serials"]) == {"auth", "sign"}
    with Card.load(answer["new_card_dir"], read_only=True) as new:
        assert new.dir.meta["persona"]["my_number"] == Card.load(card_dir, read_only=True).dir.meta["persona"]["my_number"]
    assert main(["ctl", str(card_dir), "reissue"]) == 2  # refused: the old certificates are revoked now
    assert "already revoked" in capsys.readouterr().err
    assert main(["ctl", str(card_dir), "clock-offset", "soon"]) == 2


# -- mynaemu run --------------------------------------------------------------------------------------
PASSING = f"""# select the JPKI-AP and read the auth certificate's first bytes
{SELECT_JPKI} => 9000
00A4020C02000A                 => 9000
00B0000004                     => 30820??? 9000
00B0000002                     => 3082*  9000
00A4020C020018                 # no expectation
0020008004${{AUTH_PIN}}          => 9000
00200080${{#AUTH_PIN}}${{AUTH_PIN}} => 90??
00200080                       => 63C?
"""


def test_run_passes_a_matching_script_and_masks_the_pin(card_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    script = tmp_path / "ok.apdu"
    script.write_text(PASSING)
    monkeypatch.setenv("AUTH_PIN", SECRETS["auth"])
    assert main(["run", str(script), str(card_dir)]) == 0
    out = capsys.readouterr().out
    assert "every answer as expected" in out and "8 command(s)" in out
    assert "0020008004******** -> 9000" in out
    assert b"1234".hex() not in out.lower()
    assert main(["run", str(script), str(card_dir), "--var", "AUTH_PIN=1234", "-q"]) == 0


def test_run_reports_the_first_mismatch_with_its_line(card_dir: Path, tmp_path: Path, capsys) -> None:
    script = tmp_path / "bad.apdu"
    script.write_text(f"{SELECT_JPKI} => 9000\n\n# wrong PIN next\n00A4020C020018 => 9000\n"
                      "0020008004${AUTH_PIN} => 9000\n00200080 => 63C3\n")
    assert main(["run", str(script), str(card_dir), "--var", "AUTH_PIN=9999"]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert f"{script} line 5: expected 9000, got 63C2 (for 0020008004********)" in captured.err
    assert "9999" not in captured.err and b"9999".hex() not in captured.err
    assert "00200080 ->" not in captured.out  # stopped at the mismatch
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 2


def test_run_refuses_a_bad_script_or_a_missing_variable_before_sending(card_dir: Path, tmp_path: Path, capsys) -> None:
    script = tmp_path / "s.apdu"
    for text, message in ((f"{SELECT_JPKI} => 9000\n00A4 => 9000\n", "line 2: an APDU is at least 4 bytes"),
                          (f"{SELECT_JPKI} => 90000\n", "line 1: the expected status word"),
                          ("00A4020C0Z\n", "line 1: the APDU must be hex"),
                          (f"{SELECT_JPKI}\n0020008004${{SIGN_PIN}} => 9000\n", "line 2: variable(s) SIGN_PIN not given")):
        script.write_text(text)
        assert main(["run", str(script), str(card_dir)]) == 2
        assert message in capsys.readouterr().err
    assert main(["run", str(script)]) == 2
    assert "exactly one of CARD_DIR" in capsys.readouterr().err
