"""Issued content: every content id of the profile, exact layouts, digests and signatures.

Also the TLV codec (mynaemu/tlv.py) and the card-face images (mynaemu/images.py) they rest on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import tomllib
from datetime import date
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from mynaemu import images, pki, tlv
from mynaemu.content import KEY_IDS, CardKeys, build_contents, offset_table_record
from mynaemu.cv_issuers import TEXT_MUNICIPALITY_KEY_ID, VISUAL_MUNICIPALITY_KEY_ID, CvIssuers
from mynaemu.persona import Persona, check_number_b

PROFILE = tomllib.loads((Path(__file__).parent.parent / "apdu_specs" / "profile.toml").read_text("utf-8"))


def _profile_entries() -> tuple[dict[str, dict], set[str], set[str]]:
    """(binary/record EF specs by content id, GET DATA content ids, private key ids)."""
    efs, data, keys = {}, set(), set()
    for ap in PROFILE["aps"].values():
        for spec in ap.get("ef", {}).values():
            if spec.get("content"):
                efs[spec["content"]] = spec
            if "private_key" in spec:
                keys.add(spec["private_key"])
        data.update(ap.get("data", {}).values())
    return efs, data, keys


@pytest.fixture(scope="session")
def authority(tmp_path_factory: pytest.TempPathFactory) -> pki.Authority:
    return pki.Authority.load_or_create(tmp_path_factory.mktemp("content") / "authority")


@pytest.fixture(scope="session")
def keys() -> CardKeys:
    return CardKeys.generate()


@pytest.fixture(scope="session")
def persona() -> Persona:
    return Persona.generate(random.Random(2024), issued=date(2025, 6, 1))


@pytest.fixture(scope="session")
def contents(persona: Persona, keys: CardKeys, authority: pki.Authority) -> dict:
    return build_contents(persona, keys, authority)


def issuers() -> CvIssuers:
    """The installation's municipality keys and terminal CA (build_contents' default)."""
    return CvIssuers.load_or_create()


def test_the_ap_key_trust_model_certifies_the_ap_key(persona: Persona, keys: CardKeys, authority: pki.Authority) -> None:
    """The ``trust-ap-key`` variant: EF 0004 certifies the AP's key, which signs DF33; J-LIS signs DF52."""
    old = build_contents(persona, keys, authority, trust_model="ap-key")
    cv = pki.parse_cv_certificate(_blob(old, "text.cv_cert"))
    assert cv.public_key.public_numbers() == keys.text_ap.public_key().public_numbers()
    raw = _blob(old, "text.integrity")
    _, fields = _fields(raw, 0xFF30)
    pki.verify_sha256(cv.public_key, fields[0xDF33].value, raw[5 : fields[0xDF33].start])
    signed = _blob(old, "text.signed_public_key")
    _, f = _fields(signed, 0xFF50)
    pki.verify_sha256(authority.text_cv_issuer_public_key, f[0xDF52].value, signed[f[0xDF51].start : f[0xDF51].end])


def _blob(contents: dict, cid: str) -> bytes:
    value = contents[cid]
    assert isinstance(value, bytes), cid
    return value


def _fields(data: bytes, outer_tag: int) -> tuple[tlv.Tlv, dict[int, tlv.Tlv]]:
    outer = tlv.parse_tlv(data)
    assert outer.tag == outer_tag and outer.end == len(data)
    return outer, {item.tag: item for item in tlv.children(data, outer)}


# -- coverage and sizes ------------------------------------------------------------------------
def test_every_profile_content_id_is_built(contents: dict) -> None:
    efs, data, _ = _profile_entries()
    assert set(contents) == set(efs) | data


def test_contents_fit_the_profile(contents: dict) -> None:
    efs, data, _ = _profile_entries()
    for cid, spec in efs.items():
        if spec["type"] == "record":
            assert isinstance(contents[cid], list) and all(isinstance(r, bytes) for r in contents[cid]), cid
        else:
            assert isinstance(contents[cid], bytes), cid
            assert spec.get("size", 0) == 0 or len(contents[cid]) <= spec["size"], cid
    for cid in data:
        assert isinstance(contents[cid], bytes), cid


@pytest.mark.parametrize(
    ("cid", "length"),
    [
        ("text.my_number", 17),
        ("text.integrity", 336),
        ("text.cv_cert", 568),
        ("visual.cv_cert", 568),
        ("mf.cv_root_to_intermediate", 568),
        ("mf.cv_intermediate_to_lower", 568),
        ("jpki.token_info", 160),
        ("jpki.cert_availability", 3),
        ("text.signed_public_key", 536),  # the EF size
        ("visual.age_record", 547),
        ("mf.atr_tail", 8),
        ("mf.issuer_id", 16),
        ("mf.cv_intermediate_key_id", 16),
    ],
)
def test_exact_lengths(contents: dict, cid: str, length: int) -> None:
    assert len(_blob(contents, cid)) == length


def test_no_check_number_in_the_content(contents: dict, persona: Persona) -> None:
    secret = check_number_b(persona).encode()
    for value in contents.values():
        for blob in value if isinstance(value, list) else [value]:
            assert secret not in blob


# -- JPKI AP -----------------------------------------------------------------------------------
def test_token_info(contents: dict, persona: Persona) -> None:
    raw = _blob(contents, "jpki.token_info")
    assert raw[:32] == b"JPKIAPICCTOKEN2" + b" " * 17  # space-padded (§4.2)
    info = tlv.CK_TOKEN_INFO.parse(raw)
    assert info.label == "JPKIAPICCTOKEN2"
    assert info.flags == 0x40D and (info.max_pin_len, info.min_pin_len) == (16, 6)
    assert info.hardware_version == b"03" and info.firmware_version == b"01"
    assert info.serial_number == "0" + persona.card_serial
    assert tlv.CK_TOKEN_INFO.build(info) == raw


def test_jpki_certificates(contents: dict, persona: Persona, keys: CardKeys, authority: pki.Authority) -> None:
    auth = x509.load_der_x509_certificate(_blob(contents, "jpki.auth_cert"))
    sign = x509.load_der_x509_certificate(_blob(contents, "jpki.sign_cert"))
    auth_ca = x509.load_der_x509_certificate(_blob(contents, "jpki.auth_ca_cert"))
    sign_ca = x509.load_der_x509_certificate(_blob(contents, "jpki.sign_ca_cert"))
    auth.verify_directly_issued_by(auth_ca)
    sign.verify_directly_issued_by(sign_ca)
    assert auth.public_key().public_numbers() == keys.jpki_auth.public_key().public_numbers()
    assert sign.public_key().public_numbers() == keys.jpki_sign.public_key().public_numbers()
    # OpenSC reads `30 82 LL LL` and takes LL + 4 as the length.
    for cid in ("jpki.auth_cert", "jpki.sign_cert", "jpki.auth_ca_cert", "jpki.sign_ca_cert"):
        der = _blob(contents, cid)
        assert der[:2] == b"\x30\x82" and int.from_bytes(der[2:4], "big") + 4 == len(der)
    assert _blob(contents, "jpki.cert_availability") == b"\x8f\x8f\x00"


def test_minor_without_signing_certificate(keys: CardKeys, authority: pki.Authority) -> None:
    child = Persona.generate(random.Random(1), birth=date(2014, 8, 1), issued=date(2025, 6, 1))
    assert child.age_at_issuance == 10
    contents = build_contents(child, keys, authority)
    assert contents["jpki.sign_cert"] == b""
    assert contents["jpki.cert_availability"] == b"\x00\x8f\x00"
    x509.load_der_x509_certificate(_blob(contents, "jpki.auth_cert"))
    assert child.card_expiry == child.cert_expiry  # a minor's card ends with the certificates


def test_authority_reused_across_cards(contents: dict, keys: CardKeys, authority: pki.Authority) -> None:
    other = build_contents(Persona.generate(random.Random(5), issued=date(2025, 7, 1)), keys, authority)
    for cid in ("jpki.auth_ca_cert", "jpki.sign_ca_cert", "mf.cv_root_to_intermediate"):
        assert other[cid] == contents[cid]
    assert other["jpki.auth_cert"] != contents["jpki.auth_cert"]


# -- text AP -----------------------------------------------------------------------------------
def test_my_number_file(contents: dict, persona: Persona) -> None:
    assert _blob(contents, "text.my_number") == b"\xff\x10\x0c" + persona.my_number.encode() + b"\xff\xff"


def test_basic4_offsets_and_values(contents: dict, persona: Persona) -> None:
    raw = _blob(contents, "text.basic4")
    outer, fields = _fields(raw, 0xFF20)
    assert raw[:2] == b"\xff\x20" and outer.header_len == 3  # short form for a short address
    table = tlv.children(raw, outer)[0]
    assert (table.tag, len(table.value)) == (0xDF21, 8)
    offsets = [int.from_bytes(table.value[i : i + 2], "big") for i in range(0, 8, 2)]
    assert offsets[0] == 0x0E  # as on real cards (§4.5)
    for offset, tag in zip(offsets, (0xDF22, 0xDF23, 0xDF24, 0xDF25), strict=True):
        assert tlv.parse_tlv(raw, offset).tag == tag
        assert fields[tag].start == offset
    assert fields[0xDF22].value.decode() == persona.name
    assert fields[0xDF23].value.decode() == persona.address
    assert fields[0xDF24].value == persona.birth.strftime("%Y%m%d").encode()
    assert fields[0xDF25].value == persona.sex.encode()


def test_basic4_with_a_long_address(persona: Persona, keys: CardKeys, authority: pki.Authority) -> None:
    long = dataclasses.replace(persona, address=persona.address + "見本マンション" * 6)
    raw = build_contents(long, keys, authority)["text.basic4"]
    assert raw[2] == 0x81  # the value passed 127 bytes: `81 xx` length
    outer, fields = _fields(raw, 0xFF20)
    table = tlv.children(raw, outer)[0]
    assert int.from_bytes(table.value[2:4], "big") == fields[0xDF23].start
    assert fields[0xDF23].value.decode() == long.address


def test_integrity_record(contents: dict, authority: pki.Authority, keys: CardKeys) -> None:
    raw = _blob(contents, "text.integrity")
    assert raw[:5] == bytes.fromhex("FF3082014B")
    _, fields = _fields(raw, 0xFF30)
    basic4 = _blob(contents, "text.basic4")
    my_number_ef = _blob(contents, "text.my_number")  # the whole 17-byte EF, FF FF included
    df22 = int.from_bytes(basic4[6:8], "big")
    assert fields[0xDF31].value == hashlib.sha256(my_number_ef).digest()
    assert fields[0xDF32].value == hashlib.sha256(basic4[df22:]).digest()
    signed = raw[5 : fields[0xDF33].start]
    assert len(signed) == 70 and signed[:3] == b"\xdf\x31\x20" and signed[35:38] == b"\xdf\x32\x20"
    # The client's path (§5.3): EF 0004 with the issuer's key, then DF33 with the key inside it.
    cv = pki.parse_cv_certificate(_blob(contents, "text.cv_cert"))
    cv.verify(authority.text_cv_issuer_public_key)
    assert cv.issuer_key_id == pki.TEXT_CV_ISSUER_KEY_ID
    pki.verify_sha256(cv.public_key, fields[0xDF33].value, signed)
    # EF 0004 certifies the municipality key, not the AP's own (the default trust model, D13).
    assert cv.subject_key_id == TEXT_MUNICIPALITY_KEY_ID
    assert cv.public_key.public_numbers() == issuers().text_municipality.public_key().public_numbers()
    assert cv.public_key.public_numbers() != keys.text_ap.public_key().public_numbers()


def test_text_keys(contents: dict, authority: pki.Authority, keys: CardKeys) -> None:
    sm = _blob(contents, "text.sm_public_key")
    assert sm[:13] == bytes.fromhex("A1820109900301000191820100")
    key = pki.decode_rsa_public_key(tlv.parse_tlv(sm).value)
    assert key.public_numbers() == keys.text_sm.public_key().public_numbers()

    signed = _blob(contents, "text.signed_public_key")
    assert signed[:10] == bytes.fromhex("FF50820213DF51820109")
    _, fields = _fields(signed, 0xFF50)
    df51 = signed[fields[0xDF51].start : fields[0xDF51].end]
    assert pki.decode_rsa_public_key(fields[0xDF51].value).public_numbers() == (keys.text_ap.public_key().public_numbers())
    # A client checks DF52 with the key from EF 0004 (MCARD; §4.6).
    cv = pki.parse_cv_certificate(_blob(contents, "text.cv_cert"))
    pki.verify_sha256(cv.public_key, fields[0xDF52].value, df51)


def test_text_basic_info(contents: dict) -> None:
    raw = _blob(contents, "text.basic_info")
    _, fields = _fields(raw, 0xFF40)
    assert fields[0xDF41].value == bytes.fromhex("01030E01")
    assert fields[0xDF42].value == pki.key_id("9000034")
    df43 = fields[0xDF43]
    assert raw[df43.start : df43.start + 4] == bytes.fromhex("DF438180")
    assert len(df43.value) == 128 and df43.value[32:] == b"\xff" * 96


# -- visual AP ---------------------------------------------------------------------------------
FACE_TAGS = (0xDF22, 0xDF23, 0xDF24, 0xDF25, 0xDF26, 0xDF27, 0xDF28, 0xDF29, 0xDF2A)


def test_face_layout(contents: dict, persona: Persona, keys: CardKeys) -> None:
    raw = _blob(contents, "visual.face")
    assert raw[:3] == b"\xff\x20\x82" and int.from_bytes(raw[3:5], "big") + 5 == len(raw)
    outer, fields = _fields(raw, 0xFF20)
    table = tlv.children(raw, outer)[0]
    assert table.tag == 0xDF21 and len(table.value) == 18
    offsets = [int.from_bytes(table.value[i : i + 2], "big") for i in range(0, 18, 2)]
    assert [tlv.parse_tlv(raw, o).tag for o in offsets] == list(FACE_TAGS)
    assert fields[0xDF22].value == persona.birth.strftime("%Y%m%d").encode()
    assert fields[0xDF23].value == persona.sex.encode()
    assert fields[0xDF24].value == pki.encode_rsa_public_key(keys.visual_ap.public_key())
    assert fields[0xDF29].value == persona.card_expiry.strftime("%Y%m%d").encode()
    assert len(fields[0xDF28].value) == 256
    for tag in (0xDF25, 0xDF26, 0xDF2A):
        image = Image.open(io.BytesIO(fields[tag].value))
        assert (image.format, image.mode) == ("PNG", "1")
    photo = Image.open(io.BytesIO(fields[0xDF27].value))
    photo.load()
    assert (photo.format, photo.mode) == ("JPEG2000", "L")
    assert fields[0xDF27].value[4:8] == b"jP  "  # JP2 container, not a bare codestream
    assert len(raw) < 0x7FFF  # readable with a 15-bit READ BINARY offset


def test_face_signature(contents: dict, authority: pki.Authority) -> None:
    raw = _blob(contents, "visual.face")
    _, fields = _fields(raw, 0xFF20)

    def span(*tags: int) -> bytes:
        return b"".join(raw[fields[t].start : fields[t].end] for t in tags)

    digests = (
        hashlib.sha256(span(0xDF22, 0xDF23, 0xDF24)).digest()
        + hashlib.sha256(span(0xDF25, 0xDF26)).digest()
        + hashlib.sha256(span(0xDF27)).digest()
    )
    cv = pki.parse_cv_certificate(_blob(contents, "visual.cv_cert"))
    cv.verify(authority.visual_cv_issuer_public_key)
    assert cv.issuer_key_id == pki.VISUAL_CV_ISSUER_KEY_ID
    recovered = cv.public_key.recover_data_from_signature(fields[0xDF28].value, padding.PKCS1v15(), NoDigestInfo())
    assert recovered == pki.digest_info_sha256(digests)
    assert recovered[-96:] == digests
    # EF 0004 certifies the municipality key that signed DF28; the presence check's key (DF24)
    # is the AP's own, vouched for by that signature.
    assert cv.subject_key_id == VISUAL_MUNICIPALITY_KEY_ID
    assert pki.decode_rsa_public_key(fields[0xDF24].value).public_numbers() != cv.public_key.public_numbers()


@pytest.mark.parametrize(
    ("cid", "outer", "header", "key_tag", "sig_tag"),
    [
        ("visual.age_record", 0xFF10, "FF1082021EDF1108", 0xDF12, 0xDF13),
        ("visual.my_number_image", 0xFF40, "FF4082", 0xDF42, 0xDF43),
    ],
)
def test_visual_signed_records(
    contents: dict, keys: CardKeys, cid: str, outer: int, header: str, key_tag: int, sig_tag: int
) -> None:
    raw = _blob(contents, cid)
    assert raw.startswith(bytes.fromhex(header))
    parsed, fields = _fields(raw, outer)
    cv = pki.parse_cv_certificate(_blob(contents, "visual.cv_cert"))
    pki.verify_sha256(cv.public_key, fields[sig_tag].value, raw[parsed.value_start : fields[sig_tag].start])
    assert fields[key_tag].value == pki.encode_rsa_public_key(keys.visual_ap.public_key())


def test_my_number_image(contents: dict) -> None:
    _, fields = _fields(_blob(contents, "visual.my_number_image"), 0xFF40)
    image = Image.open(io.BytesIO(fields[0xDF41].value))
    assert (image.format, image.mode, image.size) == ("PNG", "1", (72, 12))  # as on real cards


def test_visual_basic_info(contents: dict, persona: Persona) -> None:
    raw = _blob(contents, "visual.basic_info")
    _, fields = _fields(raw, 0xFF30)
    assert fields[0xDF31].value == bytes.fromhex("06030E01")
    assert len(fields[0xDF32].value) == 16
    assert fields[0xDF33].value == b"\x01"
    assert fields[0xDF34].value == persona.municipality_code.encode()
    assert len(fields[0xDF35].value) == 16 + 256
    assert raw[fields[0xDF35].start : fields[0xDF35].start + 5] == bytes.fromhex("DF35820110")


# -- record EFs and MF objects ---------------------------------------------------------------
def test_records(contents: dict, persona: Persona) -> None:
    (card_id,) = contents["common.card_id"]
    expected = persona.card_serial + persona.municipality_code + persona.card_expiry.strftime("%Y%m%d")
    assert card_id == b"\x01\x1c" + expected.encode()
    assert contents["juki.key_ref"] == contents["common.key_ref"]
    assert [len(r) for r in contents["juki.key_ref"]] == [16]


def test_mf_objects(contents: dict, persona: Persona, keys: CardKeys, authority: pki.Authority) -> None:
    assert contents["mf.card_number"] == persona.card_serial.encode()
    assert contents["mf.municipality"] == persona.municipality_code.encode()
    assert contents["mf.expiry"] == persona.card_expiry.strftime("%Y%m%d").encode()
    assert contents["mf.atr_tail"] == bytes.fromhex("E000FF8131FE4514")
    recognition = tlv.parse_tlv(_blob(contents, "mf.card_recognition"))
    assert recognition.tag == 0x73
    assert tlv.parse_tlv(recognition.value).value == bytes.fromhex("2A864886FC6B01")  # GP card recognition OID
    upper = pki.parse_cv_certificate(_blob(contents, "mf.cv_root_to_intermediate"))
    lower = pki.parse_cv_certificate(_blob(contents, "mf.cv_intermediate_to_lower"))
    upper.verify(authority.cv_root_public_key)
    lower.verify(upper.public_key)
    assert lower.issuer_key_id == contents["mf.cv_intermediate_key_id"] == upper.subject_key_id
    # The lower key is the common AP's INTERNAL AUTHENTICATE key, so its answers can be checked.
    assert lower.public_key.public_numbers() == keys.common_ia.public_key().public_numbers()


# -- keys ------------------------------------------------------------------------------------
def test_card_keys_round_trip(keys: CardKeys) -> None:
    _, _, profile_key_ids = _profile_entries()
    pems = keys.to_pem_dict()
    # text.sm has no key EF: SET SESSION KEY decrypts with it (the public half is EF 0006).
    assert set(pems) == set(KEY_IDS) == profile_key_ids | {"text.sm"}
    assert all(pem.startswith("-----BEGIN PRIVATE KEY-----") for pem in pems.values())  # PKCS#8
    for check in (True, False):
        again = CardKeys.from_pem_dict(pems, check=check)
        for key_id in KEY_IDS:
            assert again.by_id(key_id).private_numbers() == keys.by_id(key_id).private_numbers()
    with pytest.raises(ValueError, match=r"missing card key 'text\.sm'"):
        CardKeys.from_pem_dict({k: v for k, v in pems.items() if k != "text.sm"})
    with pytest.raises(ValueError, match=r"'jpki\.auth' is not a valid PEM"):
        CardKeys.from_pem_dict({**pems, "jpki.auth": "junk"})
    assert "PRIVATE" not in repr(keys)
    der = keys.jpki_auth.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert der not in repr(keys).encode()


# -- TLV codec ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "encoded"),
    [(0, "00"), (0x7F, "7F"), (0x80, "8180"), (0xFF, "81FF"), (0x100, "820100"), (0xFFFF, "82FFFF")],
)
def test_length_forms(length: int, encoded: str) -> None:
    assert tlv.encode_length(length) == bytes.fromhex(encoded)


def test_tag_forms() -> None:
    assert tlv.tlv(0xDF21, b"") == b"\xdf\x21\x00"  # two-byte private tag even below 31
    assert tlv.tlv(0x90, b"\x01") == b"\x90\x01\x01"
    assert tlv.parse_tlv(bytes.fromhex("FF1003414243FFFF")) == tlv.Tlv(0xFF10, b"ABC", 0, 6)
    assert tlv.parse_tlv(bytes.fromhex("7F2100")).tag == 0x7F21
    with pytest.raises(tlv.TlvError, match="claims 5 bytes"):
        tlv.parse_tlv(bytes.fromhex("DF2105AABB"))
    with pytest.raises(tlv.TlvError):
        tlv.encode_length(0x10000)


@given(
    st.sampled_from([0x90, 0x91, 0xA1, 0xDF21, 0xFF20, 0x7F21, 0x5F4E, 0xDF2A]),
    st.binary(max_size=600),
    st.binary(max_size=4),
)
def test_tlv_round_trip(tag: int, value: bytes, trailing: bytes) -> None:
    encoded = tlv.tlv(tag, value)
    parsed = tlv.parse_tlv(encoded + trailing)
    assert (parsed.tag, parsed.value, parsed.end) == (tag, value, len(encoded))


@given(st.integers(0, 255), st.binary(max_size=400))
def test_simple_tlv_round_trip(tag: int, value: bytes) -> None:
    encoded = tlv.simple_tlv(tag, value)
    assert encoded[1] == (len(value) if len(value) < 0xFF else 0xFF)
    assert list(tlv.iter_simple_tlvs(encoded + encoded)) == [
        tlv.Tlv(tag, value, 0, len(encoded)),
        tlv.Tlv(tag, value, len(encoded), 2 * len(encoded)),
    ]


@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=9))
def test_offset_table_points_at_every_item(values: list[bytes]) -> None:
    items = [tlv.tlv(0xDF22 + i, v) for i, v in enumerate(values)]
    record = offset_table_record(0xFF20, 0xDF21, items)
    outer = tlv.parse_tlv(record)
    table = tlv.children(record, outer)[0]
    for i, item in enumerate(items):
        offset = int.from_bytes(table.value[2 * i : 2 * i + 2], "big")
        assert record[offset : offset + len(item)] == item


# -- images ------------------------------------------------------------------------------------
def test_images_are_small_deterministic_and_decodable(persona: Persona) -> None:
    for render in (images.name_png, images.address_png, images.security_code_png, images.my_number_png):
        data = render(persona)
        assert data == render(persona) and len(data) < 2048
        Image.open(io.BytesIO(data)).load()
    assert Image.open(io.BytesIO(images.security_code_png(persona))).size == (24, 12)
    face = images.face_jp2(persona)
    assert face == images.face_jp2(persona) and len(face) < 8192
    other = dataclasses.replace(persona, card_serial="900000000000001")
    assert images.face_jp2(other) != face
    # The face does not depend on secrets: changing them leaves the bytes alone.
    assert images.face_jp2(dataclasses.replace(persona, security_code="0000")) == face


def test_text_rendering_distinguishes_characters() -> None:
    a, b = images.render_text_png("山田\u3000太郎"), images.render_text_png("山田\u3000花子")
    assert a != b
    wide = Image.open(io.BytesIO(images.render_text_png("１２３"))).size
    narrow = Image.open(io.BytesIO(images.render_text_png("123"))).size
    assert wide == (36, 12) and narrow == (18, 12)
    wrapped = Image.open(io.BytesIO(images.render_text_png("見" * 20, wrap=16))).size
    assert wrapped == (192, 24)
