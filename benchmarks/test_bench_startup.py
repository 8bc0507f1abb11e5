"""Start-up: ``mynaemu --help`` and ``mynaemu serve`` to card present, beside a bare ``python -c pass``.

    MYNAEMU_BENCH_TIMED=1 python -m pytest benchmarks/test_bench_startup.py -s

Every round runs the three in turn (order rotating): a bare interpreter (``python -c pass``, the
floor), ``mynaemu --help`` (the console script), and ``mynaemu -v serve CARD --slot 0`` against
this module's private pcscd, timed to two points: its link serving the card (serve's own
start-up: interpreter, imports, pcscd found, socket made, card loaded; from its ``-v`` log) and
the reader showing the card PRESENT to a PC/SC client. The second adds pcscd's presence poll,
every 400 ms, which serve overlaps with its load by connecting first (reader_bridge.serve); each
round starts at its own phase of that poll (spread evenly over the cycle), as users do.

The issue's targets are 150 ms for ``--help`` and 300 ms for serve to card present. As ratios from
one run: bare start-up / the command's, against REF_BARE_MS / target (REF_BARE_MS = this machine's
bare start-up when quiet), so a loaded machine slows both sides alike. That holds for CPU-bound
start-up only; card present adds pcscd's presence poll (0-400 ms by phase, a wait that a load does
not stretch), so its row is judged on the same ratio but must be read with its time (a loaded
machine flatters it).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_bench_pcsc as pcsc_bench
from interleave import result_of, timed

from reader_bridge.pcscd import find_vpcd_readers, reader_name, wait_for_card

pcscd_harness = pcsc_bench.pcscd_harness

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("MYNAEMU_BENCH_STARTUP_ROUNDS", "24"))
REF_BARE_MS = 15.0  # measured: median of 30 bare starts on the 2-core machine when quiet
HELP_TARGET_MS = 150.0
SERVE_TARGET_MS = 300.0
MYNAEMU = Path(sys.executable).with_name("mynaemu")
PCSCD_POLL_S = 0.4  # pcsc-lite's PCSCLITE_STATUS_POLL_RATE for drivers without an event thread (vpcd)


def command(*args: str) -> list[str]:
    """The console script when installed beside this interpreter, else ``python -m mynaemu``."""
    return [str(MYNAEMU), *args] if MYNAEMU.exists() else [sys.executable, "-m", "mynaemu", *args]


# As installed: pip compiles a wheel's modules at install, so a user's start-up reads bytecode.
# A PYTHONDONTWRITEBYTECODE=1 in this environment (some sandboxes set it) would make every start
# compile the project's sources instead (~25 ms for the CLI alone); the first round warms the cache.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_ms(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=ROOT, env=ENV)
    return (time.perf_counter() - start) * 1000


def serve_ms(card: Path, reader: str, phase: float) -> tuple[float, float]:
    """(ms to the link connected, ms to the card PRESENT) of one ``mynaemu -v serve``; stopped after.

    Started ``phase`` (0-1) of pcscd's 400 ms presence poll after the previous round's card was
    seen gone: that sighting is on pcscd's poll, so starting at once would always start at the
    same point of the cycle, which a user starting serve does not.
    """
    time.sleep(phase * PCSCD_POLL_S)  # a deliberate offset of the measurement, not a wait for a state
    start = time.perf_counter()
    proc = subprocess.Popen(command("-v", "serve", str(card), "--slot", "0"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "connected to vpcd at" in line:  # the link serving the loaded card (not the early connect)
                break
        else:
            raise AssertionError(f"serve exited {proc.wait()} before its link connected")
        link = (time.perf_counter() - start) * 1000
        wait_for_card(reader, present=True, timeout=10)
        present = (time.perf_counter() - start) * 1000
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
    wait_for_card(reader, present=False, timeout=10)
    return link, present


@pytest.mark.pcsc
def test_startup_against_bare_python(pcscd_harness, bench_card_dir: Path, tmp_path: Path) -> None:
    card = tmp_path / "served-card"
    shutil.copytree(bench_card_dir, card)
    reader = reader_name(0, find_vpcd_readers())
    bare, help_, link, present = [], [], [], []
    rounds = ROUNDS if timed() else 1
    if timed():  # the warm-up: bytecode written, the page cache warm; not counted
        run_ms(command("--help"))
        serve_ms(card, reader, 0.0)
    # Phases spread evenly over the poll cycle and shuffled: every run samples the whole cycle.
    phases = [(i + 0.5) / rounds for i in range(rounds)]
    random.Random(ROUNDS).shuffle(phases)
    for r in range(rounds):
        steps = ["bare", "help", "serve"]
        steps = steps[r % 3 :] + steps[: r % 3]
        for step in steps:
            if step == "bare":
                bare.append(run_ms([sys.executable, "-c", "pass"]))
            elif step == "help":
                help_.append(run_ms(command("--help")))
            else:
                a, b = serve_ms(card, reader, phases[r])
                link.append(a)
                present.append(b)
    # Card present is judged like the others, but read it with its time: pcscd's presence poll is
    # a wait that does not grow with the machine's load, so on a loaded machine its ratio flatters.
    for label, values, target in (("start-up: mynaemu --help", help_, HELP_TARGET_MS),
                                  ("start-up: serve to card loaded and linked", link, SERVE_TARGET_MS),
                                  ("start-up: serve to card present (+ pcscd poll)", present, SERVE_TARGET_MS)):  # fmt: skip
        targets = {"target_ratio": round(REF_BARE_MS / target, 4), "target_ms": target} if target else {}
        result = result_of(label, [v * 1e6 for v in values], [v * 1e6 for v in bare], floor_name="python -c pass",
                           **targets)  # fmt: skip
        if timed():
            judged = f", target ratio {REF_BARE_MS / target:.3f} (= {target:.0f} ms)" if target else ""
            print(f"\n{label}: {result.op_ns / 1e6:.0f} ms median (bare python {result.floor_ns / 1e6:.0f} ms), "
                  f"ratio {result.ratio:.3f}{judged}")  # fmt: skip
