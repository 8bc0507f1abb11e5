"""Demo and test cards (card.json "kind"), info --secrets, and issuance options for tests (tries, pins)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mynaemu import Card, StateError
from mynaemu.cli import main
from mynaemu.issuance import IssuanceError, issue_card
from mynaemu.testing import TEST_SECRETS, issue_test_card, known_persona, published_test_keys


def card_json(path: Path) -> dict:
    return json.loads((path / "card.json").read_text(encoding="utf-8"))


def test_test_cards_are_marked(tmp_path: Path) -> None:
    issued = issue_test_card(tmp_path / "card")
    assert card_json(issued.path)["kind"] == "test"
    assert issued.secrets == TEST_SECRETS


def test_ordinary_cards_have_no_kind(tmp_path: Path) -> None:
    issued = issue_card(tmp_path / "card", persona=known_persona(), keys=published_test_keys())
    assert "kind" not in card_json(issued.path)


def test_info_secrets_of_a_test_card(card_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(card_dir), "--secrets"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("Secrets (test card; published, not secret):\n  auth  1234\n  sign  ABC123\n"
                        "  text  5678\n  juki  2468\n")
    assert main(["admin", str(card_dir), "reset-pin", "auth", "4321"]) == 0
    capsys.readouterr()
    assert main(["info", str(card_dir), "--secrets", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "test" and doc["secrets"]["auth"] == "4321"  # the value the card holds now


def test_info_without_secrets_shows_none(card_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(card_dir), "--json"]) == 0
    assert "secrets" not in json.loads(capsys.readouterr().out)
    assert main(["info", str(card_dir)]) == 0
    assert "1234" not in capsys.readouterr().out


def test_info_secrets_refused_for_other_cards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine"
    issue_card(path, persona=known_persona(), secrets={"auth": "7777"}, keys=published_test_keys())
    for extra in ([], ["--json"]):
        assert main(["info", str(path), "--secrets", *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (f"mynaemu info: error: {path} is not a demo or test card: its secrets were shown once, "
                                f"at issuance, and are never shown again (`mynaemu admin {path} reset-pin KEY NEW` "
                                "sets a new one)\n")


def test_an_unknown_kind_is_refused(card_dir: Path) -> None:
    doc = card_json(card_dir)
    doc["kind"] = "personal"
    (card_dir / "card.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(StateError, match=r"card\.json: kind must be one of demo, test \(or absent\), not 'personal'"):
        Card.load(card_dir, read_only=True)


def test_issue_with_tries(tmp_path: Path) -> None:
    issued = issue_test_card(tmp_path / "card", tries={"auth": 1, "sign": 0}, published_keys=True)
    card = Card.load(issued.path, read_only=True)
    assert (card.tries_left("auth"), card.tries_left("sign"), card.tries_left("text")) == (1, 0, 3)
    assert card.key_status()["sign"]["blocked"] is True


@pytest.mark.parametrize(("options", "message"), [
    ({"tries": {"auth": -1}}, "tries: auth takes an integer from 0 to its limit 3, not -1"),
    ({"tries": {"auth": True}}, "tries: auth takes an integer from 0 to its limit 3, not True"),
    ({"kind": "gold"}, "kind 'gold': a card's kind is one of demo, test (or none)"),
    ({"secrets": {"juki": "12345"}}, "--juki-pin: the Resident-registry AP PIN must be exactly 4 digits"),
])
def test_issue_refuses_bad_options(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(IssuanceError) as info:
        issue_test_card(tmp_path / "card", published_keys=True, **options)
    assert str(info.value).startswith(message), str(info.value)
    assert not (tmp_path / "card").exists()


def test_a_card_without_signing_certificate_loads(tmp_path: Path) -> None:
    from datetime import date

    issued = issue_test_card(tmp_path / "child", persona=known_persona(birth=date(2015, 4, 1), issued=date(2025, 4, 1)),
                             published_keys=True)
    card = Card.load(issued.path, read_only=True)
    assert card.dir.content["jpki.sign_cert"] == b""


def test_published_keys_are_fixed(tmp_path: Path) -> None:
    a = issue_test_card(tmp_path / "a", published_keys=True)
    b = issue_test_card(tmp_path / "b", published_keys=True)
    assert json.loads((a.path / "keys.json").read_text())["keys"] == json.loads((b.path / "keys.json").read_text())["keys"]
    assert card_json(a.path)["card_id"] != card_json(b.path)["card_id"]
    with pytest.raises(TypeError, match="give keys= or published_keys=True, not both"):
        issue_test_card(tmp_path / "c", published_keys=True, keys=published_test_keys())
