"""The console's ASGI app (Starlette): pages, the event stream, and the actions.

Everything lives under ``/t/TOKEN/`` (the random token printed with the URL); any other path,
a wrong token or a ``Host`` other than the console's own loopback address answers 403, so a page
of another site cannot read or steer the console (DNS rebinding included). A POST needs the
token again in the ``X-Console-Token`` header, which a cross-site form or fetch cannot set
without a CORS preflight the console never grants. The only cookie is the language, HttpOnly and
SameSite=Strict. No page carries a secret: commands are masked, and the plain ones of a demo
card appear only while its trainer shows guesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..profile import Profile
from ..testing import TEST_SECRETS
from .i18n import LANGS, texts
from .scenarios import MATRIX_ROWS, SCENARIOS, ReaderClient, run_step

TOKEN_HEADER = "x-console-token"
LANG_COOKIE = "console_lang"
ACTION_OPS = frozenset({"insert", "remove", "reset", "unblock", "reset-pin", "kiosk-reset", "hold", "lift", "revoke",
                        "reissue", "set-tries", "block"})
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


class TokenGuard:
    """Pure ASGI middleware: 403 unless the path holds the token and Host is ours; security headers on all."""

    def __init__(self, app: Callable, token: str, allowed_hosts: Callable[[], set[str]]) -> None:
        self.app = app
        self.token = token
        self.prefix = f"/t/{token}/"
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path: str = scope.get("path", "")
        if headers.get("host", "") not in self.allowed_hosts():
            await PlainTextResponse("forbidden: not this console's address", 403)(scope, receive, send_with_headers)
            return
        if path == "/":  # the printed form http://127.0.0.1:PORT/?token=...: on to the token's path
            given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
            if given and hmac.compare_digest(given.encode(), self.token.encode()):
                await RedirectResponse(self.prefix, 303)(scope, receive, send_with_headers)
                return
        if not (path.startswith(self.prefix) and hmac.compare_digest(path[:len(self.prefix)].encode(),
                                                                     self.prefix.encode())):
            await PlainTextResponse("forbidden: this console needs its token (see the URL it printed)", 403)(
                scope, receive, send_with_headers)
            return
        if scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            given = headers.get(TOKEN_HEADER, "")
            if not hmac.compare_digest(given.encode(), self.token.encode()) or (
                    origin is not None and origin.removeprefix("http://") not in self.allowed_hosts()):
                await PlainTextResponse("forbidden: an action needs the X-Console-Token header", 403)(
                    scope, receive, send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)


def _lang(request: Request) -> str:
    lang = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE) or "ja"
    return lang if lang in LANGS else "ja"


def _with_lang_cookie(request: Request, response: Response, base: str) -> Response:
    if request.query_params.get("lang") in LANGS:
        response.set_cookie(LANG_COOKIE, request.query_params["lang"], path=base, httponly=True, samesite="strict")
    return response


def create_app(console: Any, token: str) -> Starlette:
    """The app for ``console`` (a ``mynaemu.console.run.Console``), reachable under ``/t/token/``."""
    base = f"/t/{token}/"
    templates = Jinja2Templates(directory=str(resources.files("mynaemu.console") / "templates"))
    default_profile = Profile.load()

    def card_or_404(index: str) -> Any:
        try:
            return console.cards[int(index)]
        except (ValueError, IndexError):
            return None

    def page(request: Request, name: str, **context: Any) -> Response:
        lang = _lang(request)
        other = "en" if lang == "ja" else "ja"
        response = templates.TemplateResponse(request, name, {
            "t": texts(lang), "lang": lang, "other_lang": other, "base": base,
            "texts_json": json.dumps(texts(lang), ensure_ascii=False),
            "scenarios": list(SCENARIOS.values()), "cards": console.cards, **context})
        return _with_lang_cookie(request, response, base)

    async def index(request: Request) -> Response:
        state = await run_in_threadpool(console.state)
        return page(request, "index.html", state_json=json.dumps(state, ensure_ascii=False))

    async def scenario_page(request: Request) -> Response:
        scenario = SCENARIOS.get(request.path_params["sid"])
        card = card_or_404(request.query_params.get("card", "0"))
        if scenario is None or card is None:
            return PlainTextResponse("no such scenario or card", 404)
        state = await run_in_threadpool(console.state)
        return page(request, "scenario.html", scenario=scenario, card=card, rows=MATRIX_ROWS,
                    state_json=json.dumps(state, ensure_ascii=False))

    async def state(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(console.state))

    async def events(request: Request) -> Response:
        queue = console.hub.subscribe()

        async def stream():
            try:
                snapshot = await run_in_threadpool(console.state)
                yield f"data: {json.dumps({'cards': snapshot}, ensure_ascii=False)}\n\n"
                while not console.closing.is_set():
                    try:
                        first = await asyncio.wait_for(queue.get(), timeout=console.refresh_seconds)
                    except TimeoutError:
                        changed = {c.index for c in console.cards if c.attached}
                        if not changed:
                            yield ": ping\n\n"
                            continue
                    else:
                        changed = {first}
                        while not queue.empty():  # a burst of APDUs: one snapshot per card
                            changed.add(queue.get_nowait())
                    cards = []
                    for index in sorted(changed):
                        card = console.cards[index]
                        cards.append(await run_in_threadpool(card.snapshot) if card.attached else card.snapshot())
                    yield f"data: {json.dumps({'cards': cards}, ensure_ascii=False)}\n\n"
            finally:
                console.hub.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def body_of(request: Request) -> dict[str, Any]:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            doc = await request.json()
            if isinstance(doc, dict):
                return doc
        return {}

    async def action(request: Request) -> Response:
        card = card_or_404(request.path_params["index"])
        if card is None:
            return JSONResponse({"ok": False, "error": "no such card"}, 404)
        doc = await body_of(request)
        op = doc.get("op")
        if op not in ACTION_OPS:
            return JSONResponse({"ok": False, "error": f"unknown action; actions are {', '.join(sorted(ACTION_OPS))}"}, 400)
        answer = await run_in_threadpool(console.act, card, doc)
        return JSONResponse(answer, 200 if answer.get("ok") else 400)

    async def guesses(request: Request) -> Response:
        card = card_or_404(request.path_params["index"])
        if card is None:
            return JSONResponse({"ok": False, "error": "no such card"}, 404)
        on = (await body_of(request)).get("on") is True
        if on and not card.demo:
            return JSONResponse({"ok": False, "error": "show guesses is for demo cards only (card.json kind \"demo\")"}, 400)
        if card.attached:
            return JSONResponse({"ok": False, "error": "show guesses needs the card served by the console"}, 400)
        card.observed.show_guesses = on
        console.hub.publish(card.index)
        return JSONResponse({"ok": True, "show_guesses": on})

    async def class_reset(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(console.class_reset))

    async def step(request: Request) -> Response:
        scenario = SCENARIOS.get(request.path_params["sid"])
        card = card_or_404(request.path_params["index"])
        if scenario is None or card is None or not any(s.id == request.path_params["step"] for s in scenario.steps):
            return JSONResponse({"ok": False, "error": "no such scenario, card or step"}, 404)
        if card.reader is None:
            return JSONResponse({"ok": True, "exchanges": [], "notes": [],
                                 "error": "scenarios need the card's reader (the serve has not said it yet)"})
        client: ReaderClient = console.reader_client(card)
        profile = getattr(getattr(card, "card", None), "profile", default_profile)
        result = await run_in_threadpool(lambda: run_step(scenario, request.path_params["step"], card, client, profile,
                                                          authority=console.authority))
        return JSONResponse({"ok": True, **result})

    routes = [
        Route("/", index),
        Route("/scenario/{sid}", scenario_page),
        Route("/api/state", state),
        Route("/events", events),
        Route("/api/cards/{index}/action", action, methods=["POST"]),
        Route("/api/cards/{index}/guesses", guesses, methods=["POST"]),
        Route("/api/class-reset", class_reset, methods=["POST"]),
        Route("/api/scenario/{sid}/{index}/{step}", step, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(resources.files("mynaemu.console") / "static")), name="static"),
    ]
    app = Starlette(routes=[Mount(base.rstrip("/"), routes=routes)])
    app.state.demo_secrets = TEST_SECRETS  # what class mode gives demo cards back (published values)
    return app


def guarded(console: Any, token: str) -> Callable[[dict, Callable, Callable], Awaitable[None]]:
    """The app behind its :class:`TokenGuard`."""
    return TokenGuard(create_app(console, token), token, console.allowed_hosts)
