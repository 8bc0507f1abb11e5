"""OCSP responses per second from ``authority serve``'s stack, beside a bare "200 OK" on the same stack.

    python -m pytest benchmarks/test_bench_authority.py --benchmark-enable -s   # numbers + ratio
    benchmarks/report                                                         # the table with targets

One uvicorn server (in a thread, on a loopback port) runs one Starlette app: the authority's
routes, plus ``POST /floor`` that reads the body and answers ``200 OK`` (the floor: HTTP parsing,
routing and the response, with no OCSP work). Both are driven over one keep-alive HTTP/1.1
connection with the same request body (an OCSP request with a nonce, for the session card's sign
certificate), so the two differ only by what the OCSP answer costs: parsing the request, the
status lookup, building and signing the response (ECDSA P-256, the delegated responder).

* ``test_floor_http_200``: ``POST /floor`` -> ``200 OK``
* ``test_ocsp_response``: ``POST /ocsp/sign`` -> a signed ``good`` response, nonce echoed
* ``test_ocsp_against_floor`` (timing on only): both, one request of each in turn, medians; the
  ratio OCSP/floor in responses per second must be >= 0.5.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

TARGET_RATIO = 0.5
RESULTS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def server(_data_dir: Path, bench_issued) -> Iterator[tuple[int, bytes]]:
    """(port, OCSP request DER) of a running server: the authority's routes and the floor."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route

    from mynaemu.authority.ca import Authority
    from mynaemu.authority.lifecycle import card_certificates
    from mynaemu.authority.service import create_app, loopback_socket

    authority = Authority.load(_data_dir / "authority")

    async def floor(request: Request) -> Response:
        await request.body()
        return Response(b"OK", media_type="text/plain")

    app = Starlette(routes=[Route("/floor", floor, methods=["POST"]), Mount("/", app=create_app(authority))])
    cert = card_certificates(Path(bench_issued.path))["sign"]
    request = (ocsp.OCSPRequestBuilder().add_certificate(cert, authority.sign_ca_certificate, hashes.SHA1())
               .add_extension(x509.OCSPNonce(b"\x42" * 16), critical=False).build())
    sock = loopback_socket("127.0.0.1", 0)
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], request.public_bytes(serialization.Encoding.DER)
    finally:
        uv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def client(server: tuple[int, bytes]) -> Iterator[http.client.HTTPConnection]:
    conn = http.client.HTTPConnection("127.0.0.1", server[0], timeout=10)
    yield conn
    conn.close()


HEADERS = {"Content-Type": "application/ocsp-request"}


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> bytes:
    conn.request("POST", path, body, HEADERS)
    response = conn.getresponse()
    data = response.read()
    assert response.status == 200
    return data


def test_floor_http_200(benchmark, server, client) -> None:
    assert benchmark(post, client, "/floor", server[1]) == b"OK"
    RESULTS["floor"] = benchmark


def test_ocsp_response(benchmark, server, client) -> None:
    answer = ocsp.load_der_ocsp_response(benchmark(post, client, "/ocsp/sign", server[1]))
    assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"\x42" * 16
    RESULTS["ocsp"] = benchmark


def test_ocsp_against_floor(server, client) -> None:
    """OCSP >= 0.5x the floor's responses per second, interleaved one request each in turn."""
    stats = {name: getattr(bench, "stats", None) for name, bench in RESULTS.items()}
    if set(stats) != {"floor", "ocsp"} or None in stats.values():
        pytest.skip("needs this module's two benchmarks with timing on (--benchmark-enable)")
    times: dict[str, list[float]] = {"/floor": [], "/ocsp/sign": []}
    clock = time.perf_counter
    for _ in range(2000):
        for path, out in times.items():
            start = clock()
            post(client, path, server[1])
            out.append(clock() - start)
    floor, answer = (statistics.median(times[p]) for p in ("/floor", "/ocsp/sign"))
    ratio = floor / answer
    report = (f"OCSP responses/s {1 / answer:,.0f}, bare 200 OK {1 / floor:,.0f}/s (same uvicorn + Starlette, "
              f"interleaved medians): ratio {ratio:.2f} (target >= {TARGET_RATIO})")
    print("\n" + report)
    RESULTS["ocsp"].extra_info["ratio_to_floor_interleaved"] = round(ratio, 3)
    assert ratio >= TARGET_RATIO, report
