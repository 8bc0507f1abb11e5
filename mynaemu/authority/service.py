"""The authority as an HTTP service (Starlette on uvicorn), on loopback only.

    GET  /crl/auth.crl  /crl/sign.crl        DER CRLs (application/pkix-crl), fresh on every change
    GET  /ca/auth.crt   /ca/sign.crt         the CA certificates (application/pkix-cert)
    POST /ocsp/auth     /ocsp/sign           OCSP (application/ocsp-request -> application/ocsp-response)
    GET  /ocsp/auth/{base64 request}         OCSP by GET (RFC 6960 Appendix A.1), likewise for sign
    GET  /                                   a one-page index (text)

Every request reads the status database's snapshot, which re-reads the files when they changed
(see ``database``): a hold, lift, revoke or reissue is visible at the next request. Wrong methods
get 405 and unknown paths 404 (Starlette's); an OCSP request that does not parse gets an OCSP
``malformedRequest`` response with HTTP 200, as RFC 6960 asks, never a 500. Responses are made
inline on the event loop: an ECDSA-signed OCSP answer takes well under a millisecond.
"""

from __future__ import annotations

import base64
import binascii
import signal
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .ca import Authority, default_authority_dir
from .config import ServiceConfig, is_loopback, load_config
from .crl import CrlCache, ca_of
from .database import database
from .ocsp import MAX_REQUEST_BYTES, OcspResponder, unsuccessful

OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
CAS = ("auth", "sign")


def create_app(authority: Authority | Path | str | None = None, *, clock: Callable[[], datetime] | None = None,
               config: ServiceConfig | None = None) -> Starlette:
    """The ASGI app of the authority (loaded once) in ``authority`` (default: the installation's)."""
    if not isinstance(authority, Authority):
        authority = Authority.load(authority if authority is not None else default_authority_dir())
    now = clock or (lambda: datetime.now(UTC))
    config = config or load_config(authority.directory)
    db = database(authority.directory)
    responder = OcspResponder(authority, config=config, db=db, clock=now)
    crls = CrlCache(authority)
    ca_der = {which: ca_of(authority, which)[1].public_bytes(serialization.Encoding.DER) for which in CAS}

    def which_of(request: Request) -> str | None:
        which = request.path_params["which"]
        return which if which in CAS else None

    def not_found() -> Response:
        return PlainTextResponse("no such CA here: use auth or sign\n", status_code=404)

    def answer(der: bytes) -> Response:
        return Response(der, media_type=OCSP_RESPONSE)

    async def index(request: Request) -> Response:
        lines = ["mynaemu EMULATED JPKI authority (not J-LIS)"]
        for which in CAS:
            lines.append(f"{which}: CRL {config.crl_url(which)}  OCSP {config.ocsp_url(which)}  CA {config.ca_url(which)}")
        return PlainTextResponse("\n".join(lines) + "\n")

    async def crl(request: Request) -> Response:
        which = which_of(request)
        if which is None:
            return not_found()
        return Response(crls.der(which, db.snapshot(), at=now()), media_type="application/pkix-crl")

    async def ca_certificate(request: Request) -> Response:
        which = which_of(request)
        if which is None:
            return not_found()
        return Response(ca_der[which], media_type="application/pkix-cert")

    async def ocsp_post(request: Request) -> Response:
        which = which_of(request)
        if which is None:
            return not_found()
        kind = request.headers.get("content-type", OCSP_REQUEST).split(";")[0].strip().lower()
        if kind != OCSP_REQUEST:
            return PlainTextResponse(f"send the OCSP request as {OCSP_REQUEST}\n", status_code=415)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) <= MAX_REQUEST_BYTES:
            return answer(_respond(responder, which, await request.body()))
        body = bytearray()  # no or a huge Content-Length: read no more than an OCSP request can be
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                return answer(unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST))
        return answer(_respond(responder, which, bytes(body)))

    async def ocsp_get(request: Request) -> Response:
        which = which_of(request)
        if which is None:
            return not_found()
        text = unquote(request.path_params["encoded"])  # clients may percent-encode '+', '/' and '='
        try:
            der = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            return answer(unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST))
        return answer(_respond(responder, which, der))

    return Starlette(routes=[
        Route("/", index, methods=["GET"]),
        Route("/crl/{which}.crl", crl, methods=["GET"]),
        Route("/ca/{which}.crt", ca_certificate, methods=["GET"]),
        Route("/ocsp/{which}", ocsp_post, methods=["POST"]),
        Route("/ocsp/{which}/{encoded:path}", ocsp_get, methods=["GET"]),
    ])


def _respond(responder: OcspResponder, which: str, der: bytes) -> bytes:
    try:
        return responder.respond(which, der)
    except Exception:  # a bug or a broken database: an OCSP internalError, not an HTTP 500
        import logging

        logging.getLogger("mynaemu.authority").exception("OCSP request failed")
        return unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)


def loopback_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on a loopback address (ValueError for any other address)."""
    if not is_loopback(host):
        raise ValueError(f"--host {host}: the emulated authority listens on loopback only (127.0.0.1, ::1)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it h11's separate header and body writes meet the peer's delayed ACK (40 ms a response).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
        sock.bind(("127.0.0.1" if host == "localhost" else host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def serve(app: Starlette, sock: socket.socket) -> None:
    """Run uvicorn on ``sock`` until SIGINT/SIGTERM (connections made before it starts are queued)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    if threading.current_thread() is not threading.main_thread():
        server.run(sockets=[sock])
        return
    # uvicorn stops gracefully on SIGINT/SIGTERM, then re-raises the signal to the handlers it found:
    # let those be no-ops, so a stop is a clean return (exit 0), not a death by signal.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
