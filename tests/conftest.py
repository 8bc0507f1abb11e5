"""Shared fixtures: one issued card per test session, copied fresh for every test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mynaemu.testing import AIDS as AID
from mynaemu.testing import TEST_MY_NUMBER as MY_NUMBER
from mynaemu.testing import TEST_SECRETS as SECRETS

__all__ = ["AID", "MY_NUMBER", "SECRETS"]


@pytest.fixture(scope="session", autouse=True)
def _data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the emulated authority and demo card of the tests out of the user's home."""
    from mynaemu.keypool import KeyPool, default_pool_dir

    path = tmp_path_factory.mktemp("mynaemu-data")
    old = os.environ.get("MYNAEMU_DATA_DIR")
    os.environ["MYNAEMU_DATA_DIR"] = str(path)
    # The session's key pool starts empty: fill it while the first tests run, so later cards are fast.
    KeyPool(default_pool_dir()).refill_in_background()
    yield path
    if old is None:
        os.environ.pop("MYNAEMU_DATA_DIR", None)
    else:
        os.environ["MYNAEMU_DATA_DIR"] = old


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory):
    """mynaemu built as a wheel and installed into a fresh venv (``tests.wheelkit``), once per session."""
    from tests.wheelkit import build_wheel, install_wheel

    work = tmp_path_factory.mktemp("wheel")
    return install_wheel(build_wheel(work), work)


@pytest.fixture(scope="session")
def issued_template(tmp_path_factory: pytest.TempPathFactory, _data_dir: Path):
    """One card issued for the whole session (RSA key generation is the slow part)."""
    from mynaemu.testing import issue_test_card

    return issue_test_card(tmp_path_factory.mktemp("template") / "card")


@pytest.fixture
def card_dir(issued_template, tmp_path: Path) -> Path:
    """A fresh copy of the session's card, with full counters."""
    dest = tmp_path / "card"
    shutil.copytree(issued_template.path, dest)
    return dest


@pytest.fixture
def card(card_dir: Path):
    """The fresh card, loaded and powered on."""
    from mynaemu import Card

    c = Card.load(card_dir)
    c.power_on()
    return c


def tx(card, hexstr: str) -> bytes:
    """Send an APDU given as hex (spaces allowed)."""
    return card.transmit(bytes.fromhex(hexstr.replace(" ", "")))


def select_ap(card, name: str) -> bytes:
    aid = AID[name]
    return tx(card, f"00A4040C{len(aid) // 2:02X}{aid}")


def select_ef(card, fid: str) -> bytes:
    return tx(card, f"00A4020C02{fid}")


def verify(card, value: str | bytes, p2: int = 0x80) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return card.transmit(bytes((0x00, 0x20, 0x00, p2, len(data))) + data)


def query(card, p2: int = 0x80) -> bytes:
    return card.transmit(bytes((0x00, 0x20, 0x00, p2)))


@pytest.fixture
def private_authority(_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The session's emulated CAs (same keys: the session card's certificates chain to them) with a
    status database of this test's own: holds and revocations here touch no other test."""
    source = _data_dir / "authority"
    data = tmp_path / "data"
    target = data / "authority"
    target.mkdir(parents=True, mode=0o700)
    data.chmod(0o700)
    for path in source.iterdir():
        if path.suffix == ".pem" or path.name in ("authority.json", "issued.jsonl"):
            (target / path.name).write_bytes(path.read_bytes())
            (target / path.name).chmod(0o600)
    monkeypatch.setenv("MYNAEMU_DATA_DIR", str(data))
    return target
