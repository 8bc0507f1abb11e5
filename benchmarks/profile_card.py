#!/usr/bin/env python3
"""Where SELECT EF's time goes: the card's layers, each added on top of the last, interleaved.

    python benchmarks/profile_card.py

Each line is a stand-in that does what ``Card.transmit`` does up to that layer (the real
objects: the card's mutex, ``parse_fields``, its dispatch table and handler), timed interleaved
with the dict floor of test_bench_card.py; the step between two lines is that layer's cost.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ["MYNAEMU_BENCH_TIMED"] = "1"

from interleave import interleave_many  # noqa: E402

from mynaemu.apdu import parse_fields  # noqa: E402

SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_000A = bytes.fromhex("00A4020C02000A")
OK = b"\x90\x00"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MYNAEMU_DATA_DIR"] = str(Path(tmp) / "data")
        from mynaemu import Card
        from mynaemu.testing import issue_test_card

        card = Card.load(issue_test_card(Path(tmp) / "card").path)
        card.transmit(SELECT_JPKI)
        efs = {fid.to_bytes(2, "big"): ef for fid, ef in card.applications["jpki"].efs.items()}
        table = {(0x00, 0xA4): efs}
        holder = [None]
        mutex, session = card.mutex, card.session

        def floor(apdu: bytes) -> bytes:
            ef = table[(apdu[0], apdu[1])].get(apdu[5:7])
            holder[0] = ef
            return OK

        def call_only(apdu: bytes) -> bytes:
            return OK

        def with_mutex(apdu: bytes) -> bytes:
            with mutex:
                return OK

        def with_parse(apdu: bytes) -> bytes:
            with mutex:
                parse_fields(apdu)
                return OK

        def with_dispatch(apdu: bytes) -> bytes:
            with mutex:
                cla, ins, p1, p2, data, le, ext = parse_fields(apdu)
                return card._table.get((cla << 8) | ins)(session, p1, p2, data, le, ext)

        layers = {"dict floor": floor, "a call": call_only, "+ card mutex": with_mutex,
                  "+ parse_fields": with_parse, "+ dispatch and handler": with_dispatch,
                  "Card.transmit": card.transmit}  # fmt: skip
        per_round, _, overhead = interleave_many({k: (lambda f=f: f(SELECT_000A)) for k, f in layers.items()}, rounds=100)
    import statistics

    base = statistics.median(per_round["dict floor"])
    print(f"SELECT EF 000A, ns per call (median of 100 interleaved rounds; loop overhead {overhead:.0f} ns):")
    prev = None
    for name, values in per_round.items():
        ns = statistics.median(values)
        step = f"  (+{ns - prev:.0f})" if prev is not None and name != "Card.transmit" else ""
        print(f"  {name:24s} {ns:6.0f} ns  ratio to the floor {base / ns:.2f}{step}")
        prev = ns
    return 0


if __name__ == "__main__":
    sys.exit(main())
