"""Issuing cards: a test card in-process and ``mynaemu issue`` as a whole command, beside one RSA keygen.

    python -m pytest benchmarks/test_bench_issue.py --benchmark-enable -s

Targets (issue 10): a test card (``mynaemu.testing.issue_test_card``) in <= 50 ms median, and the
``mynaemu issue`` command, interpreter start included, in <= 0.5 s. Both take their keys from a
warm key pool (filled untimed first) and the authority from the per-process cache; the floor is
one RSA-2048 key generation, timed interleaved in the same loop (one of each in turn), so the
ratio (keygen median / operation median) holds on any machine. A card used to cost about six
keygens plus the authority's validation: a ratio of ~0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from interleave import paired_medians

from mynaemu.keypool import KeyPool, default_pool_dir
from mynaemu.pki import generate_rsa_key
from mynaemu.testing import issue_test_card

ROOT = Path(__file__).resolve().parent.parent
CARD_ROUNDS = int(os.environ.get("MYNAEMU_BENCH_ISSUE_ROUNDS", "20"))
COMMAND_ROUNDS = int(os.environ.get("MYNAEMU_BENCH_COMMAND_ROUNDS", "8"))
KEYS_PER_CARD = 6
ISSUE_ARGS = ("--auth-pin", "1234", "--sign-pin", "ABC123", "--text-pin", "5678", "--juki-pin", "2468")


interleaved = paired_medians  # one call of each in turn (a process, a keygen: too slow to batch)


def warm_pool(cards: int) -> None:
    """Keys for ``cards`` cards in the pool, generated now (untimed)."""
    KeyPool(default_pool_dir()).fill(KeyPool(default_pool_dir()).count() + cards * KEYS_PER_CARD)


class Counter:
    """Fresh card directories under one root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def next(self) -> Path:
        self.n += 1
        return self.root / f"card{self.n}"


@pytest.mark.benchmark(group="issue")
def test_issue_test_card(benchmark, tmp_path: Path) -> None:
    """``issue_test_card``: keys from the pool, certificates from the cached authority, five fsynced files."""
    dirs = Counter(tmp_path)
    issue_test_card(dirs.next())  # the authority, created or loaded once for the process
    rounds = 1 if benchmark.disabled else CARD_ROUNDS
    warm_pool(rounds * (1 if benchmark.disabled else 2))
    issued = benchmark.pedantic(lambda: issue_test_card(dirs.next()), rounds=rounds, iterations=1)
    assert (issued.path / "card.json").exists() and issued.secrets["auth"] == "1234"
    if not benchmark.disabled:
        report_beside_keygen(benchmark, "test card", lambda: issue_test_card(dirs.next()), rounds)


@pytest.mark.benchmark(group="issue")
def test_issue_command(benchmark, tmp_path: Path) -> None:
    """``mynaemu issue CARD_DIR`` as a whole process (interpreter start, imports, issuance)."""
    dirs = Counter(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def issue() -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "mynaemu", "issue", str(dirs.next()), *ISSUE_ARGS],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr

    issue()  # the authority exists afterwards, as in any installation after its first card
    rounds = 1 if benchmark.disabled else COMMAND_ROUNDS
    warm_pool(rounds * (1 if benchmark.disabled else 2))
    benchmark.pedantic(issue, rounds=rounds, iterations=1)
    assert (dirs.root / f"card{dirs.n}" / "card.json").exists()
    if not benchmark.disabled:
        report_beside_keygen(benchmark, "mynaemu issue", issue, rounds)


def report_beside_keygen(benchmark, label: str, op, rounds: int) -> None:
    """Time ``op`` and one RSA-2048 keygen in turn; the ratio (keygen / op) goes to extra_info."""
    took, keygen = interleaved(op, generate_rsa_key, rounds)
    benchmark.extra_info.update(
        median_ms=round(took * 1000, 2),
        keygen_median_ms=round(keygen * 1000, 2),
        ratio_to_floor_interleaved=round(keygen / took, 3),
    )
    print(f"\n{label}: {took * 1000:.1f} ms median; one RSA-2048 keygen {keygen * 1000:.1f} ms "
          f"(interleaved, {rounds} rounds): ratio {keygen / took:.3f}")


@pytest.mark.benchmark(group="issue")
def test_floor_rsa_keygen(benchmark) -> None:
    """One RSA-2048 key generation (e = 65537): a card needs six without the pool."""
    rounds = 1 if benchmark.disabled else CARD_ROUNDS
    key = benchmark.pedantic(generate_rsa_key, rounds=rounds, iterations=1)
    assert key.key_size == 2048
