"""Shared benchmark fixtures: one card issued per session, copied fresh for every benchmark.

Run the benchmarks with ``python -m pytest benchmarks --benchmark-enable`` (without the flag,
pyproject's ``--benchmark-disable`` runs each one once: the quick mode of the normal test run).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mynaemu.testing import TEST_SECRETS as BENCH_SECRETS

__all__ = ["BENCH_SECRETS"]


@pytest.fixture(scope="session", autouse=True)
def _bench_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the emulated authority out of the user's home (``MYNAEMU_DATA_DIR``)."""
    path = tmp_path_factory.mktemp("mynaemu-bench-data")
    old = os.environ.get("MYNAEMU_DATA_DIR")
    os.environ["MYNAEMU_DATA_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MYNAEMU_DATA_DIR", None)
    else:
        os.environ["MYNAEMU_DATA_DIR"] = old


@pytest.fixture(scope="session")
def bench_issued(tmp_path_factory: pytest.TempPathFactory, _bench_data_dir: Path):
    """One card issued for the session (key generation is the slow part); an ``IssuedCard``."""
    from mynaemu.testing import issue_test_card

    return issue_test_card(tmp_path_factory.mktemp("bench-template") / "card")


@pytest.fixture
def bench_card_dir(bench_issued, tmp_path: Path) -> Path:
    """A fresh copy of the session's card (full counters) on the tmp filesystem."""
    dest = tmp_path / "card"
    shutil.copytree(bench_issued.path, dest)
    return dest


@pytest.fixture
def bench_card(bench_card_dir: Path):
    """The fresh card, loaded and powered on."""
    from mynaemu import Card

    card = Card.load(bench_card_dir)
    card.power_on()
    return card
