"""The mynaemu command line: issue, info, send, admin; errors say what to do."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mynaemu import Card
from mynaemu.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mynaemu", *args], capture_output=True, text=True, timeout=120)


def test_info_json_lists_every_key(card_dir, capsys) -> None:
    assert main(["info", str(card_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["keys"]["auth"] == {"tries_left": 3, "limit": 3, "blocked": False, "label": "JPKI user-authentication PIN"}
    assert doc["keys"]["sign"]["limit"] == 5
    assert set(doc["applications"]) == {"mf", "jpki", "text", "visual", "juki", "common"}
    assert doc["persona"]["my_number"] == "123456789018"


def test_info_text(card_dir, capsys) -> None:
    assert main(["info", str(card_dir)]) == 0
    out = capsys.readouterr().out
    assert "山田\u3000太郎" in out and "auth" in out and " 3/3 " in out


def test_send_runs_one_session_and_masks_pins(card_dir, capsys) -> None:
    rc = main(["send", str(card_dir), "00A4040C0AD392F000260100000001", "00A4020C020018",
               "0020008004" + b"1234".hex(), "00200080", "00A4020C02000A", "00B0000002"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("00A4040C0AD392F000260100000001 -> 9000")
    assert lines[2] == "0020008004******** -> 9000  success"
    assert lines[3] == "00200080 -> 63C3  verification failed or queried, 3 tries left"
    assert lines[5].startswith("00B0000002 -> 30829000")
    assert "31323334" not in "\n".join(lines)


def test_send_wrong_pin_is_durable_and_admin_unblocks(card_dir, capsys) -> None:
    for _ in range(3):
        main(["send", str(card_dir), "00A4040C0AD392F000260100000001", "00A4020C020018", "0020008004" + b"0000".hex()])
    out = capsys.readouterr().out
    assert "63C0" in out
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 0
    assert main(["admin", str(card_dir), "unblock", "auth"]) == 0
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 3
    assert main(["admin", str(card_dir), "reset-pin", "sign", "abc"]) == 2
    err = capsys.readouterr().err
    assert "6 to 16 characters, upper-case A-Z and digits 0-9 only" in err


def test_send_rejects_non_hex(card_dir, capsys) -> None:
    assert main(["send", str(card_dir), "zz"]) == 2
    assert "not an APDU in hex" in capsys.readouterr().err


def test_issue_refuses_bad_options(tmp_path, capsys) -> None:
    assert main(["issue", str(tmp_path / "a"), "--auth-pin", "123"]) == 2
    assert "exactly 4 digits" in capsys.readouterr().err
    assert main(["issue", str(tmp_path / "b"), "--sign-pin", "lower1"]) == 2
    assert "upper-case" in capsys.readouterr().err
    assert main(["issue", str(tmp_path / "c"), "--my-number", "123456789012"]) == 2
    assert "check digit" in capsys.readouterr().err
    assert main(["issue", str(tmp_path / "d"), "--birth", "1980/02/17"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
    for d in "abcd":
        assert not (tmp_path / d / "state.json").exists()


def test_issue_refuses_existing_card(card_dir, capsys) -> None:
    before = (card_dir / "state.json").read_bytes()
    assert main(["issue", str(card_dir)]) == 2
    assert "already holds a card" in capsys.readouterr().err
    assert (card_dir / "state.json").read_bytes() == before


def test_load_errors_are_clear(tmp_path, capsys) -> None:
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "no card directory here" in capsys.readouterr().err


@pytest.mark.slow
def test_issue_end_to_end_subprocess(tmp_path) -> None:
    res = run("issue", str(tmp_path / "card"), "--name", "佐藤\u3000花子", "--kana", "サトウ\u3000ハナコ",
              "--birth", "1990-04-01", "--sex", "female", "--auth-pin", "4321", "--sign-pin", "PASS1234")
    assert res.returncode == 0, res.stderr
    assert "佐藤\u3000花子" in res.stdout and "PASS1234" in res.stdout
    res = run("send", str(tmp_path / "card"), "00A4040C0AD392F000260100000001", "00A4020C020018",
              "0020008004" + b"4321".hex())
    assert res.returncode == 0 and res.stdout.splitlines()[2].endswith("9000  success")
    assert "4321" not in res.stdout.replace("0020008004", "")


def test_replay_transcripts_against_card(card_dir, capsys) -> None:
    assert main(["replay", "--card", str(card_dir), "opensc-pkcs15-dump", "myna-pin-status"]) == 0
    out = capsys.readouterr().out
    assert "opensc-pkcs15-dump: opensc-pkcs15-dump.txt: OK" in out and "myna-pin-status" in out


def test_replay_reports_mismatch_with_exit_1(card_dir, tmp_path, capsys) -> None:
    flow = tmp_path / "wrong.txt"
    flow.write_text("# a flow that expects the wrong thing\n00 A4 04 0C data=D392F000260100000001 => 9000\n"
                    "00 A4 02 0C data=0001 => 9000\n00 B0 00 00 le=04 => 30829000\n")
    assert main(["replay", "--card", str(card_dir), str(flow)]) == 1
    out = capsys.readouterr().out
    assert "wrong.txt" in out and "6982" in out


def test_replay_needs_a_target(capsys) -> None:
    assert main(["replay", "opensc-bind"]) == 2
    assert "--card" in capsys.readouterr().err


def test_issue_with_own_profile_changes_a_retry_limit(tmp_path, capsys) -> None:
    from mynaemu.profile import DEFAULT_PROFILE

    profile = tmp_path / "profile.toml"
    text = DEFAULT_PROFILE.read_text(encoding="utf-8")
    profile.write_text(text.replace('[keys.auth]\nlabel = "JPKI user-authentication PIN"\nlimit = 3',
                                    '[keys.auth]\nlabel = "JPKI user-authentication PIN"\nlimit = 5'), encoding="utf-8")
    assert main(["issue", str(tmp_path / "card"), "--profile", str(profile), "--auth-pin", "1234"]) == 0
    capsys.readouterr()
    card = Card.load(tmp_path / "card")
    assert card.key_status()["auth"]["limit"] == 5
    assert card.transmit(bytes.fromhex("00A4040C0AD392F000260100000001")) == b"\x90\x00"
    assert card.transmit(bytes.fromhex("00A4020C020018")) == b"\x90\x00"
    assert card.transmit(bytes.fromhex("00200080")) == b"\x63\xc5"


def test_issue_refuses_an_invalid_profile(tmp_path, capsys) -> None:
    from mynaemu.profile import DEFAULT_PROFILE

    profile = tmp_path / "bad.toml"
    profile.write_text(DEFAULT_PROFILE.read_text(encoding="utf-8").replace("limit = 3", "limit = 16", 1), encoding="utf-8")
    assert main(["issue", str(tmp_path / "card"), "--profile", str(profile)]) == 2
    err = capsys.readouterr().err
    assert str(profile) in err and "keys.auth" in err and "1 to 15" in err
    assert not (tmp_path / "card").exists()


def test_help_imports_neither_the_card_nor_cryptography() -> None:
    # `mynaemu --help` (and every parser build) is argparse and the command names only: a choice
    # list taken from a module that imports the card made it 3x slower once (FAULT_KINDS).
    code = ("import sys, contextlib, io\nfrom mynaemu import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    cli.main(['--help'])\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('cryptography', 'construct', 'PIL', 'starlette')\n"
            "               or m in ('mynaemu.card', 'mynaemu.controls', 'mynaemu.state', 'mynaemu.authority.database'))\n"
            "print(heavy)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_help_lists_the_profiles_variants() -> None:
    from mynaemu.cli import _variant_names
    from mynaemu.profile import Profile

    assert _variant_names() == Profile.load().variant_names()
