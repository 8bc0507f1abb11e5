"""mynaemu's pytest plugin: emulated My Number cards as fixtures (docs/testing.md).

Loaded by pytest wherever mynaemu is installed (entry point ``pytest11``); ``-p no:mynaemu``
turns it off. Fixtures:

* ``myna_card``: a fresh test card (``mynaemu.testing``: auth PIN 1234, signing password
  ABC123, input-assist PIN 5678, 住基/common PIN 2468), loaded and powered on, in-process.
* ``myna_connection``: a pyscard ``CardConnection`` on ``myna_card``, connected; no pcscd.
  ``myna_connection.slot.remove()`` / ``.insert()`` / ``.power_cycle()`` pull the card.
* ``myna_card_factory(persona=..., pins=..., tries=..., profile=..., variant=...)``: more
  cards, each its own, closed at teardown.
* ``myna_reader``: ``myna_card`` in a real PC/SC reader (a private pcscd with vpcd, in its own
  network and mount namespace for the session); the reader's name, a ``str`` with
  ``remove()``, ``insert()`` and ``power_cycle()``. Needs ``--myna-pcsc`` (or ``myna_pcsc =
  true`` in the ini file) and root; skipped with the reason otherwise (failed instead when
  ``MYNAEMU_REQUIRE_PCSC=1``). With it enabled, every PC/SC client of the test session (pyscard,
  OpenSC run as a subprocess) talks to that private pcscd (``PCSCLITE_CSOCK_NAME``).

The module imports nothing heavy: pytest loads it in every session, cards or not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from reader_bridge import CardLike
    from reader_bridge.inprocess import InProcessConnection
    from reader_bridge.pcscd import PcscdHarness
    from reader_bridge.vpcd import VirtualReaderSet

    from .card import Card
    from .persona import Persona
    from .profile import Profile

__all__ = ["VARIANTS", "MynaReader"]

# The card variants of the default profile (a profile given to the factory may have others).
VARIANTS = ("default", "basic4-long", "reselect-keeps-status", "contactless", "get-data-whole", "trust-ap-key")
READER_SLOT = 0  # vpcd slot 0: "Virtual PCD 00 00"
_PCSC_REASON = pytest.StashKey[str | None]()
_NOT_ENABLED = "myna_reader needs a PC/SC reader: run pytest with --myna-pcsc (or set myna_pcsc = true in the ini file)"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mynaemu", "mynaemu (emulated My Number cards)")
    group.addoption(
        "--myna-pcsc",
        action="store_true",
        default=False,
        help="let myna_reader serve its card in a PC/SC reader (a private pcscd with vpcd; needs root)",
    )
    parser.addini("myna_pcsc", type="bool", default=False, help="as --myna-pcsc")


def _pcsc_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("myna_pcsc") or config.getini("myna_pcsc"))


def pytest_configure(config: pytest.Config) -> None:
    if not _pcsc_enabled(config):
        return
    from reader_bridge.netns import namespaces_unavailable_reason
    from reader_bridge.pcscd import pcsc_unavailable_reason, use_private_socket

    reason = pcsc_unavailable_reason() or namespaces_unavailable_reason()
    if reason is None:
        try:
            # libpcsclite reads PCSCLITE_CSOCK_NAME once per process: set it before any test
            # makes its first PC/SC call, so that every client reaches the private pcscd.
            use_private_socket()
        except RuntimeError as exc:
            reason = str(exc)
    config.stash[_PCSC_REASON] = reason


# -- in-process cards -----------------------------------------------------------------------------
def _persona(persona: Persona | Mapping[str, Any] | None) -> Persona:
    from .testing import known_persona

    if persona is None:
        return known_persona()
    if isinstance(persona, Mapping):
        return known_persona(**persona)
    return persona


@pytest.fixture
def myna_card_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Card]]:
    """Issue, load and power on test cards: ``myna_card_factory(persona=..., pins=..., tries=..., profile=..., variant=...)``.

    ``persona``: a ``Persona``, or changes to the test holder (``{"birth": date(2015, 4, 1)}``);
    ``pins``: secrets that differ from ``TEST_SECRETS`` (``{"auth": "9999"}``); ``tries``:
    initial tries left per key (``{"auth": 1}``); ``profile``: a ``Profile`` or a TOML path;
    ``variant``: a card variant of the profile (``VARIANTS`` for the default one); ``published_keys=True``: the fixed
    published test keys instead of fresh ones. Every card is closed at teardown.
    """
    from .card import Card
    from .testing import issue_test_card

    made: list[Card] = []

    def make(
        *,
        persona: Persona | Mapping[str, Any] | None = None,
        pins: Mapping[str, str] | None = None,
        tries: Mapping[str, int] | None = None,
        profile: Profile | Path | str | None = None,
        variant: str = "default",
        published_keys: bool = False,
    ) -> Card:
        directory = tmp_path_factory.mktemp("myna-card", numbered=True) / "card"
        issue_test_card(
            directory,
            persona=_persona(persona),
            secrets=dict(pins or {}),
            tries=dict(tries or {}),
            profile=profile,
            published_keys=published_keys,
            variant=variant,
        )
        card = Card.load(directory)
        made.append(card)
        card.power_on()
        return card

    yield make
    for card in made:
        card.close()


@pytest.fixture
def myna_card(myna_card_factory: Callable[..., Card]) -> Card:
    """A fresh test card (TEST_SECRETS, the test holder), loaded and powered on."""
    return myna_card_factory()


@pytest.fixture
def myna_connection(myna_card: Card) -> Iterator[InProcessConnection]:
    """A connected pyscard ``CardConnection`` on ``myna_card``, in-process (no pcscd).

    Its ``slot`` (an ``InProcessReader``) has ``remove()``, ``insert()`` and ``power_cycle()``.
    """
    from reader_bridge.inprocess import InProcessConnection

    connection = InProcessConnection(myna_card)
    connection.connect()
    yield connection
    with contextlib.suppress(Exception):
        connection.disconnect()


# -- a PC/SC reader -------------------------------------------------------------------------------
def _unavailable(message: str) -> None:
    if os.environ.get("MYNAEMU_REQUIRE_PCSC") == "1":
        pytest.fail(f"MYNAEMU_REQUIRE_PCSC=1 but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def myna_pcscd(pytestconfig: pytest.Config) -> Iterator[PcscdHarness]:
    """The session's private pcscd with vpcd (own network and mount namespace), for ``myna_reader``."""
    if not _pcsc_enabled(pytestconfig):
        pytest.skip(_NOT_ENABLED)
    reason = pytestconfig.stash.get(_PCSC_REASON, None)
    if reason is not None:
        _unavailable(f"myna_reader: no private PC/SC stack here: {reason}")
    from reader_bridge.pcscd import PcscdHarness

    harness = PcscdHarness(private_socket=True)
    try:
        harness.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        harness.close()
        _unavailable(f"myna_reader: pcscd did not start: {exc}")
    yield harness
    harness.close()


class MynaReader(str):
    """The PC/SC name of the reader that holds the test's card, with ways to pull the card.

    ``remove()`` takes the card out and returns once PC/SC shows the reader empty; ``insert()``
    puts it (or another card) back and returns once PC/SC shows it present; ``power_cycle()``
    is both (a cold start: open connections get ``SCARD_W_REMOVED_CARD`` and must reconnect).
    """

    card: CardLike
    slot: int
    readers: VirtualReaderSet

    def __new__(cls, name: str, card: CardLike, slot: int, readers: VirtualReaderSet) -> MynaReader:
        self = super().__new__(cls, name)
        self.card, self.slot, self.readers = card, slot, readers
        return self

    @property
    def present(self) -> bool:
        """Whether the card is in the reader."""
        return self.slot in self.readers

    def remove(self, timeout: float = 10.0) -> None:
        from reader_bridge.pcscd import wait_for_card

        if self.present:
            self.readers.remove(self.slot)
        wait_for_card(str(self), present=False, timeout=timeout)

    def insert(self, card: CardLike | None = None, timeout: float = 10.0) -> None:
        from reader_bridge.pcscd import wait_for_card

        if card is not None:
            self.card = card
        self.readers.insert(self.slot, self.card)
        wait_for_card(str(self), present=True, timeout=timeout)

    def power_cycle(self, timeout: float = 10.0) -> None:
        self.remove(timeout)
        self.insert(timeout=timeout)


@pytest.fixture
def myna_reader(myna_pcscd: PcscdHarness, myna_card: Card) -> Iterator[MynaReader]:
    """``myna_card`` in the PC/SC reader "Virtual PCD 00 00" of the session's private pcscd; its name."""
    from reader_bridge.pcscd import find_vpcd_readers, reader_name
    from reader_bridge.vpcd import VirtualReaderSet

    readers = VirtualReaderSet(netns=myna_pcscd.netns)
    reader = MynaReader(reader_name(READER_SLOT, find_vpcd_readers()), myna_card, READER_SLOT, readers)
    reader.insert()
    yield reader
    reader.remove()
