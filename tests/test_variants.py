"""Card variants (docs/card-interface.md, D13): every variant runs every flow and keeps its 券面 checks.

Each variant of the default profile issues a card; the matrix replays every transcript on it and
checks the text AP's digests and signatures (DF31/DF32/DF33) the way clients do. Then each
variant's own difference is shown, and two basic-four readers written from the spec's
description of the two length forms pass on their matching variant and fail on the other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from mynaemu import Card, StateError
from mynaemu.cli import main
from mynaemu.pki import parse_cv_certificate
from mynaemu.profile import Profile, ProfileError
from mynaemu.testing import TEST_SECRETS, issue_test_card, known_persona
from mynaemu.transcript import card_variables, replay, transcript_files

from .conftest import select_ap, select_ef, tx, verify

VARIANTS = Profile.load().variant_names()
OK = b"\x90\x00"


@pytest.fixture(scope="module")
def variant_dirs(tmp_path_factory: pytest.TempPathFactory, _data_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants")
    return {name: issue_test_card(root / name, variant=name).path for name in VARIANTS}


@pytest.fixture
def variant_card(request: pytest.FixtureRequest, variant_dirs: dict[str, Path]):
    card = Card.load(variant_dirs[request.param])
    card.power_on()
    yield card
    card.close()


def read_ef(card: Card, fid: str, le: int = 0x1000) -> bytes:
    select_ef(card, fid)
    rsp = card.transmit(bytes.fromhex("00B00000") + b"\x00" + le.to_bytes(2, "big"))
    assert rsp[-2:] == OK
    return rsp[:-2]


def test_the_default_profile_has_the_variants_of_the_issue() -> None:
    assert VARIANTS == ["default", "basic4-long", "reselect-keeps-status", "contactless", "get-data-whole", "trust-ap-key"]


@pytest.mark.parametrize("variant_card", VARIANTS, indirect=True)
@pytest.mark.parametrize("flow", transcript_files(), ids=[p.stem for p in transcript_files()])
def test_every_flow_runs_on_every_variant(variant_card: Card, flow: Path) -> None:
    """Every flow for any variant runs on each; a variant's own flow runs on it and fails on the default."""
    from mynaemu.transcript import load_transcript

    transcript = load_transcript(flow)
    variant_card.power_on()
    result = replay(transcript, variant_card.transmit, card_variables(variant_card, dict(TEST_SECRETS)))
    if transcript.variant in (None, variant_card.profile.variant):
        assert result.ok, result
    elif variant_card.profile.variant == "default" and transcript.variant != "contactless":
        assert not result.ok, f"{flow.name} passes on the default card too: it shows no difference"


@pytest.mark.parametrize("variant_card", VARIANTS, indirect=True)
def test_text_ap_digests_and_signatures_hold_on_every_variant(variant_card: Card) -> None:
    """As clients check them (§5.3): DF31 over EF 0001, DF32 over EF 0002 from DF22, DF33 by the EF 0004 key."""
    card = variant_card
    select_ap(card, "text")
    select_ef(card, "0011")
    assert verify(card, TEST_SECRETS["text"]) == OK
    ef1, ef2, ef3, ef4 = (read_ef(card, fid) for fid in ("0001", "0002", "0003", "0004"))
    # EF 0002: the DF21 offset table says where DF22 starts, whatever the length form.
    header = 5 if ef2[2] == 0x82 else 3
    assert ef2[header : header + 2] == b"\xdf\x21"
    df22 = int.from_bytes(ef2[header + 3 : header + 5], "big")
    assert ef2[df22] == 0xDF and ef2[df22 + 1] == 0x22
    total = header + (int.from_bytes(ef2[3:5], "big") if header == 5 else ef2[2])
    # EF 0003 (§4.6): FF 30 82 01 4B | DF 31 20 <32> | DF 32 20 <32> | DF 33 82 01 00 <256>.
    assert ef3[:5] == b"\xff\x30\x82\x01\x4b"
    assert ef3[5:8] == b"\xdf\x31\x20" and ef3[8:40] == hashlib.sha256(ef1).digest()
    assert ef3[40:43] == b"\xdf\x32\x20" and ef3[43:75] == hashlib.sha256(ef2[df22:total]).digest()
    assert ef3[75:80] == b"\xdf\x33\x82\x01\x00"
    signed, signature = ef3[5:75], ef3[80:336]
    cv = parse_cv_certificate(ef4)
    cv.public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())


# -- each variant's own difference ---------------------------------------------------------------
def _basic4_short_form_reader(card: Card) -> bytes:
    """A client that reads EF 0002's short length byte (TEX2E): RB(2, 1), then RB(0, 3 + L)."""
    select_ef(card, "0002")
    length = tx(card, "00B0000201")
    assert length[-2:] == OK
    rsp = card.transmit(bytes((0x00, 0xB0, 0x00, 0x00, 3 + length[0])))
    if rsp[:2] != b"\xff\x20" or rsp[2] >= 0x80:
        raise ValueError("not a short-form FF 20 record")
    return rsp[:-2]


def _basic4_long_form_reader(card: Card) -> bytes:
    """A client written for `FF 20 82 HH LL` (the 2017 Go code): fixed 5-byte header, then the value."""
    select_ef(card, "0002")
    head = tx(card, "00B0000005")
    if head[:3] != b"\xff\x20\x82":
        raise ValueError("not a long-form FF 20 82 record")
    n = int.from_bytes(head[3:5], "big")
    rsp = card.transmit(bytes.fromhex("00B00000") + b"\x00" + (5 + n).to_bytes(2, "big"))
    body = rsp[:-2]
    assert body[5:8] == b"\xdf\x21\x08"
    offsets = [int.from_bytes(body[8 + 2 * i : 10 + 2 * i], "big") for i in range(4)]
    assert body[offsets[0] : offsets[0] + 2] == b"\xdf\x22"  # the offset table, behind the 5-byte header
    return body


@pytest.mark.parametrize(("variant", "reader", "other"), [
    ("default", _basic4_short_form_reader, _basic4_long_form_reader),
    ("basic4-long", _basic4_long_form_reader, _basic4_short_form_reader),
])
def test_a_basic4_reader_passes_on_its_variant_only(variant_dirs, variant: str, reader, other) -> None:
    with Card.load(variant_dirs[variant]) as card:
        select_ap(card, "text")
        select_ef(card, "0011")
        assert verify(card, TEST_SECRETS["text"]) == OK
        record = reader(card)
        assert "山田".encode() in record
        with pytest.raises((ValueError, AssertionError)):
            other(card)


def test_the_long_form_shifts_the_offset_table(variant_dirs) -> None:
    short = Card.load(variant_dirs["default"], read_only=True).dir.content["text.basic4"]
    long = Card.load(variant_dirs["basic4-long"], read_only=True).dir.content["text.basic4"]
    assert long[:3] == b"\xff\x20\x82" and short[2] < 0x80
    assert int.from_bytes(long[3:5], "big") == short[2]  # the same value, two more header bytes
    assert long[5:8] == short[3:6] == b"\xdf\x21\x08"
    shifted = [int.from_bytes(long[8 + 2 * i : 10 + 2 * i], "big") for i in range(4)]
    plain = [int.from_bytes(short[6 + 2 * i : 8 + 2 * i], "big") for i in range(4)]
    assert plain[0] == 14 and shifted == [o + 2 for o in plain]
    assert long[16:] == short[14:]  # DF22..DF25 unchanged


@pytest.mark.parametrize("variant", ["default", "reselect-keeps-status"])
def test_reselecting_the_current_ap(variant_dirs, variant: str) -> None:
    with Card.load(variant_dirs[variant]) as card:
        select_ap(card, "text")
        select_ef(card, "0011")
        assert verify(card, TEST_SECRETS["text"]) == OK
        assert select_ap(card, "text") == OK
        select_ef(card, "0001")
        want = OK if variant == "reselect-keeps-status" else b"\x69\x82"
        assert tx(card, "00B0000000")[-2:] == want
        # Selecting another AP clears it in every variant.
        select_ap(card, "jpki")
        select_ap(card, "text")
        select_ef(card, "0001")
        assert tx(card, "00B0000000") == b"\x69\x82"


@pytest.mark.parametrize("variant", ["default", "get-data-whole"])
def test_get_data_7f21(variant_dirs, variant: str) -> None:
    with Card.load(variant_dirs[variant]) as card:
        whole = card.dir.content["mf.cv_intermediate_to_lower"]
        rsp = tx(card, "00CA7F21000000")
        assert rsp[-2:] == OK
        assert rsp[:-2] == (whole if variant == "get-data-whole" else whole[5:])
        assert parse_cv_certificate(rsp[:-2]).subject_key_id == parse_cv_certificate(whole).subject_key_id
        assert tx(card, "00CA00F8000000")[:-2] == card.dir.content["mf.cv_root_to_intermediate"]  # F8: as stored


def test_contactless_variant_answers_the_type_b_atr(variant_dirs) -> None:
    with Card.load(variant_dirs["contactless"]) as card:
        assert card.power_on() == card.profile.atr_contactless
    with Card.load(variant_dirs["contactless"], interface="contact") as card:
        assert card.power_on() == card.profile.atr_contact
    with Card.load(variant_dirs["default"]) as card:
        assert card.power_on() == card.profile.atr_contact


# -- issuing a variant ---------------------------------------------------------------------------
def test_issue_variant_from_the_cli_and_info_shows_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["issue", str(tmp_path / "c"), "--variant", "basic4-long", "--auth-pin", "1234"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "c")]) == 0
    assert "variant basic4-long" in capsys.readouterr().out
    with Card.load(tmp_path / "c", read_only=True) as card:
        assert card.profile.variant == "basic4-long" and card.profile.basic4_length == "long"


def test_issue_refuses_an_unknown_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["issue", str(tmp_path / "c"), "--variant", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "basic4-long" in err
    assert not (tmp_path / "c").exists()
    with pytest.raises(ProfileError, match="no variant 'nosuch'"):
        issue_test_card(tmp_path / "d", variant="nosuch")


def test_a_card_with_an_unknown_variant_is_refused(tmp_path: Path) -> None:
    import json

    path = issue_test_card(tmp_path / "c", persona=known_persona()).path
    meta = json.loads((path / "card.json").read_text())
    meta["variant"] = "nosuch"
    (path / "card.json").write_text(json.dumps(meta))
    with pytest.raises(StateError, match=r"card\.json: variant: .*no variant 'nosuch'"):
        Card.load(path)


def test_a_variant_table_is_checked(tmp_path: Path) -> None:
    text = Profile.load().text() + '\n[variants.bad]\nbasic4_length = "medium"\n'
    (tmp_path / "p.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ProfileError, match=r"variants\.bad\.basic4_length: must be one of short, long"):
        Profile.load(tmp_path / "p.toml")


def test_replay_refuses_a_flow_of_another_variant(variant_dirs, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "variant-basic4-long", "--card", str(variant_dirs["default"])]) == 2
    assert "a flow for card variant 'basic4-long'; this card is 'default'" in capsys.readouterr().err
    assert main(["replay", "variant-basic4-long", "--card", str(variant_dirs["basic4-long"])]) == 0
    assert main(["replay", "terminal-auth", "new-commands", "--card", str(variant_dirs["default"])]) == 0


def test_df52_verifies_with_the_ef_0004_key_only_in_the_municipality_model(variant_dirs) -> None:
    """The client MCARD describes: DF52 (over DF51) checked with the public key of EF 0004."""
    from mynaemu import pki, tlv

    for variant, verifies in (("default", True), ("trust-ap-key", False)):
        content = Card.load(variant_dirs[variant], read_only=True).dir.content
        record = content["text.signed_public_key"]
        items = tlv.children(record, tlv.parse_tlv(record))
        df51, df52 = tlv.find(items, 0xDF51), tlv.find(items, 0xDF52)
        key = parse_cv_certificate(content["text.cv_cert"]).public_key
        if verifies:
            pki.verify_sha256(key, df52.value, record[df51.start : df51.end])
        else:
            with pytest.raises(InvalidSignature):
                pki.verify_sha256(key, df52.value, record[df51.start : df51.end])
