"""mynaemu installed from its wheel (not the source tree): the commands, the package data, the plugin."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mynaemu import __version__
from mynaemu.cli import main
from mynaemu.transcript import transcript_files
from tests.wheelkit import InstalledWheel

ISSUE = ("mynaemu", "issue", "card", "--name", "山田\u3000太郎", "--birth", "1980-02-17", "--sex", "male",
         "--auth-pin", "1234", "--sign-pin", "ABC123", "--text-pin", "5678", "--juki-pin", "2468")


def test_wheel_holds_the_package_data(installed_wheel: InstalledWheel) -> None:
    import zipfile

    names = set(zipfile.ZipFile(installed_wheel.wheel).namelist())
    expected = {f"apdu_specs/transcripts/{p.name}" for p in transcript_files()}
    assert {"apdu_specs/__init__.py", "apdu_specs/profile.toml", "apdu_specs/published-test-keys.json"} <= names
    assert {n for n in names if n.startswith("apdu_specs/transcripts/")} == expected
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(installed_wheel.wheel).read(entry_points).decode()
    assert "[pytest11]\nmynaemu = mynaemu.pytest_plugin" in text
    assert "[console_scripts]\nmynaemu = mynaemu.cli:main" in text


def test_installed_code_is_the_wheels(installed_wheel: InstalledWheel, tmp_path: Path) -> None:
    code = ("import json, apdu_specs, mynaemu, mynaemu.profile, mynaemu.transcript, mynaemu.testing;"
            "print(json.dumps([mynaemu.__file__, apdu_specs.__file__, str(mynaemu.profile.DEFAULT_PROFILE),"
            " str(mynaemu.transcript.TRANSCRIPT_DIR)]))")
    proc = installed_wheel.run("python", "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = [Path(p) for p in json.loads(proc.stdout)]
    for path in paths:
        assert path.is_relative_to(installed_wheel.venv), path
    assert paths[2].name == "profile.toml" and paths[2].is_file()


def test_version(installed_wheel: InstalledWheel, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = installed_wheel.run("mynaemu", "--version", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, f"mynaemu {__version__}\n")
    meta = installed_wheel.run("python", "-c", "import importlib.metadata as m; print(m.version('mynaemu'))", cwd=tmp_path)
    assert meta.stdout == f"{__version__}\n"
    assert main(["--version"]) == 0  # main() returns argparse's exit code instead of raising it
    assert capsys.readouterr().out == f"mynaemu {__version__}\n"


def test_issue_info_and_replay_from_the_wheel(installed_wheel: InstalledWheel, tmp_path: Path) -> None:
    proc = installed_wheel.run(*ISSUE, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Issued an emulated My Number card in card\n  name        山田\u3000太郎")
    card = tmp_path / "card"
    assert stat.S_IMODE(card.stat().st_mode) == 0o700
    assert sorted(p.name for p in card.iterdir()) == ["card.json", "content.json", "keys.json", "profile.toml", "state.json"]
    assert (card / "profile.toml").read_bytes() == (Path(__file__).parents[1] / "apdu_specs" / "profile.toml").read_bytes()

    listed = installed_wheel.run("mynaemu", "replay", "--list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [p.name.removesuffix(".txt") for p in transcript_files()]

    flows = ("opensc-pkcs15-dump", "myna-text-attrs", "opensc-pkcs11-sign-auth")
    replayed = installed_wheel.run("mynaemu", "replay", *flows, "--card", "card", cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    lines = replayed.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == list(flows)
    assert all(line.startswith(f"{f}: {f}.txt: OK (") for f, line in zip(flows, lines, strict=True)), lines

    refused = installed_wheel.run("mynaemu", "info", "card", "--secrets", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("mynaemu info: error: card is not a demo or test card")


def test_plugin_autoloads_from_the_wheel(installed_wheel: InstalledWheel, tmp_path: Path) -> None:
    (tmp_path / "test_uses_the_plugin.py").write_text(
        "def test_card(myna_card, myna_connection):\n"
        "    import mynaemu\n"
        f"    assert mynaemu.__file__.startswith({str(installed_wheel.venv)!r})\n"
        "    assert myna_connection.transmit([0x00, 0xA4, 0x04, 0x0C, 0x0A, 0xD3, 0x92, 0xF0, 0x00, 0x26, 0x01,"
        " 0x00, 0x00, 0x00, 0x01]) == ([], 0x90, 0x00)\n"
        "    assert myna_card.tries_left('auth') == 3\n",
        encoding="utf-8",
    )
    proc = installed_wheel.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_uses_the_plugin.py",
                               cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    off = installed_wheel.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:mynaemu",
                              "test_uses_the_plugin.py", cwd=tmp_path)
    assert off.returncode == 1 and "fixture 'myna_card' not found" in off.stdout


def test_replay_list_without_transcripts_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import mynaemu.transcript as transcript

    monkeypatch.setattr(transcript, "TRANSCRIPT_DIR", tmp_path / "none")
    monkeypatch.setattr(transcript.transcript_files, "__defaults__", (tmp_path / "none",))
    assert main(["replay", "--list"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"mynaemu replay: error: no transcripts in {tmp_path / 'none'} "
                            "(a mynaemu installed without its package data?)\n")


def test_profile_missing_from_an_install_is_one_line(tmp_path: Path) -> None:
    """The old failure: a profile path that does not exist is a one-line error, not a traceback."""
    proc = subprocess.run([sys.executable, "-m", "mynaemu", "issue", str(tmp_path / "c"), "--profile", str(tmp_path / "x.toml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"mynaemu issue: error: {tmp_path / 'x.toml'}: profile file not found\n"
