"""Scale: 1,000 cards loaded in one process (RSS, file descriptors, APDU/s) and both cores busy.

    MYNAEMU_BENCH_TIMED=1 python -m pytest benchmarks/test_bench_scale.py -s

* Many cards: copies of one card, all loaded; RSS and open file descriptors before and after,
  in a fresh process that holds the cards and nothing else (a loaded card holds no descriptor:
  its writer claim names the process's one lease, see ``mynaemu/state.py``; the test asserts
  it). Then, loaded here, SELECT EF + READ BINARY 256 sent to the
  cards in turn against the same pair on one card, interleaved: ratio = one card's time / the
  many cards' time (what a working set of 1,000 cards costs in caches).
* Both cores: one worker process with a card of its own against as many workers as the machine
  has cores, each sending SELECT EF + READ BINARY for a fixed time; ratio = aggregate APDU/s /
  one worker's (2.0 is perfect on two cores). Reported, no target.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import shutil
import statistics
import time
from pathlib import Path

from interleave import bind, interleave, record, result_of, timed

OK = b"\x90\x00"
SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
SELECT_000A = bytes.fromhex("00A4020C02000A")
READ_256 = bytes.fromhex("00B0000000")
CARDS = int(os.environ.get("MYNAEMU_BENCH_CARDS", "1000"))
WORKER_SECONDS = 1.0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def select_and_read(card) -> bytes:
    card.transmit(SELECT_000A)
    return card.transmit(READ_256)


def _load_all(dirs: list[str], out) -> None:
    """In a fresh process: load every card, select JPKI on each; report RSS, descriptors, load time."""
    from mynaemu import Card

    rss0, fds0, start = rss_mb(), open_fds(), time.perf_counter()
    cards = [Card.load(d) for d in dirs]
    load_s = time.perf_counter() - start
    for card in cards:
        assert card.transmit(SELECT_JPKI) == OK
    out.put({"rss1": rss_mb(), "rss_before": rss0, "fds0": fds0, "fds1": open_fds(), "load_s": load_s})
    for card in cards:
        card.close()


def loaded_in_a_fresh_process(dirs: list[Path]) -> dict:
    """RSS and descriptors of a process that holds ``dirs`` loaded and nothing else (no pytest, no other benchmark)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_load_all, args=([str(d) for d in dirs], out))
    proc.start()
    figures = out.get(timeout=300)
    proc.join(30)
    return figures


def test_many_cards_loaded(bench_card_dir: Path, tmp_path: Path) -> None:
    from mynaemu import Card

    n = CARDS if timed() else 5
    dirs = []
    for i in range(n):
        dirs.append(tmp_path / f"card{i:04d}")
        shutil.copytree(bench_card_dir, dirs[-1])
    # Memory and descriptors from a process of their own: this one carries pytest and every
    # benchmark run before (tens of MB that are not the cards').
    fresh = loaded_in_a_fresh_process(dirs)
    rss0, rss1, fds0, fds1, load_s = fresh["rss_before"], fresh["rss1"], fresh["fds0"], fresh["fds1"], fresh["load_s"]
    assert fds1 - fds0 <= 2, (fds0, fds1)  # the process's lease (and a log file at most), never one per card
    fds_here = open_fds()
    cards = [Card.load(d) for d in dirs]
    for card in cards:
        assert card.transmit(SELECT_JPKI) == OK
    assert open_fds() - fds_here <= 2
    expected = cards[0].dir.content["jpki.auth_cert"][:256] + OK
    assert select_and_read(cards[-1]) == expected
    rotation = itertools.cycle(cards)

    def next_card() -> bytes:
        return select_and_read(next(rotation))

    result = interleave(f"{n} cards: SELECT EF + READ 256 round robin", next_card, bind(select_and_read, cards[0]),
                        floor_name="the same on one card", cards=n, rss_mb=round(rss1, 1),
                        rss_per_card_kb=round((rss1 - rss0) * 1024 / n, 1), fds=fds1, fds_per_card=round((fds1 - fds0) / n, 2),
                        load_ms_per_card=round(load_s * 1000 / n, 2))  # fmt: skip
    if timed():
        print(
            f"\n{n} cards: RSS {rss1:.0f} MB (+{(rss1 - rss0) * 1024 / n:.0f} KB/card), {fds1} fds "
            f"(+{(fds1 - fds0) / n:.2f}/card), load {load_s * 1000 / n:.1f} ms/card; "
            f"APDU pair {result.op_ns / 1000:.2f} us vs one card {result.floor_ns / 1000:.2f} us: ratio {result.ratio:.3f}"
        )
    for card in cards:
        card.close()


def _worker(card_dir: str, seconds: float, start_at: float, out) -> None:
    from mynaemu import Card

    card = Card.load(card_dir)
    card.transmit(SELECT_JPKI)
    while time.time() < start_at:
        time.sleep(0.001)
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            card.transmit(SELECT_000A)
            card.transmit(READ_256)
        count += 200
    out.put(count / seconds)


def throughput(dirs: list[Path], seconds: float) -> float:
    """Aggregate APDU/s of one worker process per card directory, all sending at once."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 1.0  # every worker imported and loaded before the clock starts
    procs = [ctx.Process(target=_worker, args=(str(d), seconds, start_at, out)) for d in dirs]
    for p in procs:
        p.start()
    rates = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    return sum(rates)


def test_workers_on_every_core(bench_card_dir: Path, tmp_path: Path) -> None:
    workers = max(2, os.cpu_count() or 1)
    dirs = []
    for i in range(workers):
        dirs.append(tmp_path / f"worker{i}")
        shutil.copytree(bench_card_dir, dirs[-1])
    seconds = WORKER_SECONDS if timed() else 0.05
    rounds = 3 if timed() else 1
    one, many = [], []
    for r in range(rounds):
        for which in ("one", "many") if r % 2 == 0 else ("many", "one"):
            if which == "one":
                one.append(throughput(dirs[:1], seconds))
            else:
                many.append(throughput(dirs, seconds))
    # ns per APDU of the aggregate against one worker's: ratio = aggregate / one worker
    result = result_of(f"{workers} worker processes, aggregate APDU/s", [1e9 / x for x in many], [1e9 / x for x in one],
                       floor_name="one worker", workers=workers, aggregate_per_s=round(statistics.median(many)),
                       one_worker_per_s=round(statistics.median(one)))  # fmt: skip
    if not timed():
        return
    record(result)
    print(
        f"\n{workers} workers: {statistics.median(many):,.0f} APDU/s aggregate, one worker {statistics.median(one):,.0f} "
        f"APDU/s: {result.ratio:.2f}x"
    )
