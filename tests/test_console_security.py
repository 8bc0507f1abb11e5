"""The console's web side without a reader: loopback only, the token on every request, cookies, secrets.

The cards here are attached through a control channel served in-process (``mynaemu.channel``),
as a running ``mynaemu serve`` offers it, so no pcscd is needed; requests go through httpx.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from mynaemu import Card  # noqa: E402
from mynaemu.channel import ControlServer  # noqa: E402
from mynaemu.console.run import ConsoleServer  # noqa: E402
from mynaemu.controls import CardControls  # noqa: E402
from mynaemu.persona import check_number_b  # noqa: E402
from mynaemu.testing import TEST_SECRETS, issue_test_card, known_persona  # noqa: E402


@pytest.fixture
def attached_console(tmp_path: Path, _data_dir: Path) -> Iterator[tuple[ConsoleServer, Card]]:
    card_dir = tmp_path / "demo"
    issue_test_card(card_dir, kind="demo")
    card = Card.load(card_dir)
    server = ControlServer(card_dir, CardControls(card).handle).start()
    try:
        with ConsoleServer([card_dir]) as console:
            yield console, card
    finally:
        server.close()
        card.close()


def _client(console: ConsoleServer) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{console.console.port}", timeout=10)


def test_console_binds_loopback_only(attached_console) -> None:
    console, _card = attached_console
    host, port = console.address
    assert host == "127.0.0.1"
    listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    ours = [f[1] for f in listening if f[3] == "0A" and int(f[1].split(":")[1], 16) == port]
    assert ours == [f"0100007F:{port:04X}"]  # 127.0.0.1 only, never 0.0.0.0
    assert not any(int(f[1].split(":")[1], 16) == port for f in
                   (line.split() for line in Path("/proc/net/tcp6").read_text().splitlines()[1:]) if f[3] == "0A")
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", port), timeout=5):
        pass


def test_every_request_needs_the_token(attached_console) -> None:
    console, _card = attached_console
    token = console.token
    with _client(console) as client:
        assert client.get(f"/t/{token}/").status_code == 200
        assert client.get(f"/t/{token}/static/console.js").status_code == 200
        for path in ("/", "/static/console.js", "/events", "/api/state", f"/t/{token[:-1]}/", f"/t/{token}x/",
                     f"/t/{token}", f"/x/t/{token}/", "/?token=", "/?token=nope", f"/t/{token.upper()}/api/state",
                     f"/T/{token}/"):
            assert client.get(path).status_code == 403, path
        assert client.get(f"/?token={token}", follow_redirects=False).headers["location"] == f"/t/{token}/"
        # Actions: the token also in a header (a cross-site form cannot set it), and no foreign Origin or Host.
        action = f"/t/{token}/api/cards/0/action"
        body = {"op": "set-tries", "key": "auth", "tries": 1}
        assert client.post(action, json=body).status_code == 403
        assert client.post(action, json=body, headers={"X-Console-Token": "wrong"}).status_code == 403
        assert client.post(action, data={"token": token, "op": "remove"}).status_code == 403
        assert client.post(action, json=body, headers={"X-Console-Token": token,
                                                       "Origin": "http://evil.example"}).status_code == 403
        assert client.get(f"/t/{token}/", headers={"Host": "evil.example"}).status_code == 403  # DNS rebinding
        assert client.post(f"/t/{token}/api/class-reset").status_code == 403
        ok = client.post(action, json=body, headers={"X-Console-Token": token})
        assert ok.status_code == 200 and ok.json()["ok"]
        state = client.get(f"/t/{token}/api/state").json()
        assert state[0]["keys"]["auth"]["tries_left"] == 1 and state[0]["attached"]
        refused = client.get("/")
        assert "content-security-policy" in refused.headers and refused.headers["referrer-policy"] == "no-referrer"


def test_no_cookie_without_samesite_and_httponly(attached_console) -> None:
    console, _card = attached_console
    base = f"/t/{console.token}/"
    with _client(console) as client:
        cookies = []
        for path in ("", "?lang=en", "?lang=ja", "scenario/found?card=0&lang=en", "api/state", "static/console.css",
                     "nope"):
            cookies += client.get(base + path).headers.get_list("set-cookie")
        cookies += client.get("/").headers.get_list("set-cookie")
    assert cookies  # the language cookie was set
    for cookie in cookies:
        attributes = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")[1:]}
        assert "httponly" in attributes and attributes["samesite"].split("=")[1].strip().lower() == "strict", cookie
        assert attributes["path"].split("=")[1].strip() == base


def test_no_secret_in_the_pages(attached_console) -> None:
    console, _card = attached_console
    persona = known_persona()
    forbidden = {v for v in TEST_SECRETS.values()} | {v.encode().hex().upper() for v in TEST_SECRETS.values()}
    forbidden |= {check_number_b(persona), persona.security_code}
    base = f"/t/{console.token}/"
    with _client(console) as client:
        texts = [client.get(base + p).text for p in ("", "?lang=en", "api/state", "scenario/found?card=0",
                                                     "scenario/lockout-sign?card=0", "static/console.js")]
        with client.stream("GET", base + "events") as events:
            first = next(line for line in events.iter_lines() if line.startswith("data:"))
            texts.append(first)
    assert json.loads(first.removeprefix("data:"))["cards"][0]["kind"] == "demo"
    for text in texts:
        for secret in forbidden:
            assert secret not in text


def test_show_guesses_is_refused_for_a_card_that_is_not_demo(tmp_path: Path, _data_dir: Path) -> None:
    card_dir = tmp_path / "test-card"
    issue_test_card(card_dir)  # kind "test"
    card = Card.load(card_dir)
    server = ControlServer(card_dir, CardControls(card).handle).start()
    try:
        with ConsoleServer([card_dir]) as console, _client(console) as client:
            answer = client.post(f"/t/{console.token}/api/cards/0/guesses", json={"on": True},
                                 headers={"X-Console-Token": console.token})
            assert answer.status_code == 400 and "demo cards only" in answer.json()["error"]
            page = client.get(f"/t/{console.token}/").text
            assert "guesses-toggle" not in page
    finally:
        server.close()
        card.close()


def test_console_command_prints_its_url_and_stops_on_sigterm(tmp_path: Path, _data_dir: Path) -> None:
    import signal
    import subprocess
    import sys

    from mynaemu.cli import main

    assert main(["console", "--port", "70000"]) == 2
    card_dir = tmp_path / "demo"
    issue_test_card(card_dir, kind="demo")
    card = Card.load(card_dir)
    server = ControlServer(card_dir, CardControls(card).handle).start()  # a served card: the console attaches
    try:
        with subprocess.Popen([sys.executable, "-m", "mynaemu", "console", str(card_dir)], stdout=subprocess.PIPE,
                              text=True, cwd=tmp_path) as proc:
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("Console: "):
                    break
            url = lines[-1].split()[1]
            assert url.startswith("http://127.0.0.1:") and "/t/" in url, lines
            assert any("attached" in line for line in lines)
            assert httpx.get(url, timeout=10).status_code == 200
            assert httpx.get(url.split("/t/")[0] + "/", timeout=10).status_code == 403
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    finally:
        server.close()
        card.close()


def test_an_action_shows_in_the_very_next_state(attached_console) -> None:
    # The console polls an attached card in the background; an action's answer must not be followed
    # by a state from a poll that asked before it (that raced once: tries 3 after set-tries 1).
    console, card = attached_console
    token = console.token
    action = f"/t/{token}/api/cards/0/action"
    with _client(console) as client:
        for tries in (1, 3, 2, 1, 3, 2, 1, 3, 2, 1) * 3:
            ok = client.post(action, json={"op": "set-tries", "key": "auth", "tries": tries},
                             headers={"X-Console-Token": token})
            assert ok.status_code == 200 and ok.json()["ok"]
            state = client.get(f"/t/{token}/api/state").json()
            assert state[0]["keys"]["auth"]["tries_left"] == tries
            assert card.key_status()["auth"]["tries_left"] == tries
