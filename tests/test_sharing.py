"""What loaded cards share to stay small (1,000 in one process): one parse of a profile text.

Sharing must never mix cards up: each card keeps its own profile path, and a profile whose text
differs (edited, another variant's settings) is parsed on its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mynaemu import Card, StateError


def test_cards_with_one_profile_text_share_its_parse(card_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(card_dir, other)
    with Card.load(card_dir) as a, Card.load(other) as b:
        assert a.profile.aps is b.profile.aps and a.profile.keys is b.profile.keys
        assert a.profile.path == card_dir / "profile.toml" and b.profile.path == other / "profile.toml"


def test_an_edited_profile_is_parsed_anew(card_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(card_dir, other)
    text = (other / "profile.toml").read_text()
    assert "reselect_keeps_status = false" in text
    (other / "profile.toml").write_text(text.replace("reselect_keeps_status = false", "reselect_keeps_status = true", 1))
    with Card.load(card_dir) as a, Card.load(other) as b:
        assert a.profile.reselect_keeps_status is False and b.profile.reselect_keeps_status is True
        assert a.profile.aps is not b.profile.aps


def test_a_broken_profile_beside_a_shared_one_is_still_refused(card_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(card_dir, other)
    Card.load(card_dir).close()  # the good text is parsed and kept
    (other / "profile.toml").write_text((other / "profile.toml").read_text() + "\n[aps.jpki\n")
    with pytest.raises(StateError, match=f"{other / 'profile.toml'}: not valid TOML"):
        Card.load(other)
