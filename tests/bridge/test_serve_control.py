"""`mynaemu serve --interactive` with two cards: remove/insert on demand and ctl commands from stdin (pcscd sees it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_real_clients import SELECT_AUTH_PIN, SELECT_JPKI, Lines, scard_connect, serve_args, serve_env, verify_apdu

from mynaemu import Card
from reader_bridge.pcscd import find_vpcd_readers, reader_name, wait_for_card

pytestmark = pytest.mark.pcsc
__all__ = ["scard_connect"]  # the fixture, imported for this module's tests

OK = b"\x90\x00"


def test_serve_two_cards_and_remove_one_on_demand(pcscd, issued_template, card_dir: Path, tmp_path: Path,
                                                   _data_dir: Path, scard_connect) -> None:
    second = tmp_path / "second"
    shutil.copytree(issued_template.path, second)
    listed = find_vpcd_readers()
    names = [reader_name(0, listed), reader_name(1, listed)]
    for name in names:
        wait_for_card(name, present=False, timeout=10)
    proc = subprocess.Popen(serve_args(str(card_dir), str(second), "--interactive", "--no-start-pcscd"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=serve_env(_data_dir), cwd=tmp_path)
    assert proc.stdin is not None and proc.stdout is not None
    lines = Lines(proc.stdout)

    def command(text: str, answer: str) -> None:
        proc.stdin.write(text + "\n")
        proc.stdin.flush()
        lines.expect(answer)

    try:
        lines.expect(r"^Serving card \S+ in reader 'Virtual PCD 00 00'")
        lines.expect(r"^Serving card \S+ in reader 'Virtual PCD 00 01'")
        lines.expect(r"^commands: ")
        for name in names:
            wait_for_card(name, present=True, timeout=10)
        conn = scard_connect(names[0])
        assert conn.transmit(SELECT_JPKI) == OK
        assert conn.transmit(SELECT_AUTH_PIN) == OK
        assert conn.transmit(verify_apdu("0000")) == b"\x63\xc2"
        conn.close()

        command("remove 0", r"^slot 0: removed$")
        assert wait_for_card(names[0], present=False, timeout=10) == b""
        assert wait_for_card(names[1], present=True, timeout=10)  # the other card stays
        command("insert", r"^slot 0: inserted$")  # the slot defaults to the first
        assert wait_for_card(names[0], present=True, timeout=10)
        command("status", r"^slot 0: inserted; auth 2/3, sign 5/5")
        command("insert 7", r"^no card for slot 7")
        # any ctl command, through the same controls API as `mynaemu ctl`
        command("block auth", r"^slot 0: auth: 0/3 tries$")
        conn = scard_connect(names[0])
        assert conn.transmit(SELECT_JPKI) == OK
        assert conn.transmit(SELECT_AUTH_PIN) == OK
        assert conn.transmit(verify_apdu("1234")) == b"\x69\x84"
        conn.close()
        command("1 set-tries sign 2", r"^slot 1: sign: 2/5 tries$")
        command("set-tries auth 9", r"^slot 0: error: tries for 'auth' must be an integer from 0 to 3")
        command("unblock auth", r"^slot 0: auth: 3/3 tries$")
        command("fault explode", r"^argument KIND: invalid choice: .explode.")
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(20) == 0
        assert any("state is saved" in line for line in lines.rest())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    for name in names:
        wait_for_card(name, present=False, timeout=10)
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 3
    assert Card.load(second, read_only=True).tries_left("sign") == 2
