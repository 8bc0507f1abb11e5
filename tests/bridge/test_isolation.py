"""Nobody else becomes the card (issue 9): the private network namespace, the fallback warning,
the loud exit on a lost slot, the occupied-slot and same-card-twice refusals.

``mynaemu serve`` runs as a subprocess exactly as the README says, inside a sandbox: a fresh
network namespace standing in for "the machine's" (so another engineer's pcscd on this host
cannot disturb the test) plus a private /run/pcscd. An attacker runs as user ``nobody`` in
that same namespace. PC/SC clients are subprocesses with ``PCSCLITE_CSOCK_NAME`` pointing at the
sandbox's socket (this process's libpcsclite is bound to the session's pcscd). Waits are on
subprocess output, PC/SC status changes or process exit; the attacker's own polling is its
behaviour, not the test's synchronisation.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_real_clients import Lines, serve_args, serve_env

from mynaemu import Card
from reader_bridge import netns
from reader_bridge.echo import EchoCard
from reader_bridge.pcscd import SOCKET_ENV, pcscd_pid
from reader_bridge.serve import SlotOccupied, serve
from reader_bridge.vpcd import VirtualReaderSet

pytestmark = pytest.mark.pcsc

READER = "Virtual PCD 00 00"
LAUNCHER = [sys.executable, "-I", netns.__file__]

ATTACKER = r"""
import json, signal, socket, sys, time
PORTS = (35963, 35964)
ANSWER = sys.argv[1] == "answer"  # also play the card: answer get ATR and APDUs
refused = {p: 0 for p in PORTS}
errors, connected, received, held, bufs = {}, [], 0, {}, {}
stop = False

def on_term(*_):
    global stop
    stop = True

signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while not stop:
    for port in PORTS:
        s = held.get(port)
        if s is not None:
            try:
                data = s.recv(70000)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                held.pop(port).close()
                continue
            if not received:
                print("received", flush=True)
            received += len(data)
            buf = bufs[port] = bufs.get(port, b"") + data
            while ANSWER and len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                n = int.from_bytes(buf[:2], "big")
                msg, buf = buf[2:2 + n], buf[2 + n:]
                rsp = bytes.fromhex("3B8080010101") if msg == b"\x04" else (b"\x90\x00" if n > 1 else b"")
                if rsp:
                    s.setblocking(True)
                    s.sendall(len(rsp).to_bytes(2, "big") + rsp)
                    s.setblocking(False)
            bufs[port] = buf
            continue
        s = socket.socket()
        s.settimeout(0.2)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            refused[port] += 1
            s.close()
            continue
        except OSError as exc:
            errors[str(exc)] = errors.get(str(exc), 0) + 1
            s.close()
            continue
        s.setblocking(False)
        held[port] = s
        connected.append(port)
        print("connected", port, flush=True)
    time.sleep(0.02)
print(json.dumps({"refused": refused, "connected": connected, "received": received, "errors": errors}), flush=True)
"""

CLIENT = r"""
import json, sys, time
from smartcard import scard as sc
reader, steps = sys.argv[1], sys.argv[2:]
SELECT_JPKI = list(bytes.fromhex("00A4040C0AD392F000260100000001"))
SELECT_AUTH_PIN = list(bytes.fromhex("00A4020C020018"))
VERIFY = list(bytes.fromhex("002000800431323334"))
QUERY = list(bytes.fromhex("00200080"))
BIG = [0x00, 0xD6, 0x00, 0x00, 0x00, 0xFF, 0xF9] + [0x41] * 65529  # 65,536 bytes: one more than a vpcd frame
assert len(BIG) == 65536
_, ctx = sc.SCardEstablishContext(sc.SCARD_SCOPE_USER)

def connect(timeout=15.0):
    # Until the card answers SELECT JPKI; between attempts, wait for the reader's state to change.
    deadline, state = time.monotonic() + timeout, sc.SCARD_STATE_UNAWARE
    while True:
        hr, h, p = sc.SCardConnect(ctx, reader, sc.SCARD_SHARE_SHARED, sc.SCARD_PROTOCOL_T0 | sc.SCARD_PROTOCOL_T1)
        if hr == sc.SCARD_S_SUCCESS:
            hr, rsp = sc.SCardTransmit(h, p, SELECT_JPKI)
            if hr == sc.SCARD_S_SUCCESS and rsp == [0x90, 0x00]:
                return h, p
            # LEAVE, not RESET: pcscd 1.9.9 marks the reader empty for good when a reset fails
            # (a link that just dropped), although vpcd has our card again a moment later.
            sc.SCardDisconnect(h, sc.SCARD_LEAVE_CARD)
        if time.monotonic() > deadline:
            sys.exit(f"no usable card in {reader}: {hr:08X} {sc.SCardGetErrorMessage(hr)}")
        hr, res = sc.SCardGetStatusChange(ctx, 200, [(reader, state)])
        if hr == sc.SCARD_S_SUCCESS:
            state = res[0][1] & ~sc.SCARD_STATE_CHANGED

out = {}
for step in steps:
    h, p = connect()
    if step == "big":
        hr, rsp = sc.SCardTransmit(h, p, BIG)
        out["big"] = f"{hr & 0xFFFFFFFF:08X}"
    elif step == "verify":
        sw = lambda apdu: bytes(sc.SCardTransmit(h, p, apdu)[1][-2:]).hex().upper()
        out["select"], out["verify"], out["query"] = sw(SELECT_AUTH_PIN), sw(VERIFY), sw(QUERY)
    sc.SCardDisconnect(h, sc.SCARD_LEAVE_CARD)
print(json.dumps(out), flush=True)
"""


class Sandbox:
    """A fresh network namespace (held by a process in it) and a private /run/pcscd for serve."""

    def __init__(self) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="mynaemu-sbx-"))
        self.run_dir.chmod(0o755)
        self.socket = self.run_dir / "pcscd.comm"
        self.holder = subprocess.Popen([*LAUNCHER, "--net", "new", "--", "sh", "-c", "echo in; exec sleep 3600"],
                                       stdout=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None and self.holder.stdout.readline() == "in\n"
        self.net = f"/proc/{self.holder.pid}/ns/net"
        self.procs: list[subprocess.Popen[str]] = []

    def popen(self, args: list[str], *, user: str | None = None, env: dict[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen[str]:
        """Run ``args`` in the sandbox (as ``user``, without the private /run/pcscd, when given)."""
        prefix = [*LAUNCHER, "--net", self.net]
        prefix += ["--user", user] if user else ["--bind", f"{self.run_dir}:/run/pcscd"]
        env = dict(env if env is not None else os.environ)
        env.pop(SOCKET_ENV, None)  # inside, /run/pcscd/pcscd.comm is the sandbox's: the default
        proc = subprocess.Popen([*prefix, "--", *args], env=env, text=True, **kwargs)
        self.procs.append(proc)
        return proc

    def client(self, *steps: str) -> dict[str, str]:
        """A pyscard client of the sandbox's pcscd, run from outside it."""
        proc = subprocess.run([sys.executable, "-c", CLIENT, READER, *steps], capture_output=True, text=True,
                              timeout=60, env=dict(os.environ, **{SOCKET_ENV: str(self.socket)}))
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def pcscd_pid(self) -> int:
        pid = pcscd_pid(self.socket)
        assert pid is not None, "no pcscd answers in the sandbox"
        return pid

    def close(self) -> None:
        for proc in [*self.procs, self.holder]:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        with contextlib.suppress(OSError):  # a pcscd that served here, if one is left
            pid = pcscd_pid(self.socket)
            if pid:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.run_dir, ignore_errors=True)


@pytest.fixture
def sandbox(pcscd) -> Iterator[Sandbox]:  # pcscd: skips where PC/SC or namespaces are missing
    box = Sandbox()
    yield box
    box.close()


def start_attacker(box: Sandbox, mode: str = "listen") -> tuple[subprocess.Popen[str], Lines]:
    # A system interpreter: nobody may not reach ours (a venv under /root); the attacker needs only the stdlib.
    python = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")
    if python is None:
        pytest.skip("no python3 in /usr/bin or /bin for the unprivileged attacker")
    proc = box.popen([python, "-I", "-c", ATTACKER, mode], user="nobody", cwd="/",
                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines = Lines(proc.stdout)
    lines.expect("^ready$")
    return proc, lines


def attacker_report(proc: subprocess.Popen[str], lines: Lines) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0, lines.seen
    return json.loads([line for line in lines.seen + lines.rest() if line.startswith("{")][-1])


def start_serve(box: Sandbox, card_dir: Path, data_dir: Path, trace: Path, **env: str) -> tuple[subprocess.Popen[str], Lines]:
    proc = box.popen(serve_args(str(card_dir), "--trace", str(trace)), env=dict(serve_env(data_dir), **env),
                     cwd=card_dir.parent, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    return proc, Lines(proc.stdout)


def connects(trace: Path) -> int:
    return sum(1 for line in trace.read_text().splitlines() if json.loads(line).get("event") == "connect")


def verifies(trace: Path) -> list[str]:
    return [r["sw"] for r in map(json.loads, trace.read_text().splitlines()) if r.get("cmd") == "0020008004********"]


def test_attacker_never_becomes_the_card(sandbox: Sandbox, card_dir: Path, _data_dir: Path, tmp_path: Path) -> None:
    """The issue's attack against `mynaemu serve CARD`: link drops (a 65,536-byte APDU, pcscd killed,
    serve restarted) while `nobody` keeps trying to get into vpcd's accept queue.

    Protection that stops it: the private network namespace. vpcd listens only inside pcscd's
    namespace, so every connect in the namespace serve was started in is refused.
    """
    started = time.monotonic()
    attacker, attack_lines = start_attacker(sandbox)
    trace = tmp_path / "trace.jsonl"
    proc, lines = start_serve(sandbox, card_dir, _data_dir, trace)
    lines.expect(rf"^Serving card \S+ in reader '{READER}'")
    assert not [line for line in lines.seen if "warning" in line]  # no fallback here

    # Drop 1: one APDU longer than a vpcd frame makes vpcd drop our link; we get the slot back.
    assert sandbox.client("big", "verify") == {"big": "80100016", "select": "9000", "verify": "9000", "query": "63C3"}
    assert connects(trace) == 2
    assert verifies(trace) == ["9000"]  # the PIN reached our card, not someone else

    # Drop 2: pcscd killed. serve cannot get its slot back, so it says so and exits non-zero.
    killed = time.monotonic()
    os.kill(sandbox.pcscd_pid(), signal.SIGKILL)
    assert proc.wait(20) == 1
    lost_after = time.monotonic() - killed
    rest = lines.rest()
    assert any("error: slot 0 lost" in line for line in rest), rest
    assert not any("Traceback" in line for line in rest), rest

    # Drop 3: serve started again (a new pcscd); the PIN still reaches only our card.
    proc, lines = start_serve(sandbox, card_dir, _data_dir, trace)
    lines.expect(rf"^Serving card \S+ in reader '{READER}'")
    assert sandbox.client("verify") == {"select": "9000", "verify": "9000", "query": "63C3"}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0

    report = attacker_report(attacker, attack_lines)
    assert report["received"] == 0 and report["connected"] == [], report
    assert all(n > 0 for n in report["refused"].values()), report  # namespace: connect refused
    assert verifies(trace) == ["9000", "9000"]
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 3
    print(f"hijack test: {time.monotonic() - started:.1f} s; serve exited {lost_after:.1f} s after pcscd died; "
          f"attacker refused {report['refused']}")


def test_fallback_warns_once_and_exits_loudly_when_someone_else_answers(
    sandbox: Sandbox, card_dir: Path, _data_dir: Path, tmp_path: Path
) -> None:
    """A pcscd that mynaemu did not start runs in serve's own namespace (a system pcscd): serve
    warns in one line naming the firewall mitigation; when the attacker does get the slot, serve
    notices and exits non-zero instead of waiting while the attacker answers."""
    system_pcscd = sandbox.popen([shutil.which("pcscd", path="/usr/sbin:/usr/bin") or "pcscd", "-f"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trace = tmp_path / "trace.jsonl"
    proc, lines = start_serve(sandbox, card_dir, _data_dir, trace)
    lines.expect(rf"^Serving card \S+ in reader '{READER}'")
    warnings = [line for line in lines.seen if "warning" in line]
    assert len(warnings) == 1, lines.seen
    assert f"pcscd (pid {system_pcscd.pid}) was not started by mynaemu" in warnings[0]
    assert "iptables -A OUTPUT -o lo -p tcp --dport 35963:35964 -m owner ! --uid-owner 0 -j REJECT" in warnings[0]

    attacker, attack_lines = start_attacker(sandbox, "answer")
    attack_lines.expect("^connected 35963$")  # in vpcd's accept queue, behind our link
    assert sandbox.client("big") == {"big": "80100016"}  # our link drops; vpcd takes the attacker
    attack_lines.expect("^received$")
    assert proc.wait(15) == 1
    rest = lines.rest()
    assert any("shows a card that is not ours" in line or "slot 0 lost" in line for line in rest), rest
    attacker_report(attacker, attack_lines)


def test_no_namespace_privileges_warns_once(sandbox: Sandbox, card_dir: Path, _data_dir: Path, tmp_path: Path) -> None:
    """MYNAEMU_NETNS=0 (as without root): serve starts pcscd in its own namespace and says so once."""
    proc, lines = start_serve(sandbox, card_dir, _data_dir, tmp_path / "trace.jsonl", MYNAEMU_NETNS="0")
    lines.expect(rf"^Serving card \S+ in reader '{READER}'")
    warnings = [line for line in lines.seen if "warning" in line]
    assert len(warnings) == 1, lines.seen
    assert "mynaemu started pcscd in this network namespace (MYNAEMU_NETNS=0 is set)" in warnings[0]
    assert "--uid-owner 0 -j REJECT" in warnings[0]
    assert sandbox.client("verify")["verify"] == "9000"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def test_serve_refuses_an_occupied_slot(pcscd, slots, card_dir: Path, _data_dir: Path, tmp_path: Path) -> None:
    echo = EchoCard()
    slots.insert(0, echo)
    proc = subprocess.run(serve_args(str(card_dir), "--no-start-pcscd"), env=serve_env(_data_dir), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"mynaemu serve: error: reader '{READER}' already holds a card (another 'mynaemu serve' or vpcd client "
        "has slot 0); not serving into it"
    ]
    assert "Serving card" not in proc.stdout
    assert slots.readers[0].connected.is_set() and slots.readers[0].connections == 1  # the card there stays
    with pytest.raises(SlotOccupied):
        serve({0: EchoCard()})


def test_one_card_object_in_two_slots_is_refused() -> None:
    card = EchoCard()
    with VirtualReaderSet(base_port=1) as readers:  # nothing listens there; the links just retry
        readers.insert(0, card)
        with pytest.raises(ValueError, match="this card is already in slot 0; a card can be in one slot only"):
            readers.insert(1, card)
        assert list(readers.links) == [0]
        readers.insert(1, EchoCard())  # another card is fine


@pytest.mark.parametrize("spelling", ["same", "symlink", "dot", "dotdot"])
def test_serve_refuses_the_same_card_directory_twice(spelling: str, card_dir: Path, _data_dir: Path, tmp_path: Path) -> None:
    other = {"same": str(card_dir), "symlink": str(tmp_path / "link"), "dot": f"{card_dir.parent}/./{card_dir.name}/",
             "dotdot": f"{card_dir}/../{card_dir.name}"}[spelling]
    (tmp_path / "link").symlink_to(card_dir)
    proc = subprocess.run(serve_args(str(card_dir), other), env=serve_env(_data_dir), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mynaemu serve: error: {Path(other)} is the same card directory as {card_dir}; a card can be served in one slot only"
    ]
    assert proc.stdout == ""
