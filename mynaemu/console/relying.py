"""Scenario 4's relying party: the emulated authority's OCSP service, run by the console on loopback.

The relying party checks a signature the card made (through PC/SC) with ``mynaemu.authority.verify``
and asks the authority's OCSP responder, which the console serves itself on 127.0.0.1 (an
ephemeral port), so the class sees the same answer a service on the internet would give: good,
or ``on hold (certificateHold)`` once the hotline held the certificates.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any


def authority_installed() -> bool:
    """Whether ``mynaemu.authority`` (with its HTTP service) can be used here."""
    try:
        import mynaemu.authority.service
        import mynaemu.authority.verify  # noqa: F401
    except ImportError:
        return False
    return True


class AuthorityService:
    """The authority's HTTP service (CRLs, OCSP) in a thread of the console, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.base_url: str | None = None

    def url(self) -> str:
        """The service's base URL (``http://127.0.0.1:PORT``), starting it when it is not running."""
        with self._lock:
            if self.base_url is not None:
                return self.base_url
            import uvicorn

            from ..authority.service import create_app, loopback_socket

            sock = loopback_socket()
            started = threading.Event()

            class Server(uvicorn.Server):
                async def startup(self, sockets: Any = None) -> None:
                    await super().startup(sockets=sockets)
                    started.set()

            self._server = Server(uvicorn.Config(create_app(), log_level="warning", access_log=False, lifespan="off"))
            self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                            name="console-authority", daemon=True)
            self._thread.start()
            if not started.wait(10):
                raise RuntimeError("the authority service did not start")
            self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            return self.base_url

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(10)
            self._server = self._thread = self.base_url = None


def check_signature(service: AuthorityService, signature: bytes, data: bytes, certificate_der: bytes) -> dict[str, Any]:
    """The relying party's verdict on a signature by the auth key, status by OCSP."""
    from cryptography import x509

    from ..authority.verify import verify_signature

    cert = x509.load_der_x509_certificate(certificate_der)
    verdict = verify_signature(signature, data, cert, status="ocsp", ocsp_url=f"{service.url()}/ocsp/auth", timeout=5)
    return {"valid": verdict.valid, "reason": verdict.reason}


def certificate_states(card: Any) -> dict[str, Any] | None:
    """good / held / revoked / expired / unknown of the card's certificates by the authority; None without it."""
    try:
        from ..authority.lifecycle import certificate_status
    except ImportError:
        return None
    statuses = []
    with contextlib.suppress(Exception):
        statuses = certificate_status(card, at=card.now())
    if not statuses:
        return {"state": "unknown", "detail": "the authority does not know these certificates"}
    states = [s.status for s in statuses]
    for wanted, shown in (("revoked", "revoked"), ("hold", "held"), ("expired", "expired"), ("unknown", "unknown"),
                          ("not yet valid", "unknown")):
        if wanted in states:
            reasons = sorted({s.reason for s in statuses if s.status == wanted and s.reason})
            return {"state": shown, "detail": ", ".join(f"{s.which} {s.status}" for s in statuses)
                    + (f" ({', '.join(reasons)})" if reasons else "")}
    return {"state": "good", "detail": ", ".join(f"{s.which} good" for s in statuses)}
