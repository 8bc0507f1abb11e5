"""The emulated CV issuers (municipality keys, terminal CA): private files, one key under races."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

from mynaemu import cv_issuers
from mynaemu.cv_issuers import CvIssuers


def _public_numbers(directory: str) -> tuple[int, int, int]:
    cv_issuers._cache.clear()  # a fresh process's view: read what is on disk
    issuers = CvIssuers.load_or_create(directory)
    return tuple(k.public_key().public_numbers().n for k in (issuers.terminal_ca, issuers.text_municipality,
                                                             issuers.visual_municipality))  # type: ignore[return-value]


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        root = tmp_path / "new-parent" / "cv-issuers"
        CvIssuers.load_or_create(root)
    finally:
        os.umask(old)
    for d in (tmp_path / "new-parent", root):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    files = sorted(root.iterdir())
    assert [p.name for p in files] == ["terminal-ca.key.pem", "text-municipality.key.pem", "visual-municipality.key.pem"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)


def test_concurrent_creators_agree_on_one_key_each(tmp_path: Path) -> None:
    root = str(tmp_path / "cv-issuers")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        seen = set(pool.map(_public_numbers, [root] * 8))
    assert len(seen) == 1  # every process loaded the same three keys
    assert not [p for p in Path(root).iterdir() if p.name.endswith(".tmp")]  # no leftover
    assert _public_numbers(root) in seen


def test_a_stale_temporary_file_does_not_stop_creation(tmp_path: Path) -> None:
    root = tmp_path / "cv-issuers"
    root.mkdir(mode=0o700)
    (root / f".terminal-ca.key.pem.{os.getpid()}.tmp").write_bytes(b"left by a crash")
    CvIssuers.load_or_create(root)
    assert (root / "terminal-ca.key.pem").exists()
