"""The pytest plugin (mynaemu.pytest_plugin), run with pytester on the examples of docs/testing.md."""

from __future__ import annotations

import os
import re
import shutil
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from reader_bridge.netns import namespaces_unavailable_reason
from reader_bridge.pcscd import find_pcscd, pcsc_unavailable_reason

pytest_plugins = ("pytester",)

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
NOT_ENABLED = "myna_reader needs a PC/SC reader: run pytest with --myna-pcsc (or set myna_pcsc = true in the ini file)"


def doc_modules() -> dict[str, str]:
    """The docs' Python blocks by the file name on their first line (``# test_x.py``)."""
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(encoding="utf-8"), flags=re.M | re.S)
    out = {}
    for block in blocks:
        first, _, _ = block.partition("\n")
        assert first.startswith("# test_") and first.endswith(".py"), f"a docs block must start with '# test_NAME.py': {first!r}"
        out[first[2:]] = block
    return out


MODULES = doc_modules()


# Inner sessions without the other plugins of this venv: hypothesis's re-imports itself in every
# in-process run (~0.5 s each); mynaemu's plugin must stand on its own anyway.
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark")


def write_module(pytester: pytest.Pytester, name: str) -> None:
    pytester.makepyfile(**{name.removesuffix(".py"): MODULES[name]})


def require_pcsc() -> None:
    reason = pcsc_unavailable_reason() or namespaces_unavailable_reason()
    if reason is not None:
        if os.environ.get("MYNAEMU_REQUIRE_PCSC") == "1":
            pytest.fail(f"MYNAEMU_REQUIRE_PCSC=1 but {reason}")
        pytest.skip(reason)


def test_docs_hold_every_example() -> None:
    assert sorted(MODULES) == ["test_card.py", "test_connection.py", "test_factory.py", "test_reader.py"]


def test_plugin_is_an_entry_point() -> None:
    (ep,) = [ep for ep in entry_points(group="pytest11") if ep.name == "mynaemu"]
    assert ep.value == "mynaemu.pytest_plugin"


@pytest.mark.parametrize(("module", "passed"), [("test_card.py", 3), ("test_connection.py", 2), ("test_factory.py", 4)])
def test_docs_example_in_process(pytester: pytest.Pytester, module: str, passed: int) -> None:
    write_module(pytester, module)
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(passed=passed)


def test_readme_example(pytester: pytest.Pytester) -> None:
    readme = (DOC.parent.parent / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"^```python\n(.*?)^```$", readme, flags=re.M | re.S) if b.startswith("def test_")]
    pytester.makepyfile(test_readme=block)
    pytester.runpytest(*QUIET).assert_outcomes(passed=1)


def test_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--fixtures", *QUIET)
    out = result.stdout.str()
    for name in ("myna_card", "myna_connection", "myna_card_factory", "myna_reader", "myna_pcscd"):
        assert re.search(rf"^{name}\b", out, flags=re.M), name
    assert "--myna-pcsc" in pytester.runpytest("--help").stdout.str()


def test_factory_cards_are_distinct_and_closed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import json
        import stat

        import pytest

        from mynaemu import Card, StateError

        CARDS = []

        def test_two_cards(myna_card_factory, myna_card):
            other = myna_card_factory()
            CARDS.extend([myna_card, other])
            ids = {c.dir.card_id for c in CARDS}
            assert len(ids) == 2
            keys = {c.dir.keys["jpki.auth"].public_key().public_numbers().n for c in CARDS}
            assert len(keys) == 2
            assert [json.loads((c.dir.path / "card.json").read_text())["kind"] for c in CARDS] == ["test", "test"]
            assert all(stat.S_IMODE(c.dir.path.stat().st_mode) == 0o700 for c in CARDS)
            assert all(c.powered for c in CARDS)
            with pytest.raises(StateError):
                Card.load(other.dir.path)  # held by the fixture's writer

        def test_closed_after_the_test():
            assert [c.closed for c in CARDS] == [True, True]
            for c in CARDS:
                Card.load(c.dir.path).close()

        def test_published_keys(myna_card_factory):
            from mynaemu.testing import published_test_keys

            a, b = myna_card_factory(published_keys=True), myna_card_factory(published_keys=True)
            fixed = published_test_keys().jpki_auth.public_key().public_numbers()
            assert a.dir.keys["jpki.auth"].public_key().public_numbers() == fixed
            assert b.dir.keys["jpki.auth"].public_key().public_numbers() == fixed
            assert a.dir.card_id != b.dir.card_id
            assert a.dir.content["jpki.auth_cert"] != b.dir.content["jpki.auth_cert"]  # own certificates
        """
    )
    pytester.runpytest(*QUIET).assert_outcomes(passed=3)


def test_factory_refuses_bad_options_in_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("options, message", [
            ({"variant": "2016"}, "no variant '2016'; variants: default, basic4-long"),
            ({"tries": {"auth": 4}}, "tries: auth takes an integer from 0 to its limit 3, not 4"),
            ({"tries": {"nope": 1}}, "tries: no key 'nope'"),
            ({"pins": {"auth": "12"}}, "--auth-pin: the JPKI user-authentication PIN must be"),
            ({"pins": {"pin": "1234"}}, "secrets: unknown key name(s) pin; the holder's secrets are auth, sign, text, juki"),
            ({"persona": {"age": 3}}, "known_persona: unknown field(s) age"),
        ])
        def test_refused(myna_card_factory, options, message):
            with pytest.raises((ValueError, TypeError)) as info:
                myna_card_factory(**options)
            assert message in str(info.value) and "\\n" not in str(info.value), str(info.value)
        """
    )
    pytester.runpytest(*QUIET).assert_outcomes(passed=6)


def test_connection_helpers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from smartcard.Exceptions import CardConnectionException

        from reader_bridge.inprocess import SCARD_E_NO_SMARTCARD

        SELECT_JPKI = [0x00, 0xA4, 0x04, 0x0C, 0x0A, 0xD3, 0x92, 0xF0, 0x00, 0x26, 0x01, 0x00, 0x00, 0x00, 0x01]

        def test_power_cycle(myna_connection, myna_card):
            assert myna_connection.transmit(SELECT_JPKI) == ([], 0x90, 0x00)
            assert myna_card.current_ap == "jpki"
            myna_connection.slot.power_cycle()
            with pytest.raises(CardConnectionException):
                myna_connection.transmit(SELECT_JPKI)
            myna_connection.reconnect()
            assert myna_card.powered and myna_card.current_ap is None
            assert myna_connection.transmit(SELECT_JPKI) == ([], 0x90, 0x00)

        def test_empty_reader(myna_connection):
            myna_connection.slot.remove()
            with pytest.raises(CardConnectionException) as info:
                myna_connection.reconnect()
            assert info.value.hresult == SCARD_E_NO_SMARTCARD
            with pytest.raises(ValueError, match="already holds a card"):
                myna_connection.slot.insert()
                myna_connection.slot.insert()
        """
    )
    pytester.runpytest(*QUIET).assert_outcomes(passed=2)


def test_reader_is_skipped_unless_asked_for(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYNAEMU_REQUIRE_PCSC", "1")  # not asked for is a skip even then
    pytester.makepyfile("def test_reader(myna_reader):\n    raise AssertionError('ran')\n")
    result = pytester.runpytest("-rs", *QUIET)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED * {NOT_ENABLED}"])


def test_reader_is_skipped_without_a_pcsc_stack(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYNAEMU_NETNS", "0")  # as without the privileges for namespaces
    monkeypatch.delenv("MYNAEMU_REQUIRE_PCSC", raising=False)
    pytester.makepyfile("def test_reader(myna_reader):\n    raise AssertionError('ran')\n")
    result = pytester.runpytest("-rs", "--myna-pcsc", *QUIET)
    result.assert_outcomes(skipped=1)
    reason = pcsc_unavailable_reason() or "MYNAEMU_NETNS=0 is set"
    result.stdout.fnmatch_lines([f"SKIPPED * myna_reader: no private PC/SC stack here: {reason}"])


def test_reader_fails_without_a_pcsc_stack_when_required(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYNAEMU_NETNS", "0")
    monkeypatch.setenv("MYNAEMU_REQUIRE_PCSC", "1")
    pytester.makeini("[pytest]\nmyna_pcsc = true\n")
    pytester.makepyfile("def test_reader(myna_reader):\n    raise AssertionError('ran')\n")
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*MYNAEMU_REQUIRE_PCSC=1 but myna_reader: no private PC/SC stack here: *"])


def test_reader_is_skipped_without_pyscard(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MYNAEMU_REQUIRE_PCSC", raising=False)
    # A conftest that makes pyscard unimportable, in a subprocess (the import system is per process).
    pytester.makeconftest("import sys\nsys.modules['smartcard'] = None\nsys.modules['smartcard.scard'] = None\n")
    pytester.makepyfile("def test_reader(myna_reader):\n    raise AssertionError('ran')\n")
    result = pytester.runpytest_subprocess("-rs", "--myna-pcsc", *QUIET)
    result.assert_outcomes(skipped=1)
    reason = "pcscd binary not found" if find_pcscd() is None else "pyscard not installed (pip install pyscard)"
    result.stdout.fnmatch_lines([f"SKIPPED * myna_reader: no private PC/SC stack here: {reason}*"])


@pytest.mark.pcsc
def test_docs_reader_example_through_pcscd(pytester: pytest.Pytester) -> None:
    """The docs' myna_reader example in a subprocess with its own private pcscd, enabled by the flag."""
    require_pcsc()
    write_module(pytester, "test_reader.py")
    result = pytester.runpytest_subprocess("--myna-pcsc", *QUIET, timeout=120)
    result.assert_outcomes(passed=2)


@pytest.mark.pcsc
@pytest.mark.opensc
def test_reader_enabled_by_ini_serves_opensc(pytester: pytest.Pytester) -> None:
    """Enabled by the ini option; a subprocess PC/SC client (opensc-tool) reaches the private pcscd too."""
    require_pcsc()
    if shutil.which("opensc-tool") is None:
        pytest.skip("opensc-tool not installed (apt-get install opensc)")
    pytester.makeini("[pytest]\nmyna_pcsc = true\n")
    pytester.makepyfile(
        """
        import os
        import subprocess

        def test_opensc_sees_the_card(myna_reader, myna_card):
            assert os.environ["PCSCLITE_CSOCK_NAME"].endswith("/pcscd.comm")
            out = subprocess.run(["opensc-tool", "-r", myna_reader, "-n"], capture_output=True, text=True, timeout=30)
            assert out.stdout.strip() == "jpki", out.stderr
        """
    )
    result = pytester.runpytest_subprocess(*QUIET, "-rs", timeout=120)
    result.assert_outcomes(passed=1)
