"""The issued content of every EF and GET DATA object, by the content ids of the card profile.

`build_contents` returns each content id named in apdu_specs/profile.toml: bytes for binary EFs
and GET DATA objects (the logical content; the card pads to the EF size with the profile's
filler), a list of records for record EFs. Layouts follow docs/card-interface.md §2, §4 and §5.3.

Trust model: the text and visual AP CV certificates (EF 0004) certify the APs' own keys (text
EF 0013, visual EF 001A), and those keys sign the AP's data records, so a client verifies EF 0004
with the emulated issuer's key, then every record and every challenge signature with the key
inside EF 0004. Text EF 0007 DF52 is the text CV issuer's signature over the DF51 TLV. (MCARD
reads real cards differently: EF 0004 certifies a municipality key that signs the records and
DF52, and the AP keys are certified only through DF51/DF24. Both pass §5.3's checks.) The MF
chain: root -> intermediate (F8), intermediate -> the common AP's INTERNAL AUTHENTICATE key (7F21).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, fields
from datetime import date

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import images, pki
from .cv_issuers import TEXT_MUNICIPALITY_KEY_ID, VISUAL_MUNICIPALITY_KEY_ID, CvIssuers
from .persona import Persona
from .tlv import CK_TOKEN_INFO, encode_length, encode_tag, long_form_length, parse_tlv, simple_tlv, tlv

__all__ = ["CONTENT_IDS", "KEY_IDS", "CardKeys", "build_contents", "offset_table_record", "token_info"]

# Key ids of the profile (`private_key = "..."`) and the CardKeys field holding each.
KEY_IDS: dict[str, str] = {
    "jpki.auth": "jpki_auth",
    "jpki.sign": "jpki_sign",
    "text.ap": "text_ap",
    "text.sm": "text_sm",
    "visual.ap": "visual_ap",
    "common.ia": "common_ia",
}

CONTENT_IDS: tuple[str, ...] = (
    "jpki.sign_cert",
    "jpki.sign_ca_cert",
    "jpki.token_info",
    "jpki.cert_availability",
    "jpki.auth_cert",
    "jpki.auth_ca_cert",
    "jpki.terminal_ca_key",
    "text.my_number",
    "text.basic4",
    "text.integrity",
    "text.cv_cert",
    "text.basic_info",
    "text.sm_public_key",
    "text.signed_public_key",
    "visual.age_record",
    "visual.face",
    "visual.basic_info",
    "visual.cv_cert",
    "visual.my_number_image",
    "juki.key_ref",
    "common.card_id",
    "common.key_ref",
    "mf.issuer_id",
    "mf.card_number",
    "mf.card_recognition",
    "mf.municipality",
    "mf.expiry",
    "mf.cv_intermediate_key_id",
    "mf.cv_root_to_intermediate",
    "mf.cv_intermediate_to_lower",
    "mf.atr_tail",
)


@dataclass(frozen=True)
class CardKeys:
    """The card's private keys (RSA-2048), one per key EF of the profile."""

    jpki_auth: rsa.RSAPrivateKey
    jpki_sign: rsa.RSAPrivateKey
    text_ap: rsa.RSAPrivateKey
    text_sm: rsa.RSAPrivateKey
    visual_ap: rsa.RSAPrivateKey
    common_ia: rsa.RSAPrivateKey

    def __repr__(self) -> str:
        return "CardKeys(<6 RSA-2048 private keys>)"

    @classmethod
    def generate(cls) -> CardKeys:
        """Six fresh keys, generated now."""
        return cls(**{f.name: pki.generate_rsa_key() for f in fields(cls)})

    @classmethod
    def from_pool(cls, directory: os.PathLike | str | None = None) -> CardKeys:
        """Six fresh keys from the installation's key pool (generated now where it has none; see ``keypool``)."""
        from .keypool import take_keys

        names = [f.name for f in fields(cls)]
        return cls(**dict(zip(names, take_keys(len(names), directory), strict=True)))

    def by_id(self, key_id: str) -> rsa.RSAPrivateKey:
        """The key with profile key id `key_id` ("jpki.auth", ...)."""
        try:
            return getattr(self, KEY_IDS[key_id])
        except KeyError:
            raise KeyError(f"no card key {key_id!r}; known: {', '.join(KEY_IDS)}") from None

    def to_pem_dict(self) -> dict[str, str]:
        """Every key as an unencrypted PKCS#8 PEM string, by profile key id."""
        return {
            key_id: getattr(self, attr)
            .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            .decode("ascii")
            for key_id, attr in KEY_IDS.items()
        }

    @classmethod
    def from_pem_dict(cls, pems: dict[str, str], *, check: bool = True) -> CardKeys:
        """Inverse of `to_pem_dict`. `check=False` skips OpenSSL's RSA consistency check
        (about 25 ms per key); use it only for files this program wrote."""
        keys = {}
        for key_id, attr in KEY_IDS.items():
            if key_id not in pems:
                raise ValueError(f"missing card key {key_id!r}")
            try:
                key = serialization.load_pem_private_key(
                    pems[key_id].encode("ascii"), None, unsafe_skip_rsa_key_validation=not check
                )
            except (ValueError, TypeError, UnicodeError) as exc:
                raise ValueError(f"card key {key_id!r} is not a valid PEM private key ({exc})") from None
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"card key {key_id!r} is not an RSA key")
            keys[attr] = key
        return cls(**keys)


# -- layouts -----------------------------------------------------------------------------------
def offset_table_record(outer_tag: int, table_tag: int, items: list[bytes], *, long_length: bool = False) -> bytes:
    """`outer { table (one big-endian u16 per item: its offset from the start) , items... }`.

    The layout of text EF 0002 (DF21 over DF22..DF25) and visual EF 0002 (DF21 over DF22..DF2A).
    ``long_length`` writes the outer length as `82 HH LL` whatever its size (a card variant, §4.5).
    """
    table_len = 2 * len(items)
    table_size = len(encode_tag(table_tag)) + len(encode_length(table_len)) + table_len
    value_len = table_size + sum(len(item) for item in items)
    outer_length = long_form_length(value_len) if long_length else encode_length(value_len)
    position = len(encode_tag(outer_tag)) + len(outer_length) + table_size
    offsets = bytearray()
    for item in items:
        offsets += position.to_bytes(2, "big")
        position += len(item)
    value = tlv(table_tag, bytes(offsets)) + b"".join(items)
    return encode_tag(outer_tag) + outer_length + value


def token_info(persona: Persona) -> bytes:
    """JPKI EF 0006: PKCS#11 CK_TOKEN_INFO, 160 bytes (docs/card-interface.md §4.2)."""
    return CK_TOKEN_INFO.build(
        {
            # Clients match the label exactly, space-padded (MCARD) or trimmed (myna, pymyna).
            "label": "JPKIAPICCTOKEN2",
            "manufacturer_id": "mynaemu emulation",
            "model": "MYNAEMU",
            "serial_number": persona.card_serial.rjust(16, "0"),
            # RNG | LOGIN_REQUIRED | USER_PIN_INITIALIZED | TOKEN_INITIALIZED, as on real cards.
            "flags": 0x0000040D,
            "max_session_count": 1,
            "session_count": 0,
            "max_rw_session_count": 1,
            "rw_session_count": 0,
            "max_pin_len": 16,
            "min_pin_len": 6,
            "total_public_memory": 0xFFFFFFFF,  # CK_UNAVAILABLE_INFORMATION
            "free_public_memory": 0xFFFFFFFF,
            "total_private_memory": 0xFFFFFFFF,
            "free_private_memory": 0xFFFFFFFF,
            "hardware_version": b"03",
            "firmware_version": b"01",
            "utc_time": b"0" * 16,  # no clock on the token (CKF_CLOCK_ON_TOKEN unset)
        }
    )


def _ymd(d: date) -> bytes:
    return d.strftime("%Y%m%d").encode("ascii")


def _card_key_id(persona: Persona, role: str) -> bytes:
    """A card-specific 16-byte key ID: 9 + municipality + role digit, tail from the serial."""
    tail = (int(persona.card_serial) & 0xFFFFFFFF).to_bytes(4, "big")
    return pki.key_id(f"9{persona.municipality_code}{role}", "001", tail)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# GlobalPlatform card recognition data (GP Card Spec, tag 73): the GP OID, card management
# type and version 2.1.1, card identification scheme, SCP02 i=15. A plausible value; the real
# card's is not published.
_GP_OID = bytes.fromhex("2A864886FC6B")
CARD_RECOGNITION = tlv(
    0x73,
    tlv(0x06, _GP_OID + b"\x01")
    + tlv(0x60, tlv(0x06, _GP_OID + bytes.fromhex("02020101")))
    + tlv(0x63, tlv(0x06, _GP_OID + b"\x03"))
    + tlv(0x64, tlv(0x06, _GP_OID + bytes.fromhex("040215"))),
)
ATR_TAIL = bytes.fromhex("E000FF8131FE4514")


# -- the builder -------------------------------------------------------------------------------
def build_contents(
    persona: Persona,
    keys: CardKeys,
    authority: pki.Authority,
    *,
    japanese_era: bool = True,
    basic4_length: str = "short",
    trust_model: str = "municipality",
    cv_issuers: CvIssuers | None = None,
) -> dict[str, bytes | list[bytes]]:
    """Every content id of the profile for this persona, key set and authority.

    `japanese_era` is the profile's 照合番号B flag. No issued content depends on it today (every
    date on the card is Gregorian); it is accepted so issuance passes the profile through
    unchanged should a content ever need it.
    """
    del japanese_era
    out: dict[str, bytes | list[bytes]] = {}
    cv = cv_issuers if cv_issuers is not None else CvIssuers.load_or_create()
    municipality = trust_model == "municipality"
    out.update(_jpki(persona, keys, authority))
    out["jpki.terminal_ca_key"] = cv.terminal_ca_public_key()
    out.update(_text(persona, keys, authority, long_basic4=basic4_length == "long",
                     record_key=cv.text_municipality if municipality else None))
    out.update(_visual(persona, keys, authority, record_key=cv.visual_municipality if municipality else None))
    out.update(_records_and_mf(persona, keys, authority))
    return out


def _jpki(persona: Persona, keys: CardKeys, authority: pki.Authority) -> dict[str, bytes]:
    der = serialization.Encoding.DER
    auth = authority.auth_certificate(persona, keys.jpki_auth.public_key()).public_bytes(der)
    sign = b""
    if persona.has_sign_certificate:
        sign = authority.sign_certificate(persona, keys.jpki_sign.public_key()).public_bytes(der)
    return {
        "jpki.auth_cert": auth,
        "jpki.auth_ca_cert": authority.auth_ca_certificate.public_bytes(der),
        "jpki.sign_cert": sign,
        "jpki.sign_ca_cert": authority.sign_ca_certificate.public_bytes(der),
        "jpki.token_info": token_info(persona),
        # byte 0: signing certificate present (8F) or not (00); byte 1: authentication certificate.
        "jpki.cert_availability": bytes([0x8F if sign else 0x00, 0x8F, 0x00]),
    }


def _text(
    persona: Persona,
    keys: CardKeys,
    authority: pki.Authority,
    *,
    long_basic4: bool = False,
    record_key: rsa.RSAPrivateKey | None = None,
) -> dict[str, bytes]:
    """The text AP's content. ``record_key``: the municipality key that signs DF33 and DF52 and
    that EF 0004 certifies; None for the ``ap-key`` trust model (the AP's own key signs DF33 and
    EF 0004 certifies it; the CV issuer signs DF52)."""
    ap_public = keys.text_ap.public_key()
    ap_key = pki.encode_rsa_public_key(ap_public)

    my_number = tlv(0xFF10, persona.my_number.encode("ascii")) + b"\xff\xff"  # 17 bytes: the EF
    basic4 = offset_table_record(
        0xFF20,
        0xDF21,
        [
            tlv(0xDF22, persona.name.encode("utf-8")),
            tlv(0xDF23, persona.address.encode("utf-8")),
            tlv(0xDF24, _ymd(persona.birth)),
            tlv(0xDF25, persona.sex.encode("ascii")),
        ],
        long_length=long_basic4,
    )
    # DF32 covers EF 0002 from DF22 (the first offset) to the end of the FF20 value (§5.3).
    table = parse_tlv(basic4, parse_tlv(basic4).value_start)
    df22_offset = int.from_bytes(table.value[:2], "big")
    hashed = tlv(0xDF31, _sha256(my_number)) + tlv(0xDF32, _sha256(basic4[df22_offset:]))
    signer = record_key if record_key is not None else keys.text_ap
    integrity = tlv(0xFF30, hashed + tlv(0xDF33, pki.sign_sha256(signer, hashed)))

    df51 = tlv(0xDF51, ap_key)
    df52_signer = record_key if record_key is not None else authority.text_cv_issuer_key
    signed_public_key = tlv(0xFF50, df51 + tlv(0xDF52, pki.sign_sha256(df52_signer, df51)))
    if record_key is not None:
        cv_cert = authority.text_cv_certificate(TEXT_MUNICIPALITY_KEY_ID, record_key.public_key())
    else:
        cv_cert = authority.text_cv_certificate(_card_key_id(persona, "3"), ap_public)

    basic_info = tlv(
        0xFF40,
        tlv(0xDF41, bytes.fromhex("01030E01"))  # spec version, extended Lc/Le, vendor, vendor byte
        + tlv(0xDF42, pki.key_id("9000034"))
        # 32 bytes of unknown purpose then 96 FF (§4.6): derived from the serial, no secret.
        + tlv(0xDF43, _sha256(b"mynaemu text DF43|" + persona.card_serial.encode()) + b"\xff" * 96),
    )
    return {
        "text.my_number": my_number,
        "text.basic4": basic4,
        "text.integrity": integrity,
        "text.cv_cert": cv_cert,
        "text.basic_info": basic_info,
        "text.sm_public_key": tlv(0xA1, pki.encode_rsa_public_key(keys.text_sm.public_key())),
        "text.signed_public_key": signed_public_key,
    }


def _visual(
    persona: Persona, keys: CardKeys, authority: pki.Authority, *, record_key: rsa.RSAPrivateKey | None = None
) -> dict[str, bytes]:
    """The visual AP's content; ``record_key`` as in ``_text`` (signs DF28, DF13 and DF43)."""
    ap_key = pki.encode_rsa_public_key(keys.visual_ap.public_key())
    signer = record_key if record_key is not None else keys.visual_ap

    df22, df23, df24 = (
        tlv(0xDF22, _ymd(persona.birth)),
        tlv(0xDF23, persona.sex.encode()),
        tlv(0xDF24, ap_key),
    )
    df25, df26 = tlv(0xDF25, images.name_png(persona)), tlv(0xDF26, images.address_png(persona))
    df27 = tlv(0xDF27, images.face_jp2(persona))
    # DF28: PKCS#1 v1.5 over a SHA-256 DigestInfo whose OCTET STRING holds three hashes (§5.3).
    digests = _sha256(df22 + df23 + df24) + _sha256(df25 + df26) + _sha256(df27)
    df28 = tlv(0xDF28, pki.sign_pkcs1v15_raw(signer, pki.digest_info_sha256(digests)))
    face = offset_table_record(
        0xFF20,
        0xDF21,
        [
            df22,
            df23,
            df24,
            df25,
            df26,
            df27,
            df28,
            tlv(0xDF29, _ymd(persona.card_expiry)),
            tlv(0xDF2A, images.security_code_png(persona)),
        ],
    )

    signed = tlv(0xDF11, _ymd(persona.birth)) + tlv(0xDF12, ap_key)
    age_record = tlv(0xFF10, signed + tlv(0xDF13, pki.sign_sha256(signer, signed)))

    signed = tlv(0xDF41, images.my_number_png(persona)) + tlv(0xDF42, ap_key)
    my_number_image = tlv(0xFF40, signed + tlv(0xDF43, pki.sign_sha256(signer, signed)))

    basic_info = tlv(
        0xFF30,
        tlv(0xDF31, bytes.fromhex("06030E01"))
        + tlv(0xDF32, pki.key_id("9000024"))
        + tlv(0xDF33, b"\x01")
        + tlv(0xDF34, persona.municipality_code.encode("ascii"))
        # A key ID and 256 opaque bytes whose meaning is unknown (MCARD): random, no secret in it.
        + tlv(0xDF35, pki.key_id("9000025") + os.urandom(256)),
    )
    return {
        "visual.face": face,
        "visual.age_record": age_record,
        "visual.my_number_image": my_number_image,
        "visual.basic_info": basic_info,
        "visual.cv_cert": (
            authority.visual_cv_certificate(VISUAL_MUNICIPALITY_KEY_ID, record_key.public_key())
            if record_key is not None
            else authority.visual_cv_certificate(_card_key_id(persona, "2"), keys.visual_ap.public_key())
        ),
    }


def _records_and_mf(persona: Persona, keys: CardKeys, authority: pki.Authority) -> dict[str, bytes | list[bytes]]:
    key_ref = _card_key_id(persona, "5")
    card_id = persona.card_serial + persona.municipality_code + persona.card_expiry.strftime("%Y%m%d")
    return {
        "juki.key_ref": [key_ref],
        "common.key_ref": [key_ref],
        "common.card_id": [simple_tlv(0x01, card_id.encode("ascii"))],
        "mf.issuer_id": pki.ISSUER_ID,
        "mf.card_number": persona.card_serial.encode("ascii"),
        "mf.card_recognition": CARD_RECOGNITION,
        "mf.municipality": persona.municipality_code.encode("ascii"),
        "mf.expiry": _ymd(persona.card_expiry),
        "mf.cv_intermediate_key_id": pki.CV_INTERMEDIATE_KEY_ID,
        "mf.cv_root_to_intermediate": authority.cv_root_to_intermediate(),
        "mf.cv_intermediate_to_lower": authority.cv_intermediate_certificate(
            _card_key_id(persona, "1"), keys.common_ia.public_key()
        ),
        "mf.atr_tail": ATR_TAIL,
    }
