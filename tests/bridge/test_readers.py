"""``mynaemu readers setup/remove`` on a scratch directory, and ``serve --slot`` for slots 2-15.

The second test runs a pcscd of its own (private network and mount namespaces, the scratch
reader entries bind-mounted over /etc/reader.conf.d) from a helper process, since this process's
libpcsclite is bound to the session's pcscd; ``mynaemu serve`` and the checking client are
pointed at it with PCSCLITE_CSOCK_NAME.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reader_bridge.netns import namespaces_unavailable_reason
from reader_bridge.pcscd import SOCKET_ENV, pcsc_unavailable_reason, reader_name
from reader_bridge.readers import MARK, VPCD_DRIVER, configured_slots, slot_of

ROOT = Path(__file__).resolve().parents[2]
AID_JPKI = "D392F000260100000001"


def mynaemu(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mynaemu", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)  # fmt: skip


@pytest.fixture
def scratch(tmp_path: Path) -> tuple[Path, Path]:
    """A scratch reader.conf.d holding Debian's vpcd entry and an unrelated one, and a library dir."""
    if not VPCD_DRIVER.exists():
        pytest.skip(f"{VPCD_DRIVER} missing (apt-get install vsmartcard-vpcd)")
    conf = tmp_path / "reader.conf.d"
    conf.mkdir()
    (conf / "vpcd").write_text('FRIENDLYNAME "Virtual PCD"\nDEVICENAME   /dev/null:0x8C7B\n'
                               f"LIBPATH      {VPCD_DRIVER}\nCHANNELID    0x8C7B\n")  # fmt: skip
    (conf / "libccidtwin").write_text("#DEVICENAME /dev/ttyS0\n")
    return conf, tmp_path / "lib"


def test_readers_setup_and_remove_on_a_scratch_dir(scratch: tuple[Path, Path]) -> None:
    conf, lib = scratch
    assert configured_slots(conf) == 2
    done = mynaemu("readers", "setup", "16", "--conf-dir", str(conf), "--lib-dir", str(lib))
    assert done.returncode == 0, done.stderr
    entries = sorted(p.name for p in conf.glob("mynaemu-vpcd-*"))
    assert entries == sorted(f"mynaemu-vpcd-{b}" for b in range(2, 16, 2))  # Debian's entry gives 0-1
    assert sorted(p.name for p in lib.iterdir()) == sorted(f"libifdvpcd-{b}.so" for b in range(2, 16, 2))
    assert configured_slots(conf) == 16
    text = (conf / "mynaemu-vpcd-14").read_text()
    assert text.startswith(MARK)
    assert 'FRIENDLYNAME "Virtual PCD 14-15"' in text and "DEVICENAME   /dev/null:0x8C89" in text
    assert f"LIBPATH      {lib / 'libifdvpcd-14.so'}" in text and "CHANNELID    0x8C89" in text
    assert (lib / "libifdvpcd-14.so").read_bytes() == VPCD_DRIVER.resolve().read_bytes()

    # A smaller setup replaces the larger one.
    assert mynaemu("readers", "setup", "3", "--conf-dir", str(conf), "--lib-dir", str(lib)).returncode == 0
    assert sorted(p.name for p in conf.glob("mynaemu-vpcd-*")) == ["mynaemu-vpcd-2"]
    assert configured_slots(conf) == 4

    removed = mynaemu("readers", "remove", "--conf-dir", str(conf), "--lib-dir", str(lib))
    assert removed.returncode == 0, removed.stderr
    assert sorted(p.name for p in conf.iterdir()) == ["libccidtwin", "vpcd"]  # only ours went
    assert not lib.exists()
    assert configured_slots(conf) == 2


def test_readers_setup_writes_slots_0_and_1_into_an_empty_dir(tmp_path: Path) -> None:
    if not VPCD_DRIVER.exists():
        pytest.skip(f"{VPCD_DRIVER} missing")
    conf = tmp_path / "conf"
    conf.mkdir()
    assert mynaemu("readers", "setup", "4", "--conf-dir", str(conf), "--lib-dir", str(tmp_path / "lib")).returncode == 0
    assert sorted(p.name for p in conf.iterdir()) == ["mynaemu-vpcd-0", "mynaemu-vpcd-2"]
    assert f"LIBPATH      {VPCD_DRIVER}\n" in (conf / "mynaemu-vpcd-0").read_text()
    assert configured_slots(conf) == 4


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["setup", "17"], 2, "1 to 16"),
        (["setup", "0"], 2, "1 to 16"),
        (["setup", "x"], 2, "invalid int"),
        (["setup", "4", "--conf-dir", "/nonexistent/dir"], 2, "no such directory"),
        (["frob"], 2, "invalid choice"),
    ],
)
def test_readers_bad_input_is_one_line(args: list[str], code: int, says: str, tmp_path: Path) -> None:
    proc = mynaemu("readers", *args, "--lib-dir", str(tmp_path / "lib")) if args[0] == "setup" else mynaemu("readers", *args)
    assert proc.returncode == code
    assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_reader_names_of_every_slot() -> None:
    assert reader_name(0) == "Virtual PCD 00 00" and reader_name(1) == "Virtual PCD 00 01"
    assert reader_name(2) == "Virtual PCD 2-3 00 00" and reader_name(15) == "Virtual PCD 14-15 00 01"
    listed = [reader_name(s) for s in range(16)]
    assert [slot_of(n) for n in listed] == list(range(16))
    assert [reader_name(s, listed[::-1]) for s in range(16)] == listed  # never slot 1 for "… 12-13 00 01"
    assert slot_of("Other Reader 00 00") is None


PCSCD_HELPER = textwrap.dedent("""
    import sys
    from reader_bridge.pcscd import PcscdHarness
    harness = PcscdHarness(private_socket=True, reader_conf_dir=sys.argv[1]).start()
    print(harness.socket_path, len(harness.readers()), flush=True)
    sys.stdin.read()   # until the test closes our stdin
    harness.close()
""")
CLIENT = textwrap.dedent("""
    import json, sys
    from smartcard import scard
    from reader_bridge.pcscd import pcsc_context, find_vpcd_readers
    out = {}
    with pcsc_context() as ctx:
        for name in sys.argv[2:]:
            hr, h, proto = scard.SCardConnect(ctx, name, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T1)
            hr, rsp = scard.SCardTransmit(h, proto, list(bytes.fromhex(sys.argv[1])))
            out[name] = bytes(rsp).hex().upper()
            scard.SCardDisconnect(h, scard.SCARD_LEAVE_CARD)
    print(json.dumps({"listed": find_vpcd_readers(), "answers": out}))
""")


@pytest.mark.pcsc
def test_serve_slots_2_to_15_through_a_private_pcscd(scratch: tuple[Path, Path], card_dir: Path, tmp_path: Path) -> None:
    """Sixteen vpcd slots from the scratch entries; ``serve --slot 2`` with 14 cards fills 2-15, all answer."""
    reason = pcsc_unavailable_reason() or namespaces_unavailable_reason()
    if reason is not None:
        if os.environ.get("MYNAEMU_REQUIRE_PCSC") == "1":
            pytest.fail(f"MYNAEMU_REQUIRE_PCSC=1 but {reason}")
        pytest.skip(reason)
    conf, lib = scratch
    assert mynaemu("readers", "setup", "16", "--conf-dir", str(conf), "--lib-dir", str(lib)).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    helper = subprocess.Popen([sys.executable, "-c", PCSCD_HELPER, str(conf)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)  # fmt: skip
    serve = None
    try:
        assert helper.stdout is not None
        socket_path, count = helper.stdout.readline().split()
        assert int(count) == 16
        env[SOCKET_ENV] = socket_path
        cards = []
        for slot in range(2, 16):
            cards.append(tmp_path / f"card{slot}")
            shutil.copytree(card_dir, cards[-1])
        serve = subprocess.Popen([sys.executable, "-m", "mynaemu", "serve", "--slot", "2", *map(str, cards)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)  # fmt: skip
        assert serve.stdout is not None
        names = []
        for _ in range(14):
            line = serve.stdout.readline()
            assert line.startswith("Serving card"), line + (serve.stderr.read() if serve.poll() is not None else "")
            names.append(line.split("reader '")[1].split("'")[0])
        assert names == [reader_name(s) for s in range(2, 16)]
        select = "00A4040C0A" + AID_JPKI
        client = subprocess.run([sys.executable, "-c", CLIENT, select, *names], capture_output=True, text=True, cwd=ROOT,
                                env=env, timeout=60)  # fmt: skip
        assert client.returncode == 0, client.stderr
        doc = json.loads(client.stdout)
        assert sorted(slot_of(n) for n in doc["listed"]) == list(range(16))
        assert doc["answers"] == dict.fromkeys(names, "9000")
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(15)
        helper.communicate("", timeout=15)
    assert serve.returncode == 0
