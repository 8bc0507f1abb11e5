"""The key pool (every key to one card only, our own files only) and the per-process authority cache."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from mynaemu import keypool, pki
from mynaemu.cli import main
from mynaemu.keypool import KeyPool
from mynaemu.pki import generate_rsa_key
from mynaemu.testing import published_test_keys

ROOT = Path(__file__).resolve().parent.parent


def modulus(key) -> int:
    return key.public_key().public_numbers().n


def six_keys() -> list:
    """Six distinct RSA-2048 keys without generating any (the published test keys)."""
    keys = published_test_keys()
    return [getattr(keys, f.name) for f in fields(keys)]


def filled(directory: Path, count: int) -> KeyPool:
    made = KeyPool(directory)
    made._usable_dir(create=True)
    for key in six_keys()[:count]:
        made.add(key)
    return made


@pytest.fixture
def pool(tmp_path: Path) -> KeyPool:
    return filled(tmp_path / "keypool", 4)


def pooled_moduli(pool: KeyPool) -> set[int]:
    out = set()
    for path in pool.directory.glob("*.der"):
        key = serialization.load_der_private_key(path.read_bytes(), None)
        out.add(modulus(key))
    return out


def test_pool_files_are_private(pool: KeyPool) -> None:
    assert stat.S_IMODE(pool.directory.stat().st_mode) == 0o700
    files = list(pool.directory.glob("*.der"))
    assert len(files) == 4 and pool.count() == 4
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}


def test_a_taken_key_leaves_the_pool(pool: KeyPool) -> None:
    before = pooled_moduli(pool)
    taken = pool.take(3, refill=False)
    assert len(taken) == 3
    assert {modulus(k) for k in taken} <= before
    assert pooled_moduli(pool) == before - {modulus(k) for k in taken}
    more = pool.take(3, refill=False)  # one left: two generated on the spot
    assert pool.count() == 0
    assert len({modulus(k) for k in [*taken, *more]}) == 6


def test_two_processes_never_get_the_same_key(tmp_path: Path) -> None:
    pool = filled(tmp_path / "keypool", 6)
    code = ("import sys, json; from mynaemu.keypool import KeyPool;"
            "keys = KeyPool(sys.argv[1])._take_from_pool(6);"
            "print(json.dumps([k.public_key().public_numbers().n for k in keys]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(pool.directory)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(3)]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    everyone = [n for r in results for n in r]
    assert len(everyone) == 6 and len(set(everyone)) == 6
    assert pool.count() == 0


def test_files_of_others_are_never_used(pool: KeyPool, caplog: pytest.LogCaptureFixture) -> None:
    planted = sorted(pool.directory.glob("*.der"))
    planted[0].chmod(0o644)
    os.symlink(planted[1], pool.directory / "link.der")
    good = {modulus(serialization.load_der_private_key(p.read_bytes(), None)) for p in planted[1:]}
    bad = modulus(serialization.load_der_private_key(planted[0].read_bytes(), None))
    taken = pool.take(5, refill=False)
    assert bad not in {modulus(k) for k in taken}
    assert good <= {modulus(k) for k in taken}
    assert not planted[0].exists()  # discarded, never offered again
    assert "not a 0600 file of this user; discarded" in caplog.text


def test_an_open_pool_directory_is_passed_over(pool: KeyPool, caplog: pytest.LogCaptureFixture) -> None:
    pool.directory.chmod(0o755)
    before = pooled_moduli(pool)
    taken = pool.take(2, refill=False)
    assert not {modulus(k) for k in taken} & before
    assert pool.count() == 0  # reported empty, and left as it is
    assert len(list(pool.directory.glob("*.der"))) == 4
    assert "not a 0700 directory of this user; not using it as a key pool" in caplog.text
    with pytest.raises(PermissionError, match="cannot use it as a key pool"):
        pool.fill(5)


def test_a_torn_key_is_discarded(pool: KeyPool) -> None:
    victim = next(pool.directory.glob("*.der"))
    victim.write_bytes(victim.read_bytes()[:100])
    assert len(pool.take(4, refill=False)) == 4
    assert pool.count() == 0


def test_pool_off(pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(keypool.ENV, "0")
    pool.take(2)
    assert pool.count() == 4


def test_background_refill_fills_to_the_target(tmp_path: Path) -> None:
    pool = KeyPool(tmp_path / "keypool")
    thread = pool.refill_in_background(target=3)
    assert thread is not None and pool.refill_in_background(target=3) is thread  # one filler per pool
    thread.join(60)
    assert pool.count() == 3


def test_fork_waits_for_a_filler_outside_openssl(tmp_path: Path) -> None:
    pool = KeyPool(tmp_path / "keypool")
    thread = pool.refill_in_background(target=4)
    pid = os.fork()
    if pid == 0:  # the child uses OpenSSL at once: it must not inherit a lock held mid-generation
        signal.alarm(30)  # a deadlock ends the child (SIGALRM) instead of hanging the test
        try:
            generate_rsa_key()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    thread.join(60)
    assert pool.count() == 4


def test_keypool_fill_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MYNAEMU_DATA_DIR", str(tmp_path / "data"))
    assert main(["keypool", "fill", "2"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'data' / 'keypool'}: 2 keys (2 generated now)\n"
    assert main(["keypool", "status"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'data' / 'keypool'}: 2 keys\n"
    assert main(["keypool", "fill", "-1"]) == 2
    assert "give the number of keys" in capsys.readouterr().err


def test_issued_cards_take_their_keys_from_the_pool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mynaemu.testing import issue_test_card

    monkeypatch.setenv("MYNAEMU_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(keypool, "LOW_WATER", 0)  # no background refill here
    pool = filled(keypool.default_pool_dir(), 6)
    before = pooled_moduli(pool)
    issued = issue_test_card(tmp_path / "card")
    pems = json.loads((issued.path / "keys.json").read_text())["keys"]
    used = {modulus(serialization.load_pem_private_key(p.encode(), None)) for p in pems.values()}
    assert len(used) == 6 and used == before
    assert pool.count() == 0


def test_authority_is_loaded_once_per_process(tmp_path: Path) -> None:
    root = tmp_path / "authority"
    created = pki.Authority.load_or_create(root)
    assert pki.Authority.load_or_create(root) is created
    again = pki.Authority.load(root)  # an explicit load checks everything again
    assert again is not created
    assert pki.Authority.load_or_create(root) is again


def test_a_replaced_authority_is_read_again(tmp_path: Path) -> None:
    root = tmp_path / "authority"
    first = pki.Authority.load_or_create(root)
    root.rename(tmp_path / "old")
    second = pki.Authority.load_or_create(root)
    assert second is not first
    der = serialization.Encoding.DER
    assert second.auth_ca_certificate.public_bytes(der) != first.auth_ca_certificate.public_bytes(der)
