"""scripts/soak with several cards and clients: per-client counts, and a starved client fails it."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reader_bridge.netns import namespaces_unavailable_reason
from reader_bridge.pcscd import SOCKET_ENV, pcsc_unavailable_reason

SOAK = Path(__file__).resolve().parents[2] / "scripts" / "soak"


def load_soak():
    loader = importlib.machinery.SourceFileLoader("soak_script", str(SOAK))
    spec = importlib.util.spec_from_loader("soak_script", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_starved_is_below_a_quarter_of_the_fair_share() -> None:
    starved = load_soak().starved
    assert starved([1000, 1000, 1000]) == []
    assert starved([57_975, 15, 0, 7_365]) == [1, 2]  # the run: a quarter of the fair share is 4,085
    assert starved([1000, 260, 1000, 1000]) == [] and starved([1000, 190, 1000, 1000]) == [1]
    assert starved([5]) == []


def soak(*args: str) -> subprocess.CompletedProcess[str]:
    reason = pcsc_unavailable_reason() or namespaces_unavailable_reason()
    if reason is not None:
        if os.environ.get("MYNAEMU_REQUIRE_PCSC") == "1":
            pytest.fail(f"MYNAEMU_REQUIRE_PCSC=1 but {reason}")
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}  # its own private pcscd
    return subprocess.run([sys.executable, str(SOAK), *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.pcsc
def test_soak_fails_when_a_client_is_starved() -> None:
    """Client 1 idles between cycles on purpose: the soak names it STARVED and exits 1."""
    proc = soak("--seconds", "2", "--clients", "3", "--cards", "2", "--starve", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[FAIL] no client starved" in proc.stdout
    lines = {line.split(":")[0].strip(): line for line in proc.stdout.splitlines() if line.startswith("  client ")}
    assert "STARVED" in lines["client 1 (slot 1)"] and "STARVED" not in lines["client 0 (slot 0)"]
    assert "[ok] every answer right" in proc.stdout


@pytest.mark.pcsc
def test_soak_shares_cards_fairly() -> None:
    """Three clients on two cards (two take turns on slot 0): nobody starves, every check passes."""
    proc = soak("--seconds", "2", "--clients", "3", "--cards", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[ok] no client starved" in proc.stdout and "latency µs median" in proc.stdout
