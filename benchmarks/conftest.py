"""Benchmark fixtures: the test suite's card (one issued per session, a fresh copy per benchmark).

Run the benchmarks with ``python -m pytest benchmarks --benchmark-enable`` (without the flag,
pyproject's ``--benchmark-disable`` runs each one once: the quick mode of the normal test run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The test suite's fixtures, shared: the private data directory (autouse) and the issued card.
from tests.conftest import _data_dir, card, card_dir, issued_template

__all__ = ["_data_dir", "card", "card_dir", "issued_template"]


@pytest.fixture(scope="session")
def bench_issued(issued_template):
    """The session's issued card (an ``IssuedCard``)."""
    return issued_template


@pytest.fixture
def bench_card_dir(card_dir: Path) -> Path:
    """A fresh copy of the session's card (full counters) on the tmp filesystem."""
    return card_dir


@pytest.fixture
def bench_card(card):
    """The fresh card, loaded and powered on."""
    return card


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the interleaved results of a timed run where ``MYNAEMU_BENCH_RESULTS`` says."""
    import interleave

    interleave.write_results()
