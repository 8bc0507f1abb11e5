"""Interleaved timing: an operation and its floor measured in the same loop, round by round.

pytest-benchmark times each function in a run of its own and adds 100-180 ns of its own to every
call; on a loaded machine two runs seconds apart see different machines. Here every round times
one sample of each contestant in turn (A B, then B A, so neither always goes first), each sample
being ``batch`` calls in one tight loop, and the ratio is taken per round (floor time / operation
time), so a burst of load hits both sides of the ratio alike. Reported: the median of the
per-round ratios, its quartiles and extremes, the median ns per call of each side, and the
harness's own cost per call (the same loop around a call that does nothing), which both sides pay.

Quick mode (the normal test run): unless ``MYNAEMU_BENCH_TIMED=1`` (set by ``benchmarks/report``),
every contestant runs once and nothing is judged. Results of a timed run are collected in
:data:`RESULTS` and written as JSON to ``MYNAEMU_BENCH_RESULTS`` when the pytest session ends.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "RESULTS_ENV", "TIMED_ENV", "Result", "interleave", "interleave_many", "record", "timed"]

TIMED_ENV = "MYNAEMU_BENCH_TIMED"
RESULTS_ENV = "MYNAEMU_BENCH_RESULTS"
SAMPLE_NS = 2_000_000  # one sample of the slower side lasts about this long (batch is sized for it)
DEFAULT_ROUNDS = int(os.environ.get("MYNAEMU_BENCH_ROUNDS", "150"))

RESULTS: dict[str, Result] = {}


def timed() -> bool:
    """True when benchmarks time for real (``MYNAEMU_BENCH_TIMED=1``); else quick mode."""
    return os.environ.get(TIMED_ENV) == "1"


@dataclass
class Result:
    """One interleaved comparison: ``ratio`` = floor time / operation time (median of rounds)."""

    name: str
    op_ns: float
    floor_ns: float
    ratio: float
    q1: float
    q3: float
    lo: float
    hi: float
    rounds: int
    batch: int
    overhead_ns: float | None = None
    floor: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        for key in ("op_ns", "floor_ns", "overhead_ns"):
            if doc[key] is not None:
                doc[key] = round(doc[key], 1)
        for key in ("ratio", "q1", "q3", "lo", "hi"):
            doc[key] = round(doc[key], 4)
        return doc


def _sample(fn: Callable[[], object], batch: int) -> int:
    """ns for ``batch`` calls of ``fn`` in one tight loop."""
    rep = itertools.repeat(None, batch)
    clock = time.perf_counter_ns
    start = clock()
    for _ in rep:
        fn()
    return clock() - start


def _nothing() -> None:
    return None


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def interleave_many(
    contestants: Mapping[str, Callable[[], object]],
    *,
    rounds: int | None = None,
    batch: int | None = None,
) -> tuple[dict[str, list[float]], int, float | None]:
    """ns per call of every contestant, one sample each per round (order rotating every round).

    Returns (name → per-round ns per call, the batch used, the harness's ns per call). ``batch``
    defaults to what makes one sample of the slowest contestant last about 2 ms. In quick mode
    each contestant runs once.
    """
    names = list(contestants)
    if not timed():
        for name in names:
            contestants[name]()
        return {name: [0.0] for name in names}, 1, None
    rounds = rounds or DEFAULT_ROUNDS
    if batch is None:
        for fn in contestants.values():  # warm up: caches, lazy parsing, branch predictors
            _sample(fn, 3)
        slowest = max(_sample(fn, 5) / 5 for fn in contestants.values())
        batch = max(1, int(SAMPLE_NS / max(slowest, 1.0)))
    per_round: dict[str, list[float]] = {name: [] for name in names}
    overhead: list[float] = []
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            per_round[name].append(_sample(contestants[name], batch) / batch)
        if batch > 1:
            overhead.append(_sample(_nothing, batch) / batch)
    return per_round, batch, (statistics.median(overhead) if overhead else None)


def interleave(
    name: str,
    op: Callable[[], object],
    floor: Callable[[], object],
    *,
    floor_name: str = "",
    rounds: int | None = None,
    batch: int | None = None,
    **extra: Any,
) -> Result:
    """Time ``op`` against ``floor`` interleaved; records and returns the :class:`Result`.

    Give both sides as zero-argument callables built the same way (e.g. ``functools.partial``)
    so they pay the same call overhead.
    """
    per_round, used_batch, overhead = interleave_many({"op": op, "floor": floor}, rounds=rounds, batch=batch)
    return result_of(
        name, per_round["op"], per_round["floor"], floor_name=floor_name, batch=used_batch, overhead_ns=overhead, **extra
    )


def result_of(
    name: str,
    op: list[float],
    floor: list[float],
    *,
    floor_name: str = "",
    batch: int = 1,
    overhead_ns: float | None = None,
    **extra: Any,
) -> Result:
    """A :class:`Result` from per-round ns of each side (same rounds); recorded when timed."""
    ratios = [f / o if o else 0.0 for o, f in zip(op, floor, strict=True)]
    q1, med, q3 = _quartiles(ratios)
    result = Result(
        name,
        statistics.median(op),
        statistics.median(floor),
        med,
        q1,
        q3,
        min(ratios),
        max(ratios),
        len(ratios),
        batch,
        overhead_ns,
        floor_name,
        dict(extra),
    )
    if timed():
        record(result)
    return result


def record(result: Result) -> None:
    """Keep ``result`` for this session's results file."""
    RESULTS[result.name] = result


def write_results(path: str | Path | None = None) -> None:
    """Write the collected results as JSON to ``path`` (default ``$MYNAEMU_BENCH_RESULTS``)."""
    target = path or os.environ.get(RESULTS_ENV)
    if not target or not RESULTS:
        return
    doc = {name: r.as_json() for name, r in sorted(RESULTS.items())}
    Path(target).write_text(json.dumps(doc, indent=1))


bind = functools.partial  # the one way both sides get their argument: identical overhead


def paired_medians(op: Callable[[], object], floor: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median seconds of one call of ``op`` and of ``floor``, timed in turn ``rounds`` times.

    For operations too slow to batch (an fsync, a key generation, a whole process).
    """
    ops: list[int] = []
    floors: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        start = clock()
        op()
        ops.append(clock() - start)
        start = clock()
        floor()
        floors.append(clock() - start)
    return statistics.median(ops) / 1e9, statistics.median(floors) / 1e9
