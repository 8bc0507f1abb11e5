#!/usr/bin/env python3
"""Resident memory (VmRSS) of loaded cards: one card after a flow using every key, and 100 cards.

    python benchmarks/memory.py              # issue a card in a temp dir, measure, print MB
    python benchmarks/memory.py --card DIR   # measure copies of an already issued card
    python benchmarks/memory.py --json       # one JSON object (what benchmarks/report reads)

Each measurement runs in a fresh interpreter. "baseline" is that interpreter after importing
mynaemu, before any card is loaded. The one card runs a flow that signs with all five private
keys (so each is parsed) and verifies the four PINs; each of the 100 cards (copies of one card
directory) is loaded and exercised with select + read + VERIFY + sign. Target: < 200 MB for 100.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mynaemu.testing import AIDS as AID  # noqa: E402
from mynaemu.testing import TEST_SECRETS as SECRETS  # noqa: E402

TARGET_MB = 200
OK = b"\x90\x00"
DIGEST_INFO = bytes.fromhex("3031300D060960864801650304020105000420") + bytes(range(32))


def rss_mb() -> float:
    """This process's resident set size in MB, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _apdu(hexstr: str, data: bytes = b"", le: int | None = None) -> bytes:
    head = bytes.fromhex(hexstr)
    body = bytes((len(data),)) + data if data else b""
    return head + body + (bytes((le & 0xFF,)) if le is not None else b"")


def _run(card, steps: list[bytes]) -> None:
    for apdu in steps:
        resp = card.transmit(apdu)
        if resp[-2:] != OK:
            raise SystemExit(f"{card.dir.path}: {apdu.hex().upper()} answered {resp.hex().upper()}")


def every_key_flow(card) -> None:
    """Verify the four PINs and use all five private keys (signing / INTERNAL AUTHENTICATE)."""
    sign = _apdu("802A0080", DIGEST_INFO, 0)
    default_sign = _apdu("802A0000", DIGEST_INFO, 0)
    _run(card, [
        _apdu("00A4040C", bytes.fromhex(AID["jpki"])),
        _apdu("00A4020C", bytes.fromhex("000A")), _apdu("00B00000", le=0),
        _apdu("00A4020C", bytes.fromhex("0018")), _apdu("00200080", SECRETS["auth"].encode()),
        _apdu("00A4020C", bytes.fromhex("0017")), sign,
        _apdu("00A4020C", bytes.fromhex("001B")), _apdu("00200080", SECRETS["sign"].encode()),
        _apdu("00A4020C", bytes.fromhex("001A")), sign,
        _apdu("00A4040C", bytes.fromhex(AID["text"])),
        _apdu("00A4020C", bytes.fromhex("0011")), _apdu("00200080", SECRETS["text"].encode()), default_sign,
        _apdu("00A4040C", bytes.fromhex(AID["visual"])), default_sign,
        _apdu("00A4040C", bytes.fromhex(AID["common"])), _apdu("00880099", bytes(range(16)), 0),
        _apdu("00A4040C", bytes.fromhex(AID["juki"])),
        _apdu("00A4020C", bytes.fromhex("001C")), _apdu("00200080", SECRETS["juki"].encode()),
    ])  # fmt: skip


def light_flow(card) -> None:
    """Select + read + VERIFY + sign with the auth key."""
    _run(card, [
        _apdu("00A4040C", bytes.fromhex(AID["jpki"])),
        _apdu("00A4020C", bytes.fromhex("000A")), _apdu("00B00000", le=0),
        _apdu("00A4020C", bytes.fromhex("0018")), _apdu("00200080", SECRETS["auth"].encode()),
        _apdu("802A0097", DIGEST_INFO, 0),
    ])  # fmt: skip


def measure(dirs: list[str], flow_name: str) -> dict:
    """Load every card of ``dirs`` in this process, run the flow on each, return RSS figures."""
    sys.path.insert(0, str(ROOT))
    from mynaemu import Card

    gc.collect()
    baseline = rss_mb()
    flow = every_key_flow if flow_name == "every-key" else light_flow
    cards = []
    for d in dirs:
        card = Card.load(d)
        flow(card)
        cards.append(card)
    gc.collect()
    rss = rss_mb()
    return {
        "cards": len(cards),
        "flow": flow_name,
        "baseline_mb": round(baseline, 2),
        "rss_mb": round(rss, 2),
        "per_card_mb": round((rss - baseline) / len(cards), 3),
    }


def _child(dirs: list[Path], flow: str) -> dict:
    cmd = [sys.executable, __file__, "--measure", flow, *map(str, dirs)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout)


def _issue(dest: Path) -> Path:
    os.environ["MYNAEMU_DATA_DIR"] = str(dest.parent / "data")
    from mynaemu.issuance import issue_card

    return issue_card(dest, secrets=dict(SECRETS)).path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--card", type=Path, help="an issued card directory to copy (default: issue one)")
    ap.add_argument("--cards", type=int, default=100, help="how many cards in the many-cards process")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--measure", nargs="+", metavar=("FLOW", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[1:], args.measure[0])))
        return 0
    with tempfile.TemporaryDirectory(prefix="mynaemu-memory-") as tmp:
        work = Path(tmp)
        template = args.card if args.card else _issue(work / "template")
        copies = []
        for i in range(args.cards):
            copies.append(work / f"card{i:03d}")
            shutil.copytree(template, copies[-1])
        one = _child(copies[:1], "every-key")
        many = _child(copies, "light")
    result = {"one_card": one, "many_cards": many, "target_mb": TARGET_MB, "met": many["rss_mb"] < TARGET_MB}
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"1 card (every key used):  {one['rss_mb']:.1f} MB RSS (baseline {one['baseline_mb']:.1f} MB, "
            f"card {one['rss_mb'] - one['baseline_mb']:.1f} MB)"
        )
        print(
            f"{many['cards']} cards (select+read+sign): {many['rss_mb']:.1f} MB RSS (baseline "
            f"{many['baseline_mb']:.1f} MB, {many['per_card_mb']:.2f} MB/card); "
            f"target < {TARGET_MB} MB: {'met' if result['met'] else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
