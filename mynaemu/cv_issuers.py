"""More emulated issuers of the card's CV world: the municipality keys and the terminal CA.

Both live beside the emulated JPKI authority, in ``$MYNAEMU_DATA_DIR/cv-issuers/`` (0700, keys
0600), are created on first use and are shared by every card of the installation:

- **municipality keys** (one for the text AP, one for the visual AP). On real cards EF 0004 of
  the 券面 APs is a CV certificate of a *municipality* key, issued by J-LIS, and that key signs the
  AP's records (text DF33 and DF52, visual DF28, DF13, DF43) — so a client verifies each record
  with the key from EF 0004 (MCARD reads real cards so; docs/card-interface.md §4.6, §5.3). The
  card variant ``trust-ap-key`` keeps the earlier model (EF 0004 certifies the AP's own key).
- **the terminal CA**, which issues the terminal CV certificates that ``80 A2`` checks
  (特定機関認証, §5.2); the JPKI AP trusts its public key (content ``jpki.terminal_ca_key``).

Every key ID starts with 9 (emulated), as the authority's do; the names say "emulation".
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import pki
from .private_files import make_private_dirs

DIR_NAME = "cv-issuers"
TERMINAL_CA_KEY_ID = pki.key_id("9000091")  # the emulated terminal CA (特定機関認証)
# EF 0004's subjects. (Text DF42 and visual DF32 name other key IDs, x000034 / x000024 on real
# cards, whose role nobody has published: they are not these.)
TEXT_MUNICIPALITY_KEY_ID = pki.key_id("9000036")
VISUAL_MUNICIPALITY_KEY_ID = pki.key_id("9000026")
_FILES = {"terminal_ca": "terminal-ca.key.pem", "text_municipality": "text-municipality.key.pem",
          "visual_municipality": "visual-municipality.key.pem"}


class CvIssuerError(Exception):
    """An issuer key file that cannot be used; the message names it."""


@dataclass(frozen=True)
class CvIssuers:
    """The three keys (private halves: this is the issuing side, never the chip)."""

    terminal_ca: rsa.RSAPrivateKey
    text_municipality: rsa.RSAPrivateKey
    visual_municipality: rsa.RSAPrivateKey

    def __repr__(self) -> str:
        return "CvIssuers(<terminal CA, text and visual municipality keys>)"

    @classmethod
    def load_or_create(cls, directory: Path | str | None = None) -> CvIssuers:
        """The keys kept in ``directory`` (default: beside the authority), each created once (race-safe)."""
        root = Path(directory) if directory is not None else default_cv_issuers_dir()
        with contextlib.suppress(FileExistsError):  # a concurrent creator was first
            make_private_dirs(root)  # it and any missing parent 0700, whatever the umask
        keys = {name: _load_or_create_key(root / filename) for name, filename in _FILES.items()}
        return cls(**keys)

    def terminal_ca_public_key(self) -> bytes:
        """What the JPKI AP holds to check terminal certificates: key ID + ``90 e 91 n``."""
        return TERMINAL_CA_KEY_ID + pki.encode_rsa_public_key(self.terminal_ca.public_key())

    def terminal_certificate(self, subject_key_id: bytes, public_key: rsa.RSAPublicKey) -> bytes:
        """A terminal CV certificate (``7F21 {5F4E body, 5F37 signature}``) issued by the terminal CA."""
        return pki.build_cv_certificate(self.terminal_ca, TERMINAL_CA_KEY_ID, subject_key_id, public_key)


def default_cv_issuers_dir() -> Path:
    """``cv-issuers`` beside the emulated authority's directory."""
    return pki.default_authority_dir().parent / DIR_NAME


_cache: dict[Path, rsa.RSAPrivateKey] = {}


def _load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    if path in _cache:
        return _cache[path]
    if not path.exists():
        key = pki.generate_rsa_key()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")  # never a stale file's name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces: a concurrent creator's key wins, and is loaded below
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None, unsafe_skip_rsa_key_validation=True)
    except (OSError, ValueError) as exc:
        raise CvIssuerError(f"{path}: not a readable private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CvIssuerError(f"{path}: not an RSA private key")
    _cache[path] = key
    return key
