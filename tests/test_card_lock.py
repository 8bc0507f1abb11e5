"""One writing process per card: a second one is refused, so no process undoes another's decrement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mynaemu import Card, StateError

from .conftest import select_ap, select_ef, verify

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mynaemu", *args], capture_output=True, text=True, timeout=60, env=env)


def test_second_process_is_refused_while_card_is_held(card_dir: Path) -> None:
    card = Card.load(card_dir)
    res = cli("send", str(card_dir), "00A4040C0AD392F000260100000001")
    assert res.returncode == 2
    assert "in use by another process" in res.stderr and str(card_dir) in res.stderr
    info = cli("info", str(card_dir), "--json")  # read-only: allowed beside the writer
    assert info.returncode == 0, info.stderr
    card.close()
    res = cli("send", str(card_dir), "00A4040C0AD392F000260100000001")
    assert res.returncode == 0 and "9000" in res.stdout


def test_a_second_writable_load_in_one_process_is_refused(card_dir: Path) -> None:
    first = Card.load(card_dir)
    with pytest.raises(StateError, match="already loaded for writing in this process"):
        Card.load(card_dir)
    first.close()
    second = Card.load(card_dir)  # once the first is closed, the card may be loaded again
    assert cli("send", str(card_dir), "00A40000").returncode == 2  # ... and that load holds it
    second.close()
    assert cli("send", str(card_dir), "00A40000").returncode == 0


def test_read_only_card_refuses_state_changes(card_dir: Path) -> None:
    before = (card_dir / "state.json").read_bytes()
    card = Card.load(card_dir, read_only=True)
    select_ap(card, "jpki")
    select_ef(card, "0018")
    assert verify(card, "0000") == b"\x65\x81"
    assert verify(card, "1234") == b"\x65\x81"  # never compared: a read-only view is no PIN oracle
    assert card.tries_left("auth") == 3
    assert (card_dir / "state.json").read_bytes() == before


def test_forked_child_does_not_keep_the_parents_lock(card_dir: Path) -> None:
    card = Card.load(card_dir)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: waits until the parent let go, then must be able to take the card
        os.close(w)
        os.read(r, 1)
        try:
            Card.load(card_dir).close()
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(r)
    card.close()
    os.write(w, b"x")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_lock_goes_with_the_last_reference_even_without_gc(card_dir: Path) -> None:
    import gc

    gc.disable()
    try:
        card = Card.load(card_dir)
        card.transmit(bytes.fromhex("00A4040C0AD392F000260100000001"))  # exercise the SELECT handler
        del card  # no reference cycle keeps a Card alive: the lock goes at once
        assert cli("send", str(card_dir), "00A40000").returncode == 0
    finally:
        gc.enable()


def test_card_is_a_context_manager(card_dir: Path) -> None:
    with Card.load(card_dir) as card:
        assert cli("send", str(card_dir), "00A40000").returncode == 2
        assert card.transmit(bytes.fromhex("00A40000")) == b"\x6a\x86"
    assert cli("send", str(card_dir), "00A40000").returncode == 0


# -- the writer claim and the process's lease (no descriptor per loaded card) ---------------------
HOLD = ("import sys, time\nfrom mynaemu import Card\ncard = Card.load(sys.argv[1])\n"
        "print('held', flush=True)\ntime.sleep(120)\n")


def _holder(card_dir: Path) -> subprocess.Popen:
    """Another process that loads the card for writing and keeps it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(card_dir)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_loaded_cards_hold_no_descriptor_and_still_keep_other_processes_out(card_dir: Path, tmp_path: Path) -> None:
    import shutil

    dirs = []
    for i in range(40):
        dirs.append(tmp_path / f"c{i}")
        shutil.copytree(card_dir, dirs[-1])
    Card.load(dirs[0]).close()  # the lease exists from here
    before = _open_fds()
    cards = [Card.load(d) for d in dirs]
    assert _open_fds() == before  # 40 cards loaded, not one descriptor more
    for d in (dirs[0], dirs[17], dirs[39]):
        res = cli("send", str(d), "00A40000")
        assert res.returncode == 2 and "in use by another process" in res.stderr and f"process {os.getpid()}" in res.stderr
    for card in cards:
        card.close()
    assert not any((d / ".run").exists() for d in dirs)  # closed: claims gone, the directory as it was
    assert cli("send", str(dirs[17]), "00A40000").returncode == 0


def test_a_killed_holders_claim_lapses_at_once(card_dir: Path) -> None:
    proc = _holder(card_dir)
    with pytest.raises(StateError, match=f"in use by another process \\(process {proc.pid}"):
        Card.load(card_dir)
    proc.kill()
    proc.wait()
    assert (card_dir / ".run" / "writer.json").exists()  # left behind by the killed process ...
    with Card.load(card_dir) as card:  # ... and no obstacle: its lease is no longer locked
        select_ap(card, "jpki")
        assert card.transmit(bytes.fromhex("00A4020C020018")) == b"\x90\x00"
        assert verify(card, "0000") == b"\x63\xc2"
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 2


def test_a_copied_claim_does_not_hold_the_copy(card_dir: Path, tmp_path: Path) -> None:
    import shutil

    proc = _holder(card_dir)
    try:
        copy = tmp_path / "copy"
        shutil.copytree(card_dir, copy)  # the live claim comes along, naming the original directory
        assert (copy / ".run" / "writer.json").exists()
        Card.load(copy).close()
        with pytest.raises(StateError, match="in use by another process"):
            Card.load(card_dir)  # the original stays held
    finally:
        proc.kill()
        proc.wait()


def test_a_forged_or_broken_claim_cannot_lock_a_card_out(card_dir: Path) -> None:
    for junk in (b"", b"{", b"[]", b'{"format": "mynaemu-writer-claim"}', b"\xff" * 5000,
                 b'{"format": "mynaemu-writer-claim", "lease": "/nonexistent/x.lease", "dev": 0, "ino": 0}'):
        (card_dir / ".run").mkdir(mode=0o700, exist_ok=True)
        (card_dir / ".run" / "writer.json").write_bytes(junk)
        Card.load(card_dir).close()
        assert not (card_dir / ".run").exists()  # replaced by this load's claim, then removed with it
    # Neither a FIFO nor a directory where the claim goes, nor a claim naming a FIFO as its lease, blocks a load.
    fifo = card_dir.parent / "lease-fifo"
    os.mkfifo(fifo)
    st = os.stat(card_dir)
    for plant in ("fifo", "dir", "fifo-lease"):
        (card_dir / ".run").mkdir(mode=0o700, exist_ok=True)
        claim = card_dir / ".run" / "writer.json"
        if plant == "fifo":
            os.mkfifo(claim)
        elif plant == "dir":
            claim.mkdir()
        else:
            claim.write_text(json.dumps({"format": "mynaemu-writer-claim", "lease": str(fifo), "pid": "x" * 50,
                                         "dev": st.st_dev, "ino": st.st_ino, "nonce": "0"}))
        if plant == "dir":  # cannot be replaced by a file: the card keeps its flock, and loads
            with Card.load(card_dir) as card:
                assert not card._lock.claimed  # type: ignore[union-attr]
            claim.rmdir()
        else:
            Card.load(card_dir).close()


def test_a_new_directory_on_a_reused_inode_is_not_the_old_card(card_dir: Path, tmp_path: Path, monkeypatch) -> None:
    # Without a descriptor pinning it, a removed card directory's (device, inode) can come back
    # as another directory (tmpfs reuses inodes). The old Card must neither block the new one
    # nor write into it.
    import shutil

    from mynaemu import state

    other = tmp_path / "other"
    shutil.copytree(card_dir, other)
    old = Card.load(card_dir)
    select_ap(old, "jpki")
    select_ef(old, "0018")
    old_identity = old._lock.identity  # type: ignore[union-attr]
    shutil.rmtree(card_dir)
    shutil.move(other, card_dir)  # the same path, a new directory ...
    new_st = os.stat(card_dir)
    real_fstat, real_stat = os.fstat, os.stat

    def as_reused(st: os.stat_result) -> os.stat_result:  # ... that comes back with the old one's (device, inode)
        if (st.st_dev, st.st_ino) == (new_st.st_dev, new_st.st_ino):
            return os.stat_result((st.st_mode, old_identity[1], old_identity[0], *tuple(st)[3:10]))
        return st

    monkeypatch.setattr(state.os, "fstat", lambda fd: as_reused(real_fstat(fd)))
    monkeypatch.setattr(state.os, "stat", lambda path, **kw: as_reused(real_stat(path, **kw)))
    new = Card.load(card_dir)  # the old Card's registry entry is no obstacle
    assert verify(old, "0000") == b"\x65\x81"  # ... and the old Card writes nothing here: no claim of its own
    monkeypatch.undo()
    assert new.tries_left("auth") == 3 and Card.load(card_dir, read_only=True).tries_left("auth") == 3
    new.close()
    old.close()


def test_without_a_lease_the_card_keeps_its_flock(card_dir: Path, tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env_data = os.environ["MYNAEMU_DATA_DIR"]
    monkeypatch.setenv("MYNAEMU_DATA_DIR", str(blocker))  # no lease can be made under a file
    monkeypatch.setattr("mynaemu.state._lease", None)
    before = _open_fds()
    card = Card.load(card_dir)
    assert _open_fds() == before + 1 and not (card_dir / ".run").exists()
    monkeypatch.setenv("MYNAEMU_DATA_DIR", env_data)
    res = cli("send", str(card_dir), "00A40000")
    assert res.returncode == 2 and "in use by another process" in res.stderr
    card.close()
    assert _open_fds() == before and cli("send", str(card_dir), "00A40000").returncode == 0


def test_stale_leases_are_swept(card_dir: Path) -> None:
    from mynaemu.state import lease_dir

    Card.load(card_dir).close()  # this process's lease exists from here
    proc = _holder(card_dir)
    proc.kill()
    proc.wait()
    leases = set(lease_dir().glob("*.lease"))
    assert len(leases) >= 2  # ours and the killed process's
    res = subprocess.run([sys.executable, "-c", "import sys; from mynaemu import Card; Card.load(sys.argv[1]).close()",
                          str(card_dir)], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    left = set(lease_dir().glob("*.lease"))
    assert left < leases and all(p.stat().st_mode & 0o777 == 0o600 for p in left)  # the dead one is gone
    assert lease_dir().stat().st_mode & 0o777 == 0o700


def test_a_claim_that_cannot_be_written_leaves_the_card_on_its_flock(card_dir: Path, monkeypatch) -> None:
    from mynaemu import state

    Card.load(card_dir).close()  # the lease exists: only the claim's write fails below

    def disk_full(*args: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state, "_write_claim", disk_full)
    before = _open_fds()
    card = Card.load(card_dir)
    assert _open_fds() == before + 1 and not (card_dir / ".run").exists()
    res = cli("send", str(card_dir), "00A40000")
    assert res.returncode == 2 and "in use by another process" in res.stderr
    card.close()
    assert _open_fds() == before and cli("send", str(card_dir), "00A40000").returncode == 0
