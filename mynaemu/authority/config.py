"""Where the authority's service is reached, kept in the authority directory (``service.json``).

Certificates issued from then on point there: the CRL Distribution Points extension at
``BASE/crl/auth.crl`` and ``BASE/crl/sign.crl``, Authority Information Access at the OCSP
responder ``BASE/ocsp/auth`` / ``BASE/ocsp/sign`` and the CA certificate ``BASE/ca/auth.crt`` /
``BASE/ca/sign.crt``. Changing the base URL does not change certificates already issued.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..state import StateError, atomic_write, read_json

CONFIG_FILE = "service.json"
CONFIG_FORMAT = "mynaemu-authority-service"
CONFIG_VERSION = 1
DEFAULT_BASE_URL = "http://127.0.0.1:8480/"
CAS = ("auth", "sign")
# "delegated": a responder certificate per CA (id-kp-OCSPSigning, id-pkix-ocsp-nocheck, P-256 key);
# "ca": the CA's own RSA key signs (RFC 6960 §4.2.2.2, the issuer itself).
OCSP_SIGNERS = ("delegated", "ca")


class ConfigError(ValueError):
    """A bad base URL or signer name, or a broken ``service.json``; the message says which."""


def check_base_url(url: str) -> str:
    """The base URL normalised to end in ``/``; ConfigError unless it is http(s)://HOST[:PORT]/[PATH/]."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"base URL {url!r}: give http://HOST[:PORT]/ (e.g. {DEFAULT_BASE_URL})")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ConfigError(f"base URL {url!r}: the port must be 1-65535") from None
    return url if url.endswith("/") else url + "/"


@dataclass(frozen=True)
class ServiceConfig:
    """The base URL certificates point at, and who signs OCSP responses."""

    base_url: str = DEFAULT_BASE_URL
    ocsp_signer: str = "delegated"

    def crl_url(self, which: str) -> str:
        return f"{self.base_url}crl/{which}.crl"

    def ocsp_url(self, which: str) -> str:
        return f"{self.base_url}ocsp/{which}"

    def ca_url(self, which: str) -> str:
        return f"{self.base_url}ca/{which}.crt"

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)


def load_config(directory: Path | str | None) -> ServiceConfig:
    """The configuration of the authority in ``directory`` (defaults when it has none)."""
    if directory is None:
        return ServiceConfig()
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        return ServiceConfig()
    try:
        doc = read_json(path, CONFIG_FORMAT, CONFIG_VERSION)
    except StateError as exc:
        raise ConfigError(str(exc)) from None
    base, signer = doc.get("base_url"), doc.get("ocsp_signer", "delegated")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base_url must be a string")
    if signer not in OCSP_SIGNERS:
        raise ConfigError(f"{path}: ocsp_signer must be one of {', '.join(OCSP_SIGNERS)}, not {signer!r}")
    try:
        return ServiceConfig(check_base_url(base), signer)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_config(directory: Path | str, config: ServiceConfig) -> Path:
    """Write ``service.json`` (0600, atomically)."""
    if config.ocsp_signer not in OCSP_SIGNERS:
        raise ConfigError(f"OCSP signer must be one of {', '.join(OCSP_SIGNERS)}, not {config.ocsp_signer!r}")
    doc = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, "base_url": check_base_url(config.base_url),
           "ocsp_signer": config.ocsp_signer}
    path = Path(directory) / CONFIG_FILE
    atomic_write(path, json.dumps(doc, indent=1).encode() + b"\n")
    return path


def is_loopback(host: str) -> bool:
    """True for localhost and addresses in 127.0.0.0/8 or ::1: the only places the service listens."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
