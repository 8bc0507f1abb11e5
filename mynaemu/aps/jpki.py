"""JPKI-AP (公的個人認証AP): the user-authentication and signing certificates and keys.

Signing (80 2A) with EF 0017 needs the auth PIN (0018) verified, with EF 001A the signing
password (001B); the signing certificate (EF 0001) is read only with the signing password
(docs/card-interface.md §2.1, §5.1). PINs change with CHANGE REFERENCE DATA 00 24 01 80.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from .. import sw
from ..files import CvKeyEf
from .base import Application, Session, rsa_public_key


class JpkiAp(Application):
    """The JPKI application."""

    COMMANDS = {**Application.COMMANDS, (0x00, 0x24): "change_reference_data", (0x80, 0xA2): "verify_certificate"}
    SESSION_KEY_REFUSAL = sw.SECURITY_STATUS_NOT_SATISFIED  # no secure messaging here (MCARD measured it)

    # -- SET PUBLIC IC KEY / VERIFY CERTIFICATE (80 A2), the 特定機関認証 terminal check --------
    def verify_certificate(self, session: Session, p1: int, p2: int, data: bytes, le: int | None, ext: bool) -> bytes:
        """Check a terminal CV certificate against the CA key of the current EF (0016), in two steps.

        ``80 A2 06 C1`` carries ``7F 21 82 02 33 5F 4E 82 01 29`` + the 297-byte body, ``80 A2 00 C1``
        then ``5F 37 82 01 00`` + the signature (PKCS#1 v1.5, SHA-256, over the body). Data that
        is not such an object, a body naming another issuer or a signature that fails: 6700.
        What a checked certificate unlocks on a real card is not published; here it is recorded
        in the session (``Session.terminal``) and cleared with it.
        """
        if (p1, p2) not in ((0x06, 0xC1), (0x00, 0xC1)):
            return sw.WRONG_P1P2
        ca = session.ef
        if not isinstance(ca, CvKeyEf):
            return sw.CONDITIONS_NOT_SATISFIED  # select the CA key reference (EF 0016) first
        if le is not None:
            return sw.WRONG_LENGTH
        if p1 == 0x06:
            session.terminal_body = None
            if len(data) != len(_CERT_HEAD) + CV_BODY_LEN or not data.startswith(_CERT_HEAD):
                return sw.WRONG_LENGTH
            body = data[len(_CERT_HEAD) :]
            if body[:16] != ca.key_id:
                return sw.WRONG_LENGTH
            session.terminal_body = body
            return sw.OK
        body, session.terminal_body = session.terminal_body, None
        if body is None:
            return sw.CONDITIONS_NOT_SATISFIED  # 80 A2 06 C1 first
        if len(data) != len(_SIG_HEAD) + 256 or not data.startswith(_SIG_HEAD):
            return sw.WRONG_LENGTH
        try:
            ca.public_key.verify(data[len(_SIG_HEAD) :], body, padding.PKCS1v15(), hashes.SHA256())
            key = rsa_public_key(body[32:], "the certificate's public key")
        except (InvalidSignature, ValueError):
            return sw.WRONG_LENGTH
        session.terminal = (body[16:32], key)
        return sw.OK


CV_BODY_LEN = 297
_CERT_HEAD = bytes.fromhex("7F21820233" "5F4E820129")  # the certificate template, then its body's header
_SIG_HEAD = bytes.fromhex("5F37820100")
