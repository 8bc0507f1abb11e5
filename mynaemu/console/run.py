"""Running the console: the cards (served here, or attached through control channels) and uvicorn.

:class:`ConsoleServer` is what ``mynaemu console`` runs, and what tests start in a thread:
cards not served elsewhere go into PC/SC readers through ``reader_bridge.serve.serve`` in a
background thread (its private pcscd, its guard, its cleanup), cards a running ``serve`` holds are
reached through their control sockets, and the web app listens on 127.0.0.1 only, on a socket
bound here, so the URL is known (and printed) before uvicorn starts.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..card import Card
from ..controls import CardControls
from ..profile import Profile
from ..testing import TEST_SECRETS
from .live import AttachedCard, EventHub, LocalCard, ObservedCard
from .relying import AuthorityService, authority_installed
from .scenarios import ReaderClient

LOOPBACK = "127.0.0.1"
DEMO_PINS = {**TEST_SECRETS, "common": TEST_SECRETS["juki"]}


class ConsoleError(RuntimeError):
    """The console cannot start (one line for the user)."""


# How often an attached card's serve is asked what changed: the page follows within this, plus
# the round trip of two channel requests (well under the 100 ms the page promises).
ATTACHED_POLL_SECONDS = 0.05


class Console:
    """The cards and what the app needs around them (the hub, reader clients, class mode)."""

    refresh_seconds = 2.0  # attached cards: the channel has no events, so their status is refreshed

    def __init__(self) -> None:
        self.cards: list[LocalCard | AttachedCard] = []
        self.hub = EventHub()
        self.closing = threading.Event()
        self.port = 0
        self._clients: dict[int, ReaderClient] = {}
        self._lock = threading.Lock()
        self.authority = AuthorityService() if authority_installed() else None  # scenario 4's relying party

    def allowed_hosts(self) -> set[str]:
        return {f"{LOOPBACK}:{self.port}", f"localhost:{self.port}"}

    def reader_client(self, card: LocalCard) -> ReaderClient:
        with self._lock:
            if card.index not in self._clients:
                self._clients[card.index] = ReaderClient(card.reader)
            return self._clients[card.index]

    def close_clients(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def state(self) -> list[dict[str, Any]]:
        return [card.snapshot() for card in self.cards]

    def act(self, card: LocalCard | AttachedCard, doc: dict[str, Any]) -> dict[str, Any]:
        """One action of the page, through the scenario controls; the page gets the news by the hub."""
        op = doc["op"]
        try:
            if op == "reset":  # out and back in: power and security status go, as a reader's reset does
                answer = card.handle({"op": "remove"})
                if answer.get("ok"):
                    answer = card.handle({"op": "insert"})
                return answer
            request: dict[str, Any] = {"op": op}
            for field in ("key", "tries", "new", "other"):
                if field in doc:
                    request[field] = doc[field]
            return card.handle(request)
        finally:
            card.refresh()
            self.hub.publish(card.index)

    def class_reset(self) -> dict[str, Any]:
        """Class mode: every card back at the scenarios' start (in, no faults, real time, full tries, demo PINs)."""
        results = []
        for card in self.cards:
            errors = []
            card.refresh()
            if isinstance(card, LocalCard):
                card.observed.show_guesses = False
            steps: list[dict[str, Any]] = [{"op": "insert"}, {"op": "clear-faults"}, {"op": "clock-offset", "seconds": 0}]
            snapshot = card.snapshot()
            profile = card.card.profile if isinstance(card, LocalCard) else Profile.load()
            for key, info in snapshot.get("keys", {}).items():
                spec = profile.keys.get(key)
                if spec is None or spec.value == "none":
                    continue  # issued blocked: it stays so
                if card.kind in ("demo", "test") and key in DEMO_PINS and isinstance(card, LocalCard):
                    if card.secret(key) != DEMO_PINS[key] or info["tries_left"] < info["limit"]:
                        steps.append({"op": "reset-pin", "key": key, "new": DEMO_PINS[key]})
                elif info["tries_left"] < info["limit"]:
                    steps.append({"op": "unblock", "key": key})
            if snapshot.get("certificates", {}).get("state") == "held":
                steps.append({"op": "lift"})
            steps += [{"op": "remove"}, {"op": "insert"}]
            for request in steps:
                answer = card.handle(request)
                if not answer.get("ok") and request["op"] != "clear-faults":
                    errors.append(f"{request['op']}: {answer.get('error')}")
            card.refresh()
            self.hub.publish(card.index)
            results.append({"index": card.index, "ok": not errors, "errors": errors})
        return {"ok": all(r["ok"] for r in results), "cards": results}


class ConsoleServer:
    """Serves ``card_dirs`` and the console app until :meth:`close` (or, in ``run``, Ctrl-C).

    A card directory whose control socket answers is attached; the others are loaded and served
    from ``slot`` on. ``port`` 0 picks a free one. ``start`` returns once the cards are in their
    readers and the web socket listens; ``url`` is then the page with its token.
    """

    def __init__(self, card_dirs: list[Path], *, slot: int = 0, port: int = 0, start_pcscd: bool = True,
                 interface: str | None = None, ready_timeout: float = 10.0) -> None:
        self.card_dirs = [Path(d) for d in card_dirs]
        self.slot = slot
        self.port = port
        self.start_pcscd = start_pcscd
        self.interface = interface
        self.ready_timeout = ready_timeout
        self.token = secrets.token_urlsafe(24)
        self.console = Console()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._serve_error: BaseException | None = None
        self._serve_thread: threading.Thread | None = None
        self._loaded: list[Card] = []
        self._sock: socket.socket | None = None
        self._server: Any = None
        self._web_thread: threading.Thread | None = None
        self.web_started = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.console.port}/t/{self.token}/"

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None
        return self._sock.getsockname()[:2]

    # -- the cards -----------------------------------------------------------------------------
    def _split(self) -> tuple[list[tuple[int, Path, Any]], list[tuple[int, Path]]]:
        from ..channel import ChannelError, ControlClient

        attached, local = [], []
        for i, d in enumerate(self.card_dirs):
            try:
                client = ControlClient.connect(d, timeout=10)
            except ChannelError as exc:
                raise ConsoleError(str(exc)) from None
            if client is not None:
                attached.append((i, d, client))
            else:
                local.append((i, d))
        return attached, local

    def _follow(self, cards: list[AttachedCard]) -> None:
        """Poll the attached cards' serves (their channels carry no events) and publish each change."""
        closing, hub = self.console.closing, self.console.hub
        while not closing.is_set():
            for card in cards:
                with contextlib.suppress(Exception):  # a serve gone away: its card shows the error
                    if card.poll():
                        hub.publish(card.index)
            closing.wait(ATTACHED_POLL_SECONDS)

    def _start_cards(self) -> None:
        from reader_bridge.serve import refuse_same_card_twice

        try:
            refuse_same_card_twice(self.card_dirs)
        except ValueError as exc:
            raise ConsoleError(str(exc)) from None
        attached, local = self._split()
        cards: list[LocalCard | AttachedCard | None] = [None] * len(self.card_dirs)
        for i, d, client in attached:
            cards[i] = AttachedCard(i, d, client)
        if attached:
            followed = [c for c in cards if isinstance(c, AttachedCard)]
            threading.Thread(target=self._follow, args=(followed,), name="console-attached", daemon=True).start()
        observed: dict[int, tuple[int, Card, ObservedCard]] = {}
        hub = self.console.hub
        try:
            for n, (i, d) in enumerate(local):
                card = Card.load(d, interface=self.interface)
                self._loaded.append(card)
                observed[self.slot + n] = (i, card, ObservedCard(card, notify=lambda i=i: hub.publish(i),
                                                                 demo=card.dir.meta.get("kind") == "demo"))
        except BaseException:
            self._close_cards()
            raise
        if not observed:
            self.console.cards = [c for c in cards if c is not None]
            self._ready.set()
            return

        from reader_bridge.steering import ReaderSlot

        def on_serving(readers: Any) -> None:
            for slot, (i, card, obs) in observed.items():
                presence = ReaderSlot(readers, slot, obs)
                obs.on_remove = lambda presence=presence: presence.remove(wait=False)
                cards[i] = LocalCard(i, card, obs, CardControls(card, presence=presence, faults=obs), reader="")

        def on_ready(names: list[str]) -> None:
            for name, (i, _card, _obs) in zip(names, observed.values(), strict=True):
                local_card = cards[i]
                assert isinstance(local_card, LocalCard)
                local_card.reader = name
            self.console.cards = [c for c in cards if c is not None]
            self._ready.set()

        def run_serve() -> None:
            from reader_bridge.serve import serve

            try:
                serve({slot: obs for slot, (_i, _c, obs) in observed.items()}, start_pcscd=self.start_pcscd,
                      on_ready=on_ready, on_serving=on_serving, stop_event=self._stop, ready_timeout=self.ready_timeout,
                      say=lambda text: print(f"mynaemu console: {text}", flush=True))
            except BaseException as exc:
                self._serve_error = exc
            finally:
                self._ready.set()
                if self._server is not None:
                    self._server.should_exit = True

        self._serve_thread = threading.Thread(target=run_serve, name="console-serve", daemon=True)
        self._serve_thread.start()
        if not self._ready.wait(self.ready_timeout + 20) or self._serve_error is not None:
            error = self._serve_error
            self.close()
            if isinstance(error, ValueError):
                raise ConsoleError(str(error)) from None
            raise ConsoleError(f"the readers could not be set up: {error or 'timed out'}") from None

    def _close_cards(self) -> None:
        for card in self._loaded:
            with contextlib.suppress(Exception):
                card.close()
        self._loaded.clear()

    # -- the web app ---------------------------------------------------------------------------
    def _bind(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, self.port))
        except OSError as exc:
            sock.close()
            raise ConsoleError(f"cannot listen on {LOOPBACK}:{self.port} ({exc.strerror or exc})") from None
        sock.listen(64)
        self._sock = sock
        self.console.port = sock.getsockname()[1]

    def _make_server(self) -> Any:
        import uvicorn

        from .app import guarded

        started = self.web_started

        class Server(uvicorn.Server):
            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets=sockets)
                started.set()

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                # uvicorn re-raises SIGINT/SIGTERM after its shutdown, which would kill the process
                # before the cards leave their readers and our pcscd stops: take them as a plain stop.
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

        config = uvicorn.Config(guarded(self.console, self.token), log_level="warning", access_log=False,
                                timeout_graceful_shutdown=1, lifespan="off", ws="none")
        return Server(config)

    def start(self) -> ConsoleServer:
        """Cards into their readers, the web socket bound; the app is served by ``run`` or ``start_web``."""
        self._start_cards()
        try:
            self._bind()
            self._server = self._make_server()
        except BaseException:
            self.close()
            raise
        return self

    def start_web(self) -> ConsoleServer:
        """Serve the app in a thread (tests); returns once uvicorn has started."""
        assert self._server is not None and self._sock is not None
        self._web_thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                            name="console-web", daemon=True)
        self._web_thread.start()
        if not self.web_started.wait(10):
            raise ConsoleError("the web server did not start")
        return self

    def run(self) -> None:
        """Serve the app in this thread until SIGINT/SIGTERM (uvicorn's handlers), then close everything."""
        assert self._server is not None and self._sock is not None
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self.close()
        if self._serve_error is not None:
            raise ConsoleError(f"serving stopped: {self._serve_error}")

    def close(self) -> None:
        """Stop the web app, remove the cards from their readers, close them."""
        self.console.closing.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._web_thread is not None:
            self._web_thread.join(10)
        self.console.close_clients()
        if self.console.authority is not None:
            self.console.authority.close()
        self._stop.set()
        if self._serve_thread is not None:
            self._serve_thread.join(15)
            # Out only once PC/SC shows the readers empty: a card inserted sooner would find pcscd
            # still holding the old one's presence, and never powered up.
            from reader_bridge.pcscd import wait_for_card

            for card in self.console.cards:
                if isinstance(card, LocalCard) and card.reader:
                    with contextlib.suppress(Exception):
                        wait_for_card(card.reader, present=False, timeout=10)
        for card in self.console.cards:
            if isinstance(card, AttachedCard):
                card.client.close()
        self._close_cards()
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> ConsoleServer:
        return self.start().start_web()

    def __exit__(self, *exc: object) -> None:
        self.close()
