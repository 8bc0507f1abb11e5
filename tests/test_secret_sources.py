"""Secrets off the command line: every secret from an environment variable, a file, stdin or a prompt.

The argument form stays (for tests and demos) and is documented as readable by other local users.
"""

from __future__ import annotations

import argparse
import io
import os
import pty
import re
import select
import sys
import time
from pathlib import Path

import pytest

from mynaemu import Card
from mynaemu import cli as cli_module
from mynaemu.cli import SECRET_ENV, build_parser, main

from .conftest import SECRETS
from .test_bad_input_corpus import tree_hash

ROOT = Path(__file__).resolve().parent.parent
SEL_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")


def verifies(card_dir: Path, ap_aid: str, fid: str, value: str) -> bool:
    """Whether VERIFY of ``value`` on key EF ``fid`` of the AP succeeds (a fresh card object)."""
    with Card.load(card_dir) as card:
        aid = bytes.fromhex(ap_aid)
        assert card.transmit(bytes((0, 0xA4, 4, 0x0C, len(aid))) + aid) == b"\x90\x00"
        assert card.transmit(bytes.fromhex("00A4020C02" + fid)) == b"\x90\x00"
        return card.transmit(bytes((0, 0x20, 0, 0x80, len(value))) + value.encode()) == b"\x90\x00"


JPKI, TEXT, JUKI = "D392F000260100000001", "D3921000310001010408", "D3921000310001010401"


@pytest.fixture
def no_tty_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))


def test_issue_takes_each_pin_from_env_file_stdin_and_argument(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MYNAEMU_AUTH_PIN", "4826")
    (tmp_path / "sign").write_text("FILEPASS7\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("3141\r\nignored second line\n"))
    card = tmp_path / "card"
    assert main(["issue", str(card), "--sign-pin-file", str(tmp_path / "sign"), "--text-pin-file", "-",
                 "--juki-pin", "2718"]) == 0, capsys.readouterr().err
    assert verifies(card, JPKI, "0018", "4826")  # MYNAEMU_AUTH_PIN
    assert verifies(card, JPKI, "001B", "FILEPASS7")  # --sign-pin-file
    assert verifies(card, TEXT, "0011", "3141")  # --text-pin-file - (stdin), line end stripped
    assert verifies(card, JUKI, "001C", "2718")  # the argument


def test_argument_wins_over_the_environment(tmp_path: Path, monkeypatch, capsys, no_tty_stdin) -> None:
    monkeypatch.setenv("MYNAEMU_AUTH_PIN", "1111")
    card = tmp_path / "card"
    assert main(["issue", str(card), "--auth-pin", "2222"]) == 0
    assert verifies(card, JPKI, "0018", "2222")


def test_reset_pin_from_env_file_and_stdin(card_dir: Path, tmp_path: Path, monkeypatch, capsys, no_tty_stdin) -> None:
    monkeypatch.setenv("MYNAEMU_NEW_VALUE", "5555")
    assert main(["admin", str(card_dir), "reset-pin", "auth"]) == 0
    assert verifies(card_dir, JPKI, "0018", "5555")
    monkeypatch.delenv("MYNAEMU_NEW_VALUE")
    (tmp_path / "new").write_text("NEWFILE1\n")
    assert main(["admin", str(card_dir), "reset-pin", "sign", "--new-value-file", str(tmp_path / "new")]) == 0
    assert verifies(card_dir, JPKI, "001B", "NEWFILE1")
    monkeypatch.setattr(sys, "stdin", io.StringIO("6666\n"))
    assert main(["admin", str(card_dir), "reset-pin", "text", "--new-value-file", "-"]) == 0
    assert verifies(card_dir, TEXT, "0011", "6666")
    out = capsys.readouterr().out
    assert not {"5555", "NEWFILE1", "6666"} & set(re.findall(r"\w+", out)), out


def test_kiosk_reset_from_other_file_and_env(card_dir: Path, tmp_path: Path, monkeypatch, capsys, no_tty_stdin) -> None:
    (tmp_path / "other").write_text(SECRETS["sign"] + "\n")
    monkeypatch.setenv("MYNAEMU_NEW_VALUE", "7777")
    assert main(["admin", str(card_dir), "kiosk-reset", "auth", "--other-file", str(tmp_path / "other")]) == 0
    assert verifies(card_dir, JPKI, "0018", "7777")
    monkeypatch.setenv("MYNAEMU_OTHER_VALUE", "7777")
    monkeypatch.setenv("MYNAEMU_NEW_VALUE", "KIOSK99")
    assert main(["admin", str(card_dir), "kiosk-reset", "sign"]) == 0
    assert verifies(card_dir, JPKI, "001B", "KIOSK99")


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_prompt_when_a_terminal_and_the_value_is_needed(card_dir: Path, monkeypatch, capsys) -> None:
    asked: list[str] = []
    answers = iter([SECRETS["sign"], "8888", "8888"])

    def fake_getpass(prompt: str = "") -> str:
        asked.append(prompt)
        return next(answers)

    monkeypatch.setattr(cli_module.getpass, "getpass", fake_getpass)
    monkeypatch.setattr(sys, "stdin", FakeTty())
    assert main(["admin", str(card_dir), "kiosk-reset", "auth"]) == 0
    assert asked == ["Current value of the sign secret: ", "New value for auth: ", "Again: "]
    assert verifies(card_dir, JPKI, "0018", "8888")


def test_prompt_entries_that_differ_change_nothing(card_dir: Path, monkeypatch, capsys) -> None:
    answers = iter(["1212", "2121"])
    monkeypatch.setattr(cli_module.getpass, "getpass", lambda prompt="": next(answers))
    monkeypatch.setattr(sys, "stdin", FakeTty())
    before = tree_hash(card_dir)
    assert main(["admin", str(card_dir), "reset-pin", "auth"]) == 2
    err = capsys.readouterr().err
    assert "the two entries differ; nothing was changed" in err and "1212" not in err and "2121" not in err
    assert tree_hash(card_dir) == before


def test_no_prompt_without_a_terminal(card_dir: Path, monkeypatch, capsys, no_tty_stdin) -> None:
    monkeypatch.setattr(cli_module.getpass, "getpass", lambda prompt="": pytest.fail("prompted without a terminal"))
    assert main(["admin", str(card_dir), "reset-pin", "auth"]) == 2
    assert "MYNAEMU_NEW_VALUE" in capsys.readouterr().err


def test_issue_never_prompts_missing_pins_are_random(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli_module.getpass, "getpass", lambda prompt="": pytest.fail("issue prompted"))
    monkeypatch.setattr(sys, "stdin", FakeTty())
    assert main(["issue", str(tmp_path / "card"), "--auth-pin", "1357"]) == 0
    assert verifies(tmp_path / "card", JPKI, "0018", "1357")


def test_replay_variables_from_var_file_and_stdin(card_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """An explicit variable overrides the card's own value: a wrong auth_pin makes the flow fail."""
    flow = "opensc-pkcs11-sign-auth"
    assert main(["replay", flow, "--card", str(card_dir)]) == 0
    (tmp_path / "vars").write_text("# the replay's secrets\n\nauth_pin=0000\n")
    assert main(["replay", flow, "--card", str(card_dir), "--var-file", str(tmp_path / "vars")]) == 1
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"auth_pin={SECRETS['auth']}\n"))
    assert main(["replay", flow, "--card", str(card_dir), "--var-file", "-"]) == 0
    out = capsys.readouterr().out
    assert "0000" not in out.replace("00000000", "")


def test_replay_reader_takes_pins_from_the_environment(monkeypatch) -> None:
    """For a reader (a real card) MYNAEMU_AUTH_PIN etc. fill auth_pin etc.; for an emulated card they do not."""
    monkeypatch.setenv("MYNAEMU_AUTH_PIN", "9999")
    monkeypatch.setenv("MYNAEMU_JUKI_PIN", "8888")
    parser = build_parser()
    reader = parser.parse_args(["replay", "x", "--reader", "R"])
    assert cli_module._replay_variables(reader) == {"auth_pin": "9999", "juki_pin": "8888", "common_pin": "8888"}
    card = parser.parse_args(["replay", "x", "--card", "C"])
    assert cli_module._replay_variables(card) == {}


def _pty_run(argv: list[str], answers: list[bytes], env: dict[str, str]) -> tuple[int, bytes]:
    """Run ``python -m mynaemu ARGV`` on a new pseudo-terminal; answer each prompt in turn."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal, as in a login shell
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "mynaemu", *argv], env)
    seen = b""
    answered_at = 0  # answer a prompt only once it shows after the last answer (getpass flushes input)
    deadline = time.monotonic() + 60
    pending = list(answers)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        fresh = seen[answered_at:]
        if pending and fresh.strip() and fresh.rstrip().endswith(b":"):
            os.write(fd, pending.pop(0))
            answered_at = len(seen)
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), seen


def test_prompt_on_a_real_terminal_does_not_echo(card_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MYNAEMU_NEW_VALUE", None)
    code, seen = _pty_run(["admin", str(card_dir), "reset-pin", "auth"], [b"2468\n", b"2468\n"], env)
    assert code == 0, seen
    assert b"New value for auth:" in seen and b"Again:" in seen
    assert b"2468" not in seen  # getpass turned echo off
    assert verifies(card_dir, JPKI, "0018", "2468")


def test_every_secret_option_has_a_file_form_and_an_env_var_and_the_argv_form_is_documented() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in SECRET_ENV.values():
        assert name in readme, name
    for option in ("--auth-pin-file", "--sign-pin-file", "--text-pin-file", "--juki-pin-file", "--new-value-file",
                   "--other-file", "--var-file"):
        assert option in readme, option
    assert "/proc/PID/cmdline" in readme and "other local users" in readme
    parser = build_parser()
    def subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices

    helps = subcommands(parser)
    def text(p) -> str:  # argparse wraps help lines
        return " ".join(p.format_help().split())

    issue_help = text(helps["issue"])
    assert issue_help.count("argv is readable by other local users") == 4
    admin_help = subcommands(helps["admin"])
    assert "argv is readable" in text(admin_help["reset-pin"])
    assert text(admin_help["kiosk-reset"]).count("argv is readable") == 2
    assert "argv is readable" in text(helps["replay"])
