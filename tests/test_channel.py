"""The control channel: socket modes, peer check, malformed and oversized lines, concurrent clients, secrets."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mynaemu import Card
from mynaemu.channel import MAX_LINE, ControlClient, ControlServer, socket_path
from mynaemu.controls import CardControls


@pytest.fixture
def served(card_dir: Path) -> Iterator[tuple[Card, ControlServer]]:
    card = Card.load(card_dir)
    server = ControlServer(card_dir, CardControls(card).handle).start()
    yield card, server
    server.close()
    card.close()


def raw(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def answer(sock: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    assert data.count(b"\n") == 1, data  # one request, one line
    return json.loads(data)


def test_socket_is_0600_in_a_0700_directory_and_goes_at_close(card_dir: Path) -> None:
    card = Card.load(card_dir)
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        server = ControlServer(card_dir, CardControls(card).handle).start()
    finally:
        os.umask(old_umask)
    path = socket_path(card_dir)
    assert path == card_dir / ".run" / "control.sock"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    server.close()
    assert not path.exists()
    assert ControlClient.connect(card_dir) is None  # not served any more
    card.close()
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 3  # a .run directory harms no load


def test_a_stale_socket_is_replaced_and_a_long_path_works(issued_template) -> None:
    deep = Path(tempfile.mkdtemp(prefix="mynaemu-" + "d" * 90))  # the socket path is longer than sun_path
    try:
        card_dir = deep / "card"
        shutil.copytree(issued_template.path, card_dir)
        assert len(str(socket_path(card_dir))) > 108
        (card_dir / ".run").mkdir(mode=0o700)
        stale, run_fd = socket.socket(socket.AF_UNIX), os.open(card_dir / ".run", os.O_RDONLY)
        stale.bind(f"/proc/self/fd/{run_fd}/control.sock")
        stale.close()  # bound, never listening: what a crashed serve leaves
        os.close(run_fd)
        assert ControlClient.connect(card_dir) is None
        with (Card.load(card_dir) as card, ControlServer(card_dir, CardControls(card).handle),
              ControlClient.connect(card_dir) as client):  # type: ignore[union-attr]
            assert client.request("status")["keys"]["auth"]["tries_left"] == 3
    finally:
        shutil.rmtree(deep)


def test_malformed_and_oversized_lines_get_one_line_errors_and_change_nothing(served, card_dir: Path) -> None:
    card, _server = served
    sock = raw(socket_path(card_dir))
    bad_lines = [
        b"{not json\n",
        b"[1, 2]\n",
        b'{"op": "set-tries", "op": "block", "key": "auth", "tries": 0}\n',  # duplicate key
        b'{"op": "set-tries", "key": "auth", "tries": "0"}\n',
        b'{"op": "set-tries", "key": "auth", "tries": true}\n',
        b'{"op": "set-tries", "key": "auth", "tries": NaN}\n',
        b'{"op": "set-tries", "key": "nokey", "tries": 0}\n',
        b'{"op": "fault", "kind": "remove"}\n',  # no reader here, and no trigger
        b'{"op": "transmit", "apdus": ["00200080043132333"]}\n',  # not whole bytes: never echoed
        b"\xff\xfe\n",
        b"[" * 100_000 + b"\n",
        b'{"op": "block", "key": "auth", "pad": "' + b"x" * (MAX_LINE + 10) + b'"}\n',  # oversized
        b"}",  # then EOF-less garbage is just an unfinished line
    ]
    for line in bad_lines[:-1]:
        sock.sendall(line)
        reply = answer(sock)
        assert reply["ok"] is False and reply["error"] and "\n" not in reply["error"], (line[:40], reply)
    assert "longer than" in reply["error"]
    sock.sendall(b'\n{"op": "status"}\n')  # the connection is still usable
    status = answer(sock)
    assert status["ok"] and status["keys"]["auth"]["tries_left"] == 3
    assert card.tries_left("auth") == 3 and card.keyring.status() == Card.load(card_dir, read_only=True).key_status()
    sock.close()


def test_concurrent_clients_each_get_their_own_answers(served, card_dir: Path) -> None:
    card, _server = served
    errors: list[object] = []

    def client(n: int) -> None:
        try:
            with ControlClient.connect(card_dir) as c:  # type: ignore[union-attr]
                for _ in range(20):
                    key = ("sign", "text")[n % 2]
                    tries = n % 3 + 1
                    got = c.request("set-tries", key=key, tries=tries)
                    assert got["ok"] and got["key"] == key, got
                    resp = c.request("transmit", apdus=["00A4040C0AD392F000260100000001"])
                    assert resp["responses"] == ["9000"], resp
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    on_disk = Card.load(card_dir, read_only=True).key_status()
    assert on_disk == card.key_status()
    assert on_disk["sign"]["tries_left"] in (1, 2, 3) and on_disk["auth"]["tries_left"] == 3


# A python that user nobody may run (the test's own may live under root's home).
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or ""


@pytest.mark.skipif(os.geteuid() != 0 or not SYSTEM_PYTHON, reason="needs root (and /usr/bin/python3) to run a "
                                                                   "client as another user")
def test_a_client_of_another_uid_is_refused(issued_template) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody").pw_uid
    # The card's own directories keep other users out already (0700); to reach the peer check,
    # this test opens a path for them on purpose.
    open_dir = Path(tempfile.mkdtemp(prefix="mynaemu-peer-"))
    try:
        open_dir.chmod(0o711)
        card_dir = open_dir / "card"
        shutil.copytree(issued_template.path, card_dir)
        card_dir.chmod(0o711)
        with Card.load(card_dir) as card, ControlServer(card_dir, CardControls(card).handle):
            path = socket_path(card_dir)
            path.parent.chmod(0o711)
            path.chmod(0o666)
            script = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1]); "
                      "s.sendall(b'{\"op\": \"block\", \"key\": \"auth\"}\\n'); print(s.recv(4096).decode(), end='')")
            done = subprocess.run([SYSTEM_PYTHON, "-I", "-c", script, str(path)], user=nobody, cwd="/",
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            reply = json.loads(done.stdout)
            assert reply["ok"] is False and "refused" in reply["error"] and str(nobody) in reply["error"]
            assert card.tries_left("auth") == 3
            with ControlClient.connect(card_dir) as mine:  # type: ignore[union-attr]
                assert mine.request("status")["ok"]  # our own uid is served
    finally:
        shutil.rmtree(open_dir)


def test_reset_pin_values_never_reach_logs_or_answers(served, card_dir: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    with ControlClient.connect(card_dir) as client:  # type: ignore[union-attr]
        bad = client.request("reset-pin", key="auth", new="98765")
        assert bad["ok"] is False and "exactly 4 digits" in bad["error"]
        assert "98765" not in json.dumps(bad)
        good = client.request("reset-pin", key="auth", new="4321")
        assert good["ok"] and good["tries_left"] == 3
        kiosk = client.request("kiosk-reset", key="sign", new="NEWPASS1", other="ZQ9X")
        assert kiosk["ok"] is False and "wrong" in kiosk["error"]
        sent = client.request("transmit", apdus=["00A4040C0AD392F000260100000001", "00A4020C020018",
                                                 "0020008004" + b"4321".hex()])
        assert sent["responses"][-1] == "9000"
    logged = caplog.text.replace(served[0].dir.card_id, "CARD")  # the card id is digits too
    for secret in ("98765", "4321", b"4321".hex(), "NEWPASS1", "ZQ9X"):
        assert secret not in logged, secret
