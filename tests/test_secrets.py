"""Secrets stay secret: traces, logs and CLI output, file modes, sockets, constant-time comparison.

No PIN, password or check number (照合番号A/B, birth-date key), right or wrong, appears in an APDU
trace, a log record at DEBUG or the output of ``send``/``info``/``admin``, in ASCII or in hex; the
one exception is the print at ``issue``. The My Number is the holder's data and legitimately shows
in ``info``; what must never show is its hex as VERIFY data.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import hmac
import inspect
import ipaddress
import json
import logging
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mynaemu import Card, admin
from mynaemu.cli import build_parser, main
from mynaemu.issuance import persona_from_json
from mynaemu.persona import check_number_b, japanese_era_yymmdd, my_number_check_digit
from reader_bridge.trace import ApduTrace
from reader_bridge.vpcd import VpcdLink

from .cardkit import key_locations, right_values, wrong_value
from .conftest import AID

ROOT = Path(__file__).resolve().parent.parent
# `python -m mynaemu` with every logger at DEBUG on stderr (mynaemu has no switch of its own for it).
DEBUG_CLI = ("import logging, sys; logging.basicConfig(level=logging.DEBUG); "
             "from mynaemu.cli import main; sys.exit(main(sys.argv[1:]))")
NEW_VALUES = {"auth": "9876", "sign": "NEWPASS9", "juki": "1357"}


class Secrets:
    """Secret values, looked for in ASCII and in hex (upper and lower case).

    In a hex field (an APDU, a status word) only the hex forms count: a digit PIN's ASCII form can
    be part of an AID there without meaning anything.
    """

    def __init__(self, values: set[str], *, hex_only: set[str] = frozenset()) -> None:
        self.ascii = set(values) - set(hex_only)
        self.hex = {f for v in values | set(hex_only) for f in (v.encode().hex(), v.encode().hex().upper())}

    def in_text(self, text: str) -> list[str]:
        return sorted(s for s in self.ascii | self.hex if s in text)

    def in_hex(self, field: str) -> list[str]:
        return sorted(s for s in self.hex if s in field)

    def in_trace(self, line: str) -> list[str]:
        """In one trace record: hex fields for hex forms, the other fields for all (times skipped)."""
        record = json.loads(line)
        found = []
        for name, value in record.items():
            if name in ("cmd", "rsp", "sw"):
                found += self.in_hex(value)
            elif name not in ("ts", "us"):
                found += self.in_text(str(value))
        return found

    def in_output(self, text: str) -> list[str]:
        """In CLI output: the 'CMD -> RSP  meaning' lines of `send` by field, anything else as text."""
        found = []
        for line in text.splitlines():
            if m := _SEND_LINE.fullmatch(line):
                found += self.in_hex(m[1]) + self.in_hex(m[2]) + self.in_text(m[3])
            else:
                found += self.in_text(line)
        return found


_SEND_LINE = re.compile(r"([0-9A-F*]*) -> ([0-9A-F]*)  (.*)")


def _apdu(head: str, data: bytes = b"") -> bytes:
    return bytes.fromhex(head) + (bytes((len(data),)) + data if data else b"")


def _session(card: Card) -> tuple[list[bytes], set[str]]:
    """Every kind of secret-bearing command: the APDUs, and the secret values they carried."""
    where, right = key_locations(card), right_values(card)
    apdus: list[bytes] = []
    used: set[str] = set()
    for key, (ap, fid) in sorted(where.items()):
        if key not in right:
            continue  # issued blocked, no value
        wrong = wrong_value(right[key])
        used |= {right[key], wrong}
        apdus += [_apdu("00A4040C", bytes.fromhex(AID[ap])), _apdu("00A4020C", fid.to_bytes(2, "big")),
                  _apdu("00200080", wrong.encode()), _apdu("00200080", right[key].encode()), _apdu("00200080")]
        if key in NEW_VALUES:
            change = "00240180" if card.keyring[key].spec.change == "iso" else "80320080"
            new = NEW_VALUES[key]
            used.add(new)
            apdus += [_apdu(change, new.encode()), _apdu("00200080", new.encode()), _apdu(change, right[key].encode())]
    pin = right["auth"].encode()
    apdus += [_apdu("00A4040C", bytes.fromhex(AID["jpki"])),
              bytes.fromhex("0020009800") + len(pin).to_bytes(2, "big") + pin,  # by SFI, extended Lc
              bytes.fromhex("0C20009804") + pin]  # secure-messaging class
    return apdus, used


def _disk_full(where: str) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_trace_and_logs_of_a_whole_session_hold_no_secret(card: Card, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    apdus, used = _session(card)
    path = tmp_path / "trace.jsonl"
    answers = []
    with ApduTrace(path) as trace:
        for apdu in apdus:
            start = time.perf_counter_ns()
            rsp = card.transmit(apdu)
            trace.exchange(0, apdu, rsp, time.perf_counter_ns() - start, card.current_ap)
            answers.append(rsp[-2:].hex().upper())
        # A state write that fails is logged: the log names the file, not the value.
        card.store.fault = _disk_full
        bad = _apdu("00200098", b"0001")  # auth by SFI
        used.add("0001")
        rsp = card.transmit(bad)
        trace.exchange(0, bad, rsp, 0, card.current_ap)
    assert rsp == b"\x65\x81"
    assert answers.count("9000") > 30 and "63C2" in answers  # the session did what it says
    assert any("state write failed" in r.getMessage() for r in caplog.records)
    secrets = Secrets(used)
    lines = path.read_text().splitlines()
    assert len(lines) == len(apdus) + 1
    for line in lines:
        assert secrets.in_trace(line) == [], line
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert secrets.in_text(text) == [], text


# -- the command line ----------------------------------------------------------------------------
def run_debug_cli(*args: str) -> subprocess.CompletedProcess:
    """``mynaemu ARGS`` in a subprocess, every logger at DEBUG."""
    res = subprocess.run([sys.executable, "-c", DEBUG_CLI, *args], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "Traceback" not in res.stderr, res.stderr
    return res


CLI_SECRETS = {"auth": "7391", "sign": "QZX7K2W9", "text": "8264", "juki": "5172"}


def test_cli_session_prints_and_logs_no_secret(tmp_path: Path) -> None:
    first11 = "52813064709"
    my_number = first11 + my_number_check_digit(first11)
    card_dir = tmp_path / "card"
    res = run_debug_cli("issue", str(card_dir), "--birth", "1975-06-03", "--my-number", my_number, "--seed", "11",
                        *[a for k, v in CLI_SECRETS.items() for a in (f"--{k}-pin", v)])
    assert res.returncode == 0, res.stderr
    head, _, shown_once = res.stdout.partition("Secrets (shown this once")
    assert all(v in shown_once for v in CLI_SECRETS.values())  # the one-time print ...
    persona = persona_from_json(json.loads((card_dir / "card.json").read_text())["persona"])
    check_b, birth6 = check_number_b(persona), japanese_era_yymmdd(persona.birth)
    pins = set(CLI_SECRETS.values()) | {"4826", "RESET123", "3141"}
    wrongs = {wrong_value(v) for v in (*CLI_SECRETS.values(), my_number, check_b, birth6)}
    secrets = Secrets(pins | wrongs | {check_b, birth6}, hex_only={my_number})  # the My Number shows in info
    assert secrets.in_output(head + res.stderr) == []  # ... and nothing before it

    def v(value: str, p2: str = "80") -> str:
        return f"002000{p2}{len(value):02X}{value.encode().hex()}"

    def sel(ap: str, fid: str) -> list[str]:
        return [f"00A4040C{len(AID[ap]) // 2:02X}{AID[ap]}", f"00A4020C02{fid}"]

    auth, sign, text, juki = CLI_SECRETS["auth"], CLI_SECRETS["sign"], CLI_SECRETS["text"], CLI_SECRETS["juki"]
    session = [
        *sel("jpki", "0018"), v(wrong_value(auth)), v(auth), "00200080", f"0024018004{b'4826'.hex()}", v("4826"),
        f"0024018004{auth.encode().hex()}", "002000800000" + f"04{auth.encode().hex()}",
        *sel("jpki", "001B"), v(wrong_value(sign)), v(sign), f"0024018008{b'RESET123'.hex()}",
        f"0024018008{sign.encode().hex()}",
        *sel("text", "0011"), v(wrong_value(text)), v(text),
        *sel("text", "0014"), v(wrong_value(my_number)), v(my_number),  # 照合番号A
        *sel("text", "0015"), v(wrong_value(check_b)), v(check_b),  # 照合番号B
        *sel("visual", "0011"), v(wrong_value(birth6)), v(birth6),
        *sel("visual", "0013"), v(my_number), *sel("visual", "0012"), v(check_b),
        *sel("juki", "001C"), v(wrong_value(juki)), v(juki), f"8032008004{b'3141'.hex()}",
        f"8032008004{juki.encode().hex()}", *sel("common", "001C"), v(juki),
    ]
    runs = {
        "send": run_debug_cli("send", str(card_dir), *session),
        "info": run_debug_cli("info", str(card_dir)),
        "info --json": run_debug_cli("info", str(card_dir), "--json"),
        "unblock": run_debug_cli("admin", str(card_dir), "unblock", "auth"),
        "reset-pin": run_debug_cli("admin", str(card_dir), "reset-pin", "text", "3141"),
        "kiosk-reset": run_debug_cli("admin", str(card_dir), "kiosk-reset", "auth", "4826", "--other", sign),
        "kiosk-reset wrong": run_debug_cli("admin", str(card_dir), "kiosk-reset", "sign", "RESET123", "--other", "0000"),
    }
    assert runs["send"].returncode == 0 and runs["send"].stdout.count("-> 9000") > 25, runs["send"]
    assert "63C" in runs["send"].stdout and my_number in runs["info --json"].stdout  # the holder's data
    assert runs["kiosk-reset wrong"].returncode == 2
    for name, res in runs.items():
        assert secrets.in_output(res.stdout + res.stderr) == [], f"{name}:\n{res.stdout}{res.stderr}"
    assert my_number not in runs["send"].stdout


@pytest.mark.parametrize(("apdu", "secret"), [
    ("002000800431323334", "31323334"),
    ("0C2000800431323334", "31323334"),
    ("00200080000004313233340000", "31323334"),
    ("002401800439383736", "39383736"),
    ("803200800439383736", "39383736"),
    ("002C000104313233343536", "31323334"),
    ("102000800431323334", "31323334"),
    ("842000800431323334", "31323334"),
    ("00200080023132333400", "31323334"),
])
def test_send_never_echoes_secret_data(card_dir: Path, capsys, apdu: str, secret: str) -> None:
    """Whatever the card answers, the echoed command hides the data as the trace would."""
    assert main(["send", str(card_dir), apdu]) == 0
    out = capsys.readouterr().out
    chunks = {secret[i : i + 4] for i in range(0, len(secret) - 2, 2)}  # any two bytes of it
    assert [c for c in chunks if c in out.split(" -> ")[0]] == [], out


# -- file modes ------------------------------------------------------------------------------------
def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


def test_authority_directory_and_key_files_are_private(_data_dir: Path, issued_template) -> None:
    modes = _modes(_data_dir / "authority")
    assert modes.pop(".") == 0o700
    assert modes and all(m == 0o600 for m in modes.values()), modes
    assert any(name.endswith(".key.pem") for name in modes)


def _issue_under_umask_0(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "mynaemu", "issue", str(tmp_path / "cards" / "card")], check=True,
                   capture_output=True, timeout=120, cwd=ROOT, preexec_fn=lambda: os.umask(0),
                   env={**os.environ, "PYTHONPATH": str(ROOT), "MYNAEMU_DATA_DIR": str(data)})
    return data


def test_card_and_authority_stay_private_under_umask_0(tmp_path: Path) -> None:
    data = _issue_under_umask_0(tmp_path)
    for root in (tmp_path / "cards" / "card", data / "authority"):
        modes = _modes(root)
        assert modes.pop(".") == 0o700, root
        assert all(m == 0o600 for m in modes.values()), modes


def test_data_directory_created_by_mynaemu_is_not_world_writable(tmp_path: Path) -> None:
    data = _issue_under_umask_0(tmp_path)
    assert stat.S_IMODE(data.stat().st_mode) & 0o022 == 0


# -- sockets ---------------------------------------------------------------------------------------
_SERVER_CALLS = {"listen", "bind", "create_server", "start_server", "start_unix_server", "serve_forever",
                 "TCPServer", "ThreadingTCPServer", "HTTPServer", "UDPServer"}


# The one listener: a served card's control channel, a Unix socket (0600 in a 0700 directory, peer
# uid checked); test_control_channel_listens_only_on_a_unix_socket holds it to that.
_LOCAL_LISTENERS = {"mynaemu/channel.py"}


_LOOPBACK_LISTENERS = {Path("mynaemu/authority/service.py"), Path("mynaemu/console/run.py")}


@pytest.mark.parametrize("package", ["reader_bridge", "mynaemu"])
def test_no_code_opens_a_listening_socket(package: str) -> None:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if str(path.relative_to(ROOT)) in _LOCAL_LISTENERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                # The emulated authority's HTTP service and the trainer's console are the TCP listeners
                # (loopback only, tested in tests/test_authority_service.py, tests/test_console_security.py).
                if name in _SERVER_CALLS and path.relative_to(ROOT) not in _LOOPBACK_LISTENERS:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                found += [f"{path.relative_to(ROOT)}:{node.lineno} import {m}" for m in mods
                          if m.split(".")[0] in ("socketserver", "http") or m == "http.server"]
    assert found == []


def test_control_channel_listens_only_on_a_unix_socket() -> None:
    for rel in _LOCAL_LISTENERS:
        tree = ast.parse((ROOT / rel).read_text(), rel)
        families = [ast.unparse(node.args[0]) for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and ast.unparse(node.func) == "socket.socket"]
        assert families and all(f == "socket.AF_UNIX" for f in families), (rel, families)
        calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        assert not calls & {"socket.create_server", "socket.create_connection"}, rel


def test_every_entry_point_defaults_to_loopback() -> None:
    from reader_bridge.serve import serve
    from reader_bridge.vpcd import VirtualReaderSet

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(VpcdLink).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(VirtualReaderSet).parameters["host"].default == "127.0.0.1"
    with pytest.raises(SystemExit):  # the CLI offers no way to point the bridge elsewhere
        build_parser().parse_args(["serve", "--host", "0.0.0.0"])


def _tcp_sockets(pid: int | str, net_of: int | str | None = None) -> list[tuple[str, int, str, int, str]]:
    """(local ip, port, remote ip, port, state) of every TCP socket process ``pid`` holds.

    Only sockets of the network namespace that process ``net_of`` (default ``pid``) is in.
    """
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{net_of or pid}/net/{table}")
        if not path.exists():
            continue
        for row in path.read_text().splitlines()[1:]:
            f = row.split()
            if f[9] not in inodes:
                continue
            (lip, lport), (rip, rport) = (_addr(a) for a in (f[1], f[2]))
            out.append((lip, lport, rip, rport, "LISTEN" if f[3] == "0A" else f[3]))
    return out


def _addr(text: str) -> tuple[str, int]:
    ip_hex, port = text.split(":")
    raw = bytes.fromhex(ip_hex)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # 32-bit words, host order
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def test_link_in_this_process_listens_nowhere_and_connects_to_loopback(card: Card) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    port = server.getsockname()[1]
    before = {s for s in _tcp_sockets("self") if s[4] == "LISTEN"}
    link = VpcdLink(card, port=port).start()
    try:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"\x00\x01\x04")  # get ATR
            assert conn.recv(64)[2:] == card.atr
            listening = {s for s in _tcp_sockets("self") if s[4] == "LISTEN"}
            assert listening - before == set()  # the link added no listening socket
            mine = [s for s in _tcp_sockets("self") if s[3] == port]
            assert mine and all(s[0] == "127.0.0.1" == s[2] for s in mine), mine
    finally:
        link.close()
        server.close()


@pytest.mark.pcsc
def test_served_session_listens_nowhere_and_leaks_nothing(card_dir: Path, tmp_path: Path) -> None:
    """`mynaemu serve --trace` with pcscd: no listening socket of its own, no secret in trace or output."""
    from reader_bridge.pcscd import pcsc_unavailable_reason, pcscd_pid, use_private_socket

    reason = pcsc_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    use_private_socket()  # serve's pcscd: this session's private one, never the system's
    from smartcard.System import readers

    trace = tmp_path / "trace.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", DEBUG_CLI, "serve", str(card_dir), "--trace", str(trace),
                             "--slot", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    out, name = [], None
    try:
        deadline = time.monotonic() + 60
        while name is None and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 1)[0]:
                line = proc.stdout.readline()  # type: ignore[union-attr]
                out.append(line)
                if m := re.search(r"in reader '([^']+)'", line):
                    name = m.group(1)
        assert name is not None, "".join(out + err)
        # The link's socket lives in pcscd's private network namespace (the bridge's isolation).
        sockets = _tcp_sockets(proc.pid) + _tcp_sockets(proc.pid, net_of=pcscd_pid())
        assert [s for s in sockets if s[4] == "LISTEN"] == [], sockets
        assert sockets and all(s[0] == "127.0.0.1" == s[2] for s in sockets), sockets
        card = Card.load(card_dir, read_only=True)  # the served process is its writer
        apdus, used = _session(card)
        (reader,) = [r for r in readers() if str(r) == name]
        conn = reader.createConnection()
        conn.connect()
        answers = [conn.transmit(list(apdu))[1:] for apdu in apdus]
        conn.disconnect()
        if hasattr(conn, "release"):
            conn.release()  # before serve stops its pcscd
        del conn
        assert answers.count((0x90, 0x00)) > 30
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out.append(proc.stdout.read())  # type: ignore[union-attr]
    secrets = Secrets(used)
    text = "".join(out + err)
    assert "Traceback" not in text and secrets.in_output(text) == [], text
    lines = trace.read_text().splitlines()
    assert len(lines) >= len(apdus)
    for line in lines:
        assert secrets.in_trace(line) == [], line


# -- constant-time comparison -------------------------------------------------------------------
def test_verify_compares_fixed_length_digests_with_compare_digest(card: Card, monkeypatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    right = right_values(card)
    for key, (ap, fid) in sorted(key_locations(card).items()):
        if key not in right:
            continue
        value = right[key].encode()
        card.transmit(_apdu("00A4040C", bytes.fromhex(AID[ap])))
        card.transmit(_apdu("00A4020C", fid.to_bytes(2, "big")))
        wrong, short, long = wrong_value(right[key]).encode(), value[:1], value + b"0" * (255 - len(value))
        for candidate in (value, wrong, short, value, long, value):  # a match between: never blocked
            calls.clear()
            card.transmit(_apdu("00200080", candidate))
            assert len(calls) == 1, (key, candidate)
            (a, b), = calls
            assert isinstance(a, bytes) and isinstance(b, bytes) and len(a) == len(b) == 32, (key, len(a), len(b))
        calls.clear()
        card.transmit(_apdu("00200080"))  # the retry query compares nothing
        assert calls == []
    calls.clear()
    admin.kiosk_reset(card, "auth", "4321", right["sign"])  # the kiosk checks the other secret the same way
    assert [(len(a), len(b)) for a, b in calls] == [(32, 32)]


def test_keyring_never_compares_a_value_directly() -> None:
    """No ==/!= on a candidate, a value or a digest in mynaemu.keys: only compare_digest sees them."""
    tree = ast.parse((ROOT / "mynaemu" / "keys.py").read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            for sub in ast.walk(node):
                if (isinstance(sub, ast.Name) and sub.id == "candidate") or (
                        isinstance(sub, ast.Attribute) and sub.attr in ("value", "digest")
                        and not (isinstance(sub.value, ast.Attribute) and sub.value.attr == "spec")):
                    bad.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert bad == []
    assert hashlib.sha256(b"").digest_size == 32  # the digests compared are SHA-256


# -- every channel, every secret, under umask 000 and 077 -----------------------------------------
TRACE_SCRIPT = """
import logging, sys, time
logging.basicConfig(level=logging.DEBUG)
from mynaemu import Card, admin
from mynaemu.issuance import issue_card
from reader_bridge.trace import ApduTrace
card = Card.load(sys.argv[1])
with ApduTrace(sys.argv[2]) as trace:
    for text in sys.argv[4:]:
        apdu = bytes.fromhex(text)
        start = time.perf_counter_ns()
        rsp = card.transmit(apdu)
        trace.exchange(0, apdu, rsp, time.perf_counter_ns() - start, card.current_ap)
for call in (lambda: admin.reset_pin(card, "auth", sys.argv[3]), lambda: admin.kiosk_reset(card, "sign", "NEWPASS2", sys.argv[3]),
             lambda: issue_card(sys.argv[2] + ".d", secrets={"auth": sys.argv[3]})):
    try:
        call()
    except Exception as exc:
        print("exception:", type(exc).__name__, exc)
"""


@pytest.mark.parametrize("umask", [0o000, 0o077], ids=["umask000", "umask077"])
def test_no_channel_shows_a_secret_and_files_are_private(tmp_path: Path, umask: int) -> None:
    data = tmp_path / "data"
    base_env = {**os.environ, "PYTHONPATH": str(ROOT), "MYNAEMU_DATA_DIR": str(data)}
    for name in ("MYNAEMU_AUTH_PIN", "MYNAEMU_SIGN_PIN", "MYNAEMU_TEXT_PIN", "MYNAEMU_JUKI_PIN", "MYNAEMU_NEW_VALUE",
                 "MYNAEMU_OTHER_VALUE"):
        base_env.pop(name, None)

    def run(*args: str, env: dict[str, str] | None = None, script: str | None = None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "mynaemu", "-v", *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL,
                             env={**base_env, **(env or {})}, preexec_fn=lambda: os.umask(umask))
        assert "Traceback" not in res.stderr, res.stderr
        return res

    pins = {"auth": "7391", "sign": "QZX7K2W9", "text": "8264", "juki": "5172"}
    card_dir = tmp_path / "a" / "b" / "card"
    issued = run("issue", str(card_dir), "--seed", "5", env={f"MYNAEMU_{k.upper()}_PIN": v for k, v in pins.items()})
    assert issued.returncode == 0, issued.stderr
    head, _, shown_once = issued.stdout.partition("Secrets (shown this once")
    assert all(v in shown_once for v in pins.values())
    persona = persona_from_json(json.loads((card_dir / "card.json").read_text())["persona"])
    my_number = persona.my_number
    new = {"auth": "4826", "sign": "RESET123", "juki": "3141", "text": "2020", "kiosk": "6060"}
    wrong = {k: wrong_value(v) for k, v in pins.items()}
    bad = "98x6"  # a malformed value: refused, and never shown either

    def v(value: str, cla: str = "00", ins: str = "20") -> str:
        return f"{cla}{ins}0080{len(value):02X}{value.encode().hex()}"

    def sel(ap: str, fid: str) -> list[str]:
        return [f"00A4040C{len(AID[ap]) // 2:02X}{AID[ap]}", f"00A4020C02{fid}"]

    session = [
        *sel("jpki", "0018"), v(wrong["auth"]), v(pins["auth"]), "00200080",
        f"0024018004{new['auth'].encode().hex()}", v(new["auth"]), f"0024018004{pins['auth'].encode().hex()}",
        v(pins["auth"], ins="21"), v(pins["auth"], cla="80"), v(pins["auth"], cla="0C"),  # odd INS, other classes
        "0020008006" + pins["auth"].encode().hex(),  # Lc longer than the data
        *sel("jpki", "001B"), v(wrong["sign"]), v(pins["sign"]),
        *sel("text", "0014"), v(wrong_value(my_number)), v(my_number),
        *sel("juki", "001C"), v(wrong["juki"]), v(pins["juki"]), f"8032008004{new['juki'].encode().hex()}",
        f"0032008004{new['juki'].encode().hex()}",  # CHANGE KEY sent with CLA 00
        v(new["juki"]), f"8032008004{pins['juki'].encode().hex()}",
    ]
    (tmp_path / "new").write_text(new["text"] + "\n")
    trace_dir = tmp_path / "traces"
    trace_dir.mkdir()
    trace = trace_dir / "apdus.jsonl"
    runs = {
        "send": run("send", str(card_dir), *session),
        "send odd hex": run("send", str(card_dir), "00A4040C0AD392F000260100000001", v(pins["auth"])[:-1]),
        "send bad digit": run("send", str(card_dir), v(pins["sign"])[:-1] + "G"),
        "info": run("info", str(card_dir)),
        "info --json": run("info", str(card_dir), "--json"),
        "reset-pin file": run("admin", str(card_dir), "reset-pin", "text", "--new-value-file", str(tmp_path / "new")),
        "reset-pin bad": run("admin", str(card_dir), "reset-pin", "auth", env={"MYNAEMU_NEW_VALUE": bad}),
        "kiosk-reset": run("admin", str(card_dir), "kiosk-reset", "auth", env={"MYNAEMU_OTHER_VALUE": pins["sign"],
                                                                              "MYNAEMU_NEW_VALUE": new["kiosk"]}),
        "kiosk-reset wrong": run("admin", str(card_dir), "kiosk-reset", "sign", env={"MYNAEMU_NEW_VALUE": new["sign"],
                                                                                      "MYNAEMU_OTHER_VALUE": wrong["auth"]}),
        "trace": run(str(card_dir), str(trace), bad, *session, script=TRACE_SCRIPT),
    }
    assert runs["send"].returncode == 0 and runs["send"].stdout.count("-> 9000") > 15, runs["send"]
    assert "63C2" in runs["send"].stdout and my_number in runs["info --json"].stdout
    assert runs["send odd hex"].returncode == 2 and runs["reset-pin bad"].returncode == 2
    assert runs["kiosk-reset"].returncode == 0 and runs["kiosk-reset wrong"].returncode == 2
    assert runs["trace"].stdout.count("exception:") == 3, runs["trace"]
    secrets = Secrets(set(pins.values()) | set(new.values()) | set(wrong.values()) | {bad, wrong_value(my_number)},
                      hex_only={my_number})  # the My Number is the holder's data: only its VERIFY form is secret
    assert secrets.in_output(head + issued.stderr) == []
    for name, res in runs.items():
        assert secrets.in_output(res.stdout + res.stderr) == [], f"{name}:\n{res.stdout}{res.stderr}"
    lines = trace.read_text().splitlines()
    assert len(lines) == len(session)
    for line in lines:
        assert secrets.in_trace(line) == [], line
    # File modes: 0600 files and 0700 directories whatever the umask, missing parents included.
    for root in (card_dir, data / "authority"):
        modes = _modes(root)
        assert modes.pop(".") == 0o700, root
        assert modes and all(m == 0o600 for m in modes.values()), modes
    for created in (tmp_path / "a", tmp_path / "a" / "b", data):
        assert stat.S_IMODE(created.stat().st_mode) == 0o700, created
    assert stat.S_IMODE(trace.stat().st_mode) == 0o600


def test_an_existing_trace_file_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text("")
    path.chmod(0o644)
    with ApduTrace(path) as trace:
        trace.event(0, "connect")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
