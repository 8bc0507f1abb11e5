"""Bad card files and bad options, through the real command line (``python -m mynaemu``).

A card directory whose state.json is corrupt, truncated, of an unknown version, another card's,
unreadable, or not a regular file is refused by ``info``, ``send`` and ``admin`` with exit code 2
and a message naming the file; the file is left exactly as it was (bytes, mtime, type). As root,
chmod 000 does not stop reads, so the unreadable case drops CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH
with setpriv. A symlinked state.json is read through the link, and a write replaces the link by a
regular file in the card directory: nothing outside the card directory is ever written. Options out
of range are refused with the rule, exit code 2 and no directory left behind.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest

from mynaemu import Card

from .conftest import SECRETS

ROOT = Path(__file__).resolve().parent.parent
SELECT_AUTH = ["00A4040C0AD392F000260100000001", "00A4020C020018"]
WRONG_VERIFY = "0020008004" + b"0000".hex()


def cli(*args: str, timeout: float = 60, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``python -m mynaemu ARGS`` as a user would."""
    return subprocess.run([*prefix, sys.executable, "-m", "mynaemu", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def fingerprint(path: Path) -> tuple:
    """What must not change: type, bytes or entries, mode and mtime (and a link's target's)."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        target = path.parent / os.readlink(path)
        inner = fingerprint(target) if target.exists() and target != path else None
        return ("link", os.readlink(path), inner)
    if stat.S_ISDIR(st.st_mode):
        return ("dir", sorted(os.listdir(path)), st.st_mode, st.st_mtime_ns)
    if stat.S_ISFIFO(st.st_mode):
        return ("fifo", st.st_mode, st.st_mtime_ns)
    return ("file", path.read_bytes() if os.geteuid() == 0 or st.st_mode & 0o400 else None, st.st_mode, st.st_mtime_ns)


@pytest.fixture(scope="module")
def other_card(tmp_path_factory: pytest.TempPathFactory, issued_template) -> Path:
    """A second card, whose state.json gets copied into the first."""
    from mynaemu.issuance import issue_card
    from mynaemu.persona import Persona

    issued = issue_card(tmp_path_factory.mktemp("other") / "card", persona=Persona.generate(random.Random(8)),
                        secrets=dict(SECRETS))
    assert issued.persona.card_serial != issued_template.persona.card_serial
    return issued.path


def _rewrite(**changes: object) -> Callable[[Path, Path], None]:
    def setup(state: Path, other: Path) -> None:
        doc = json.loads(state.read_bytes())
        doc.update(changes)
        state.write_text(json.dumps(doc))

    return setup


def _out_of_range(state: Path, other: Path) -> None:
    doc = json.loads(state.read_bytes())
    doc["keys"]["auth"]["tries_left"] = 9
    state.write_text(json.dumps(doc))


def _replace(make: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def setup(state: Path, other: Path) -> None:
        state.unlink()
        make(state, other)

    return setup


def _no_dac_override() -> tuple[str, ...]:
    """A command prefix under which file permissions bind, even for root."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("as root, an unreadable file needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


# kind: (how to break state.json, what the message must say)
BAD_STATES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "garbage": (lambda s, o: s.write_bytes(b"\x00\xff not json"), "corrupt or truncated"),
    "truncated": (lambda s, o: s.write_bytes(s.read_bytes()[: len(s.read_bytes()) // 2]), "corrupt or truncated"),
    "empty": (lambda s, o: s.write_bytes(b""), "corrupt or truncated"),
    "unknown-version": (_rewrite(version=2), "version 2"),
    "wrong-format": (_rewrite(format="mynaemu-content"), "not a mynaemu-state file"),
    "tries-out-of-range": (_out_of_range, "keys.auth.tries_left must be an integer from 0 to 3, not 9"),
    "foreign": (lambda s, o: shutil.copy2(o / "state.json", s), "belongs to card"),
    "foreign-symlink": (_replace(lambda s, o: s.symlink_to(o / "state.json")), "belongs to card"),
    "dangling-symlink": (_replace(lambda s, o: s.symlink_to(o / "no-such-state.json")), "missing"),
    "unreadable": (lambda s, o: s.chmod(0o000), "permission denied"),
    "directory": (_replace(lambda s, o: s.mkdir()), ""),  # any clear message naming the file
    "symlink-loop": (_replace(lambda s, o: s.symlink_to(s.name)), ""),
}
COMMANDS = {
    "info": ["info"],
    "send": ["send", "{dir}", *SELECT_AUTH, WRONG_VERIFY],
    "admin": ["admin", "{dir}", "unblock", "auth"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    "kind",
    list(BAD_STATES),
)
def test_bad_state_is_refused_and_left_untouched(card_dir: Path, other_card: Path, kind: str, command: str) -> None:
    state = card_dir / "state.json"
    prefix = _no_dac_override() if kind == "unreadable" else ()
    setup, says = BAD_STATES[kind]
    setup(state, other_card)
    before = (fingerprint(state), fingerprint(card_dir), fingerprint(other_card / "state.json"))
    args = [a.format(dir=card_dir) for a in COMMANDS[command]]
    if command == "info":
        args.append(str(card_dir))
    res = cli(*args, prefix=prefix)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 2, res
    assert str(state) in res.stderr and says in res.stderr, res.stderr
    assert res.stdout == ""
    assert (fingerprint(state), fingerprint(card_dir), fingerprint(other_card / "state.json")) == before


def test_state_that_is_a_fifo_is_refused_not_waited_on(card_dir: Path) -> None:
    state = card_dir / "state.json"
    state.unlink()
    os.mkfifo(state)
    try:
        res = cli("info", str(card_dir), timeout=3)
    except subprocess.TimeoutExpired:
        pytest.fail("`mynaemu info` still waits on the FIFO after 3 s")
    assert res.returncode == 2 and str(state) in res.stderr
    assert stat.S_ISFIFO(state.lstat().st_mode)


@pytest.mark.parametrize("name", ["card.json", "content.json", "keys.json", "profile.toml"])
def test_other_truncated_files_are_named_by_the_cli(card_dir: Path, name: str) -> None:
    path = card_dir / name
    path.write_bytes(path.read_bytes()[:100])
    before = fingerprint(path)
    res = cli("info", str(card_dir))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert str(path) in res.stderr
    assert fingerprint(path) == before


def test_state_of_this_card_behind_a_symlink_is_used_and_never_written_through(card_dir: Path, tmp_path: Path) -> None:
    """Decision: a link is followed for reading; a write replaces it inside the card directory."""
    elsewhere = tmp_path / "elsewhere" / "state.json"
    elsewhere.parent.mkdir()
    shutil.move(card_dir / "state.json", elsewhere)
    (card_dir / "state.json").symlink_to(elsewhere)
    before = fingerprint(elsewhere)
    res = cli("send", str(card_dir), *SELECT_AUTH, WRONG_VERIFY)
    assert res.returncode == 0 and "63C2" in res.stdout, res
    assert fingerprint(elsewhere) == before
    state = card_dir / "state.json"
    assert stat.S_ISREG(state.lstat().st_mode) and stat.S_IMODE(state.stat().st_mode) == 0o600
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 2


def test_planted_temp_file_symlink_is_never_written_through(card_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    before = fingerprint(victim)
    # Links at the old fixed name and at names of the temp pattern: neither is ever written through.
    (card_dir / ".state.json.tmp").symlink_to(victim)
    (card_dir / ".state.json.planted.tmp").symlink_to(victim)
    res = cli("send", str(card_dir), *SELECT_AUTH, WRONG_VERIFY)
    assert res.returncode == 0, res
    assert fingerprint(victim) == before
    assert stat.S_ISREG((card_dir / "state.json").lstat().st_mode)


def test_group_readable_state_is_private_again_after_the_next_write(card_dir: Path) -> None:
    """What the card does with a 0644 state.json: it loads it with a warning that says how to fix it,
    and every write leaves the file 0600."""
    state = card_dir / "state.json"
    state.chmod(0o644)
    res = cli("send", str(card_dir), *SELECT_AUTH, WRONG_VERIFY)
    assert res.returncode == 0 and "63C2" in res.stdout, res
    assert "readable by other users" in res.stderr and "chmod 600" in res.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o600


# -- options out of range ------------------------------------------------------------------------
TOMORROW = (date.today() + timedelta(days=1)).isoformat()

BAD_ISSUE_OPTIONS = [
    (["--auth-pin", "123"], "--auth-pin: the JPKI user-authentication PIN must be exactly 4 digits"),
    (["--auth-pin", "１２３４"], "must be exactly 4 digits"),  # full-width digits
    (["--text-pin", "12345"], "--text-pin: the Input-assist AP PIN must be exactly 4 digits"),
    (["--juki-pin", "12a4"], "must be exactly 4 digits"),
    (["--sign-pin", "abc123"], "6 to 16 characters, upper-case A-Z and digits 0-9 only"),
    (["--sign-pin", "ABCDEFGHIJ1234567"], "6 to 16 characters"),  # 17 characters
    (["--sign-pin", "ABC12"], "6 to 16 characters"),
    (["--sign-pin", "ABC 123"], "6 to 16 characters"),
    (["--my-number", "123456789012"], "the check digit of the first 11"),
    (["--my-number", "12345678901"], "12 ASCII digits"),
    (["--my-number", "12345678901X"], "12 ASCII digits"),
    pytest.param((["--birth", TOMORROW], "to today"), id="--birth tomorrow"),
    pytest.param((["--birth", "1800-01-01"], "1868-01-25"), id="--birth before Meiji"),
    (["--birth", "1980/02/17"], "YYYY-MM-DD"),
    (["--birth", "1980-02-30"], "YYYY-MM-DD"),
    (["--sex", "x"], "use male, female or n/a"),
    (["--sex", "0"], "use male, female or n/a"),
    (["--name", "山田太郎"], "ideographic space U+3000"),
    (["--seed", "abc"], "invalid int value"),
    (["--profile", "/nonexistent/profile.toml"], "profile file not found"),
]


@pytest.mark.parametrize("case", BAD_ISSUE_OPTIONS, ids=lambda case: " ".join(case[0]))
def test_issue_refuses_options_out_of_range(tmp_path: Path, case: tuple[list[str], str]) -> None:
    options, rule = case
    target = tmp_path / "out" / "card"
    res = cli("issue", str(target), *options)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 2, res
    assert rule in res.stderr, res.stderr
    assert "Issued" not in res.stdout
    assert not (tmp_path / "out").exists()  # no card, no half-built sibling, not even the parent
    assert os.listdir(tmp_path) == []


def test_admin_refuses_values_out_of_range_and_keeps_the_state(card_dir: Path) -> None:
    before = fingerprint(card_dir / "state.json")
    for args, rule in ((["reset-pin", "auth", "123"], "must be exactly 4 digits"),
                       (["reset-pin", "sign", "lower123"], "upper-case A-Z and digits 0-9 only"),
                       (["reset-pin", "text-a", "123456789018"], "cannot be set"),
                       (["unblock", "nosuchkey"], "invalid choice")):
        res = cli("admin", str(card_dir), *args)
        assert res.returncode == 2 and rule in res.stderr and "Traceback" not in res.stderr, res
    assert fingerprint(card_dir / "state.json") == before


def test_serve_refuses_a_negative_slot(card_dir: Path) -> None:
    res = cli("serve", str(card_dir), "--slot", "-1", "--no-start-pcscd", timeout=30)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 2 and "slot" in res.stderr
