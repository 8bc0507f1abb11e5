"""`mynaemu serve` steered from other commands through its control socket, effects seen through PC/SC.

One served card (a subprocess, `-v` so that its DEBUG log is checked for secrets too); `ctl`,
`admin`, `send` and `run` run in this process through ``mynaemu.cli.main`` and reach it over
``CARD_DIR/.run/control.sock``. Waits use SCardGetStatusChange or the serve's output, never sleeps.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
from test_real_clients import (
    SELECT_AUTH_CERT,
    SELECT_AUTH_PIN,
    SELECT_JPKI,
    PcscError,
    running,
    scard_connect,
    serve_env,
    stop,
    verify_apdu,
)

from mynaemu import Card
from mynaemu.cli import main
from reader_bridge.pcscd import find_vpcd_readers, reader_name, wait_for_card

pytestmark = pytest.mark.pcsc
__all__ = ["scard_connect"]  # the fixture, imported for this module's tests

OK = b"\x90\x00"
QUERY = "00200080"
SELECT = SELECT_JPKI.hex().upper()
NEW_PIN = "4321"


def test_served_card_is_steered_by_ctl_admin_send_and_run(pcscd, card_dir: Path, tmp_path: Path, _data_dir: Path,
                                                          scard_connect, capsys, monkeypatch) -> None:
    from smartcard import scard as sc

    name = reader_name(0, find_vpcd_readers())
    wait_for_card(name, present=False, timeout=10)
    card = str(card_dir)
    args = [sys.executable, "-m", "mynaemu", "-v", "serve", card, "--no-start-pcscd"]
    with running(args, env=serve_env(_data_dir), cwd=tmp_path) as (proc, lines):
        lines.expect(r"^Serving card \S+ in reader 'Virtual PCD 00 00'")
        lines.expect(r"steer it: mynaemu ctl .* status")
        sock = card_dir / ".run" / "control.sock"
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
        wait_for_card(name, present=True, timeout=10)
        conn = scard_connect(name)
        assert conn.transmit(SELECT_JPKI) == OK
        assert conn.transmit(SELECT_AUTH_PIN) == OK
        assert conn.transmit(verify_apdu("0000")) == b"\x63\xc2"

        # block, then the municipal office's unblock, both while served
        assert main(["ctl", card, "block", "auth"]) == 0
        assert conn.transmit(verify_apdu("1234")) == b"\x69\x84"
        capsys.readouterr()
        assert main(["admin", card, "unblock", "auth"]) == 0
        assert capsys.readouterr().out == "auth: unblocked, 3 tries\n"
        assert conn.transmit(QUERY) == b"\x63\xc3"

        # reset-pin with the secret from the environment: never in argv, never in the serve's log
        monkeypatch.setenv("MYNAEMU_NEW_VALUE", NEW_PIN)
        assert main(["admin", card, "reset-pin", "auth"]) == 0
        assert conn.transmit(verify_apdu(NEW_PIN)) == OK
        monkeypatch.delenv("MYNAEMU_NEW_VALUE")
        assert main(["admin", card, "reset-pin", "sign", "abc"]) == 2  # refused by the serving process
        assert "6 to 16 characters" in capsys.readouterr().err

        assert main(["ctl", card, "set-tries", "auth", "2"]) == 0
        assert conn.transmit(QUERY) == b"\x63\xc2"

        # send through the channel shares the card's session with the PC/SC client
        capsys.readouterr()
        assert main(["send", card, SELECT, "00A4020C020018", "0020008004" + b"9999".hex(), QUERY]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[2] == "0020008004******** -> 63C1  verification failed or queried, 1 tries left"
        assert out[3].startswith("00200080 -> 63C1")
        assert main(["ctl", card, "unblock", "auth"]) == 0

        # run: a passing script and a failing one, against the served card
        script = tmp_path / "flow.apdu"
        script.write_text(f"{SELECT} => 9000\n00A4020C020018 => 9000\n"
                          "0020008004${AUTH_PIN} => 9000\n00200080 => 63C3\n")
        assert main(["run", str(script), card, "--var", f"AUTH_PIN={NEW_PIN}"]) == 0
        assert main(["run", str(script), card, "--var", "AUTH_PIN=9999"]) == 1
        assert "line 3: expected 9000, got 63C2" in capsys.readouterr().err
        assert main(["ctl", card, "unblock", "auth"]) == 0

        # a fault armed from the command line fires on its command only
        assert conn.transmit(SELECT_AUTH_CERT) == OK
        assert main(["ctl", card, "fault", "error", "--match", "00B0"]) == 0
        assert conn.transmit(SELECT_AUTH_CERT) == OK
        assert conn.transmit("00B0000002") == b"\x6f\x00"
        assert main(["ctl", card, "clear-faults"]) == 0
        assert conn.transmit("00B0000002") == b"\x30\x82\x90\x00"

        # remove and insert
        assert main(["ctl", card, "remove"]) == 0
        assert wait_for_card(name, present=False, timeout=10) == b""
        with pytest.raises(PcscError) as removed:
            conn.transmit(QUERY)
        assert removed.value.hresult == sc.SCARD_W_REMOVED_CARD
        assert main(["send", card, SELECT]) == 2
        assert "not in the reader" in capsys.readouterr().err
        assert main(["ctl", card, "insert"]) == 0
        wait_for_card(name, present=True, timeout=10)
        conn = scard_connect(name)
        assert conn.transmit(SELECT_JPKI) == OK

        # the lost card: its certificates revoked by the serving process, the card still answers
        capsys.readouterr()
        assert main(["admin", card, "suspend"]) == 0
        assert "auth CRL" in capsys.readouterr().out
        assert conn.transmit(SELECT_JPKI) == OK
        assert main(["ctl", card, "hold"]) == 2  # the authority's operations: a revoked certificate stays so
        assert "is revoked (keyCompromise); it cannot be held" in capsys.readouterr().err

        # the clock
        capsys.readouterr()
        assert main(["ctl", card, "clock-offset", "+400d"]) == 0
        assert main(["ctl", card, "--json", "status"]) == 0
        status = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert status["clock_offset_seconds"] == 400 * 86400 and status["inserted"] is True
        assert status["keys"]["auth"]["tries_left"] == 3 and status["suspended"]
        assert Card.load(card_dir, read_only=True).clock_offset.days == 400
        conn.close()
        rest = stop(proc, lines)
    output = "\n".join(lines.seen + rest)
    assert "state is saved" in output
    for secret in (NEW_PIN, NEW_PIN.encode().hex(), NEW_PIN.encode().hex().upper()):
        assert secret not in output.replace(status["card_id"], "CARD"), secret
    assert wait_for_card(name, present=False, timeout=10) == b""
    assert not sock.exists()  # removed on the way out
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 3
