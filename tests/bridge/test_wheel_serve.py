"""``mynaemu serve`` from the installed wheel: the demo card, with the documented demo PINs, in a reader."""

from __future__ import annotations

import json
from pathlib import Path

from reader_bridge.pcscd import find_vpcd_readers, reader_name, wait_for_card
from tests.bridge.test_real_clients import ATR, Lines, running, scard_connect, stop

__all__ = ["scard_connect"]  # a fixture, used by name
from tests.wheelkit import InstalledWheel

SELECT_JPKI = "00A4040C0AD392F000260100000001"
SELECT_AUTH_PIN = "00A4020C020018"
DEMO_PINS = "auth 1234, sign ABC123, text 5678, juki 2468"


def test_serve_demo_card_from_the_wheel(pcscd, installed_wheel: InstalledWheel, tmp_path: Path, scard_connect) -> None:
    name = reader_name(0, find_vpcd_readers())
    wait_for_card(name, present=False, timeout=10)
    demo = installed_wheel.data_dir / "demo-card"
    args = [str(installed_wheel.bin / "mynaemu"), "serve", "--no-start-pcscd"]
    with running(args, env=installed_wheel.env(), cwd=tmp_path) as (proc, lines):
        lines: Lines
        lines.expect(rf"^Issued the demo card in {demo}$", timeout=60)
        lines.expect(rf"^Demo card PINs: {DEMO_PINS} \(`mynaemu info --secrets {demo}` shows them\)$")
        lines.expect(rf"^Serving card \S+ in reader '{name}'\.")
        assert wait_for_card(name, present=True, timeout=10) == ATR
        conn = scard_connect(name)
        assert conn.transmit(SELECT_JPKI) == b"\x90\x00"
        assert conn.transmit(SELECT_AUTH_PIN) == b"\x90\x00"
        assert conn.transmit("0020008004" + b"1234".hex()) == b"\x90\x00"  # the README's --pin 1234
        conn.close()
        stop(proc, lines)
    wait_for_card(name, present=False, timeout=10)

    shown = installed_wheel.run("mynaemu", "info", str(demo), "--secrets", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["kind"] == "demo"
    assert doc["secrets"] == {"auth": "1234", "sign": "ABC123", "text": "5678", "juki": "2468"}
    assert doc["persona"]["my_number"] == "123456789018"
