"""APDU and vpcd-frame fuzzing, CI-sized (``scripts/fuzz`` runs the same loops for long).

Every answer must be well-formed (a whitelisted status word, data only with 9000, never
61xx/6Cxx, at most 65,537 bytes), nothing may escape ``transmit``, no error may be logged,
no retry counter may rise except by a 9000 to a VERIFY/CHANGE, and the card must still work
afterwards. Sizes: MYNAEMU_FUZZ_APDUS / MYNAEMU_FUZZ_FRAMES; seed: MYNAEMU_FUZZ_SEED.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mynaemu import Card
from mynaemu.apdu import ApduError, parse_command

from . import fuzzkit as fk
from .cardkit import right_values

APDUS = int(os.environ.get("MYNAEMU_FUZZ_APDUS", 50_000))
FRAMES = int(os.environ.get("MYNAEMU_FUZZ_FRAMES", 5_000))
SEED = fk.seed_from_env()


@pytest.fixture
def factory(issued_template, tmp_path: Path) -> fk.CardFactory:
    return fk.CardFactory(issued_template.path, tmp_path)


def test_apdu_fuzz(factory: fk.CardFactory) -> None:
    """Mutated client transcripts and random APDUs straight into ``Card.transmit``."""
    stats, rng = fk.Stats(), random.Random(SEED)
    fuzzer = fk.CardFuzzer(factory, rng, stats, refresh_every=10_000)
    card = fuzzer._new_card()
    stream = fk.apdu_stream(rng, fk.transcripts(right_values(card)))
    with fk.count_logged_errors(stats):
        fk.timed(lambda: fuzzer.run(stream, APDUS), stats)
        fuzzer.finish_card()
    assert stats.problems == 0, f"seed {SEED}\n{stats.report()}"
    assert stats.apdus == APDUS and stats.dead_checks == stats.cards
    if APDUS >= 20_000:  # the mix reaches deep states: successes, wrong tries, blocked keys, refusals
        assert {"9000", "63C0", "6984", "6982", "6700", "6B00"} <= set(stats.sws), stats.sws


def test_frame_fuzz(factory: fk.CardFactory, caplog: pytest.LogCaptureFixture) -> None:
    """Raw frames to a ``VpcdLink`` through a fake vpcd on loopback; the link must keep coming back."""
    caplog.set_level(logging.ERROR, logger="reader_bridge")  # a warning per malformed frame, on purpose
    stats, rng = fk.Stats(), random.Random(SEED + 1)
    card = factory()
    stream = fk.apdu_stream(rng, fk.transcripts(right_values(card)))
    fuzzer = fk.LinkFuzzer(card, rng, stats, stream)
    with fk.count_logged_errors(stats):
        fk.timed(lambda: fuzzer.run(FRAMES, fk.default_link_factory(card)), stats)
    assert stats.problems == 0, f"seed {SEED + 1}\n{stats.report()}"
    assert stats.frames >= FRAMES and stats.connections > FRAMES // 100, stats.report()
    assert fk.dead_card_check(card) is None
    reloaded = Card.load(card.dir.path, read_only=True)
    assert all(reloaded.tries_left(k) == card.tries_left(k) for k in card.keyring.keys)


def test_any_bytes_get_a_wellformed_answer(issued_template, tmp_path: Path) -> None:
    """Hypothesis-chosen bytes (any length up to 300) never break an answer or raise a counter."""
    card = fk.CardFactory(issued_template.path, tmp_path)()
    keys = list(card.keyring.keys)
    whitelist = fk.allowed_sws(max(card.keyring[k].spec.limit for k in keys))

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(prefix=st.sampled_from([b"", b"\x00", b"\x00\xa4", b"\x00\x20\x00", b"\x80\x2a\x00", b"\x00\xb0\x8a"]),
           tail=st.binary(max_size=300))
    def check(prefix: bytes, tail: bytes) -> None:
        apdu = prefix + tail
        before = [card.tries_left(k) for k in keys]
        resp = card.transmit(apdu)
        assert fk.check_answer(apdu, resp, whitelist) is None, (apdu.hex(), resp.hex())
        after = [card.tries_left(k) for k in keys]
        restored = resp == fk.OK and (apdu[0], apdu[1]) in fk.COUNTER_RESTORERS
        assert restored or all(b <= a for a, b in zip(before, after, strict=True))

    check()
    assert fk.dead_card_check(card) is None


@settings(max_examples=300, deadline=None)
@given(cla=st.integers(0, 255), ins=st.integers(0, 255), p1=st.integers(0, 255), p2=st.integers(0, 255),
       data=st.binary(max_size=600), le=st.none() | st.integers(1, 65536), ext=st.booleans())
def test_encoder_agrees_with_the_card_parser(cla, ins, p1, p2, data, le, ext) -> None:
    """The encoder and the card's parser read every well-formed APDU the same way."""
    apdu = fk.encode(cla, ins, p1, p2, data, le, ext)
    try:
        cmd = parse_command(apdu)
    except ApduError as exc:  # only an extended Le with no data of length 0 is malformed
        pytest.fail(f"{apdu[:12].hex()}: {exc}")
    assert (cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, cmd.le) == (cla, ins, p1, p2, data, le)
    assert cmd.extended == (len(apdu) > 5 and apdu[4] == 0 and (bool(data) or le is not None))


def test_generators_span_every_length_form() -> None:
    """The stream holds headers-only, short and extended cases, truncations and oversize APDUs."""
    rng = random.Random(1)
    values = {"auth": "1234", "sign": "ABC123", "text": "5678", "juki": "2468", "common": "2468",
              "text-a": "123456789018", "visual-a": "123456789018", "text-b": "55021720352285",
              "visual-b": "55021720352285", "visual-birth": "550217"}
    stream = fk.apdu_stream(rng, fk.transcripts(values))
    lengths = [len(next(stream)) for _ in range(20_000)]
    assert min(lengths) < 4 and max(lengths) >= 65_535 and max(lengths) <= 65_544
    assert any(n == 4 for n in lengths) and any(n == 5 for n in lengths) and any(n == 7 for n in lengths)


def test_transmit_accepts_any_bytes_like(card: Card) -> None:
    """bytearray/memoryview/list APDUs (what PC/SC wrappers hold) are answered like bytes.

    Regression: SELECT by AID with a bytearray answered 6F00 (unhashable bytearray in the AID
    lookup) until Card.transmit converted its input (commit 5ff31c5).
    """
    apdu = bytes.fromhex("00A4040C0AD392F000260100000001")
    for form in (bytearray, memoryview, list):
        assert card.transmit(form(apdu)) == b"\x90\x00", form.__name__
    card.transmit(bytes.fromhex("00A4020C020018"))
    assert card.transmit(bytearray(bytes.fromhex("002000800431323334"))) == b"\x90\x00"
