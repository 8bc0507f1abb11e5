"""The lockout under attack: every way found to get more tries than the limit, or an oracle.

Each test here is an attack that worked before attempts became decrement-then-compare and
before one card had one set of counters (issue "The lockout holds under attack"): a failing or
full disk, a read-only view, a second handle however the path is spelled, threads, fork, a
closed card, a card directory swapped under a served card, and state that contradicts the
profile. Each asserts exact answers and the counters on disk afterwards.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from mynaemu import Card, StateError, admin
from mynaemu.card import CardClosedError
from mynaemu.keys import StorageFailure
from mynaemu.state import CRASH_POINTS
from mynaemu.testing import issue_test_card

from .conftest import select_ap, select_ef, verify

ROOT = Path(__file__).resolve().parent.parent
OK, MEMORY, BLOCKED = b"\x90\x00", b"\x65\x81", b"\x69\x84"
SELECT_JPKI = bytes.fromhex("00A4040C0AD392F000260100000001")
VERIFY_AUTH_BY_SFI = bytes.fromhex("00200098")  # P2 = 80 | SFI 18: no current EF needed


def verify_auth(card: Card, value: bytes) -> bytes:
    return card.transmit(VERIFY_AUTH_BY_SFI + bytes((len(value),)) + value)


def on_disk(card_dir: Path, key: str = "auth") -> int:
    return json.loads((card_dir / "state.json").read_bytes())["keys"][key]["tries_left"]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mynaemu", *args], capture_output=True, text=True, timeout=60,
                          env=env, input=stdin)


# -- 1. storage failure is no oracle --------------------------------------------------------------
class FlakyDisk:
    """A store fault hook that fails steps at random and records which writes reached the disk."""

    def __init__(self, rng: random.Random, p_fail: float) -> None:
        self.rng, self.p_fail = rng, p_fail
        self.steps: list[str] = []
        self.failed_after_rename = 0

    def __call__(self, where: str) -> None:
        self.steps.append(where)
        if self.rng.random() < self.p_fail:
            self.failed_after_rename += where in ("renamed", "dir_synced")
            raise OSError(self.rng.choice((errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT)), "injected")

    def renamed(self) -> int:
        """Writes of the last command that reached the disk (their rename happened)."""
        return self.steps.count("renamed")


def test_a_failing_store_never_answers_a_right_value_without_its_decrement_on_disk(card_dir: Path) -> None:
    rng = random.Random(8)
    card = Card.load(card_dir)
    card.transmit(SELECT_JPKI)
    disk = FlakyDisk(rng, p_fail=0.08)
    card.store.fault = disk
    answers: Counter[str] = Counter()
    wrong_since_reset = 0
    for _ in range(1000):
        right = rng.random() < 0.3
        before = on_disk(card_dir)
        disk.steps = []
        rsp = verify_auth(card, b"1234" if right else b"%04d" % rng.randrange(1235, 10000))
        after = on_disk(card_dir)
        answers[rsp.hex()] += 1
        # Memory agrees with the disk after every answer, whatever failed.
        assert card.tries_left("auth") == after
        if rsp == OK:
            assert right
            assert disk.renamed() == 2, disk.steps  # the decrement, then the reset, both on disk
            assert after == 3
            wrong_since_reset = 0
        elif rsp[0] == 0x63:
            assert not right  # a right value never answers 63Cx
            assert disk.renamed() == 1 and after == before - 1 == rsp[1] & 0x0F
            wrong_since_reset += 1
            assert wrong_since_reset <= 3
        elif rsp == MEMORY:
            # Refused: either nothing reached the disk, or the decrement did (and was kept), or
            # for a right value the reset whose fsync then failed.
            assert after in (before, before - 1) or (right and after == 3)
            if after == 3:
                wrong_since_reset = 0
        else:
            assert rsp == BLOCKED and before == 0 and after == 0
            card.store.fault = None
            admin.unblock(card, "auth")
            card.store.fault = disk
            wrong_since_reset = 0
    # The run hit every kind of answer, so the assertions above were put to work.
    assert {"9000", "6581", "6984"} <= set(answers) and any(a.startswith("63c") for a in answers), answers
    assert disk.failed_after_rename > 0


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A small tmpfs mounted for this test (needs root: CI is root; skipped elsewhere with the reason)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the fault-hook oracle test above covers the rule")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_no_pin_oracle(card_dir: Path, tmpfs: Path) -> None:
    """The reported attack: a full file system, then guess every PIN. No answer tells the right one."""
    work = tmpfs / "card"
    shutil.copytree(card_dir, work)
    card = Card.load(work)
    card.transmit(SELECT_JPKI)
    filler = tmpfs / "filler"
    with open(filler, "wb", buffering=0) as f, pytest.raises(OSError) as full:
        while True:
            f.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    before = (work / "state.json").read_bytes()
    guesses = [b"%04d" % n for n in range(999)] + [b"1234"]
    random.Random(3).shuffle(guesses)
    answers = {verify_auth(card, g) for g in guesses}
    assert answers == {MEMORY}  # 1,000 guesses, the right one among them: one answer for all
    assert "auth" not in card.session.verified
    assert (work / "state.json").read_bytes() == before
    filler.unlink()
    assert verify_auth(card, b"0000") == b"\x63\xc2"  # space again: the next attempt counts


def test_a_read_only_view_beside_a_served_card_is_no_oracle(card_dir: Path) -> None:
    """The writer is another process; a read-only view in this one must not compare either."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mynaemu import Card; c = Card.load(sys.argv[1]); print('held', flush=True); "
         "sys.stdin.read()", str(card_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(StateError, match="in use by another process"):
            Card.load(card_dir)
        view = Card.load(card_dir, read_only=True)
        view.transmit(SELECT_JPKI)
        assert [verify_auth(view, v) for v in (b"0000", b"1234", b"9999")] == [MEMORY] * 3
        assert view.transmit(VERIFY_AUTH_BY_SFI) == b"\x63\xc3"  # the retry query still answers
        assert "auth" not in view.session.verified
    finally:
        holder.communicate("", timeout=30)
    assert on_disk(card_dir) == 3


# -- 2. one card, one set of counters -------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "relative", "trailing-slash"])
def test_a_second_writable_load_is_refused_however_the_path_is_spelled(card_dir: Path, spelling: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    first = Card.load(card_dir)
    if spelling == "symlink":
        alias: str | Path = card_dir.parent / "alias"
        Path(alias).symlink_to(card_dir)
    elif spelling == "relative":
        monkeypatch.chdir(card_dir.parent)
        alias = card_dir.name
    else:
        alias = {"same": str(card_dir), "dot": f"{card_dir.parent}/./{card_dir.name}",
                 "trailing-slash": f"{card_dir}/"}[spelling]
    with pytest.raises(StateError, match="already loaded for writing in this process"):
        Card.load(alias)
    # The first load still works and its counters are the only ones.
    first.transmit(SELECT_JPKI)
    assert verify_auth(first, b"0000") == b"\x63\xc2"
    assert on_disk(card_dir) == 2
    first.close()
    with Card.load(alias) as again:
        assert again.tries_left("auth") == 2


def test_two_in_process_connections_share_one_card_and_its_counters(card_dir: Path) -> None:
    """InProcessConnection over a second load is impossible; over the same Card the counters are one."""
    pytest.importorskip("smartcard")
    from reader_bridge.inprocess import InProcessConnection

    card = Card.load(card_dir)
    with pytest.raises(StateError):
        InProcessConnection(Card.load(card_dir))
    a, b = InProcessConnection(card), InProcessConnection(card)
    a.connect()
    b.connect()
    wrong = list(VERIFY_AUTH_BY_SFI + b"\x04" + b"0000")
    a.transmit(list(SELECT_JPKI))
    sws = [(conn.transmit(wrong)[1:]) for conn in (a, b, a, b)]
    assert sws == [(0x63, 0xC2), (0x63, 0xC1), (0x63, 0xC0), (0x69, 0x84)]
    assert on_disk(card_dir) == 0


def test_eight_threads_on_one_card_never_get_an_extra_try(card_dir: Path) -> None:
    """8 threads x 1,000 wrong attempts in 10 rounds, unblocked between rounds: 3 wrong answers a round."""
    card = Card.load(card_dir)
    card.transmit(SELECT_JPKI)
    threads, rounds, per_round = 8, 10, 100
    guard = threading.Lock()

    def attack(seed: int, barrier: threading.Barrier, answers: list[bytes]) -> None:
        rng = random.Random(seed)
        barrier.wait()
        got = [verify_auth(card, b"%04d" % rng.randrange(2000, 10000)) for _ in range(per_round)]
        with guard:
            answers.extend(got)

    for rnd in range(rounds):
        barrier = threading.Barrier(threads)
        answers: list[bytes] = []
        workers = [threading.Thread(target=attack, args=(rnd * threads + i, barrier, answers)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        counts = Counter(answers)
        assert counts == {b"\x63\xc2": 1, b"\x63\xc1": 1, b"\x63\xc0": 1, BLOCKED: threads * per_round - 3}, (rnd, counts)
        assert on_disk(card_dir) == 0 and card.tries_left("auth") == 0
        admin.unblock(card, "auth")


def test_threads_against_operator_commands_keep_one_counter(card_dir: Path) -> None:
    """Wrong VERIFYs in one thread, unblocks in another: memory and disk agree at the end."""
    card = Card.load(card_dir)
    card.transmit(SELECT_JPKI)
    stop = threading.Event()

    def office() -> None:
        while not stop.is_set():
            admin.unblock(card, "auth")

    t = threading.Thread(target=office)
    t.start()
    try:
        answers = Counter(verify_auth(card, b"0000") for _ in range(300))
    finally:
        stop.set()
        t.join()
    assert set(answers) <= {b"\x63\xc2", b"\x63\xc1", b"\x63\xc0", BLOCKED}
    assert card.tries_left("auth") == on_disk(card_dir)


def test_a_forked_child_cannot_use_its_inherited_card(card_dir: Path) -> None:
    card = Card.load(card_dir)
    card.transmit(SELECT_JPKI)
    assert verify_auth(card, b"0000") == b"\x63\xc2"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: every use of the inherited card must be refused
        os.close(r)
        report = []
        try:
            card.transmit(SELECT_JPKI)
            report.append("transmit answered")
        except CardClosedError as exc:
            report.append("transmit refused" if "fork" in str(exc) else f"transmit: {exc}")
        try:
            admin.unblock(card, "auth")
            report.append("unblock done")
        except admin.AdminError:
            report.append("unblock refused")
        try:
            Card.load(card_dir)
            report.append("load done")
        except StateError as exc:
            report.append("load refused" if "another process" in str(exc) else f"load: {exc}")
        os.write(w, ",".join(report).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        report = f.read()
    os.waitpid(pid, 0)
    assert report == "transmit refused,unblock refused,load refused"
    # The parent's card goes on, its counter intact.
    assert verify_auth(card, b"0000") == b"\x63\xc1"
    assert on_disk(card_dir) == 1


def test_a_closed_card_refuses_every_command(card_dir: Path) -> None:
    card = Card.load(card_dir)
    card.transmit(SELECT_JPKI)
    card.close()
    # Another process takes the card and spends a try.
    res = cli("send", str(card_dir), SELECT_JPKI.hex(), "00A4020C020018", "0020008004" + b"0000".hex())
    assert res.returncode == 0, res.stderr
    assert on_disk(card_dir) == 2
    with pytest.raises(CardClosedError, match="closed"):
        verify_auth(card, b"1234")
    with pytest.raises(admin.AdminError, match="closed"):
        admin.unblock(card, "auth")
    assert card.closed
    assert on_disk(card_dir) == 2


@pytest.mark.parametrize("swap", ["renamed-and-copied", "symlink-retargeted"])
def test_a_card_directory_replaced_under_a_loaded_card_is_never_written(card_dir: Path, swap: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    if swap == "symlink-retargeted":
        link = card_dir.parent / "served"
        link.symlink_to(card_dir)
        card = Card.load(link)
        copy = card_dir.parent / "copy"
        shutil.copytree(card_dir, copy)
        link.unlink()
        link.symlink_to(copy)
        dirs = [card_dir, copy]
    else:
        card = Card.load(card_dir)
        moved = card_dir.parent / "moved-away"
        card_dir.rename(moved)
        shutil.copytree(moved, card_dir)
        dirs = [moved, card_dir]
    card.transmit(SELECT_JPKI)
    before = [(d / "state.json").read_bytes() for d in dirs]
    with caplog.at_level(logging.WARNING, logger="mynaemu.card"):
        assert [verify_auth(card, b"0000") for _ in range(4)] == [MEMORY] * 4
        assert verify_auth(card, b"1234") == MEMORY
    assert [(d / "state.json").read_bytes() for d in dirs] == before
    assert any("moved or replaced" in r.getMessage() for r in caplog.records)
    with pytest.raises(StorageFailure, match="moved or replaced"):
        admin.unblock(card, "auth")


# -- 4. state that contradicts the profile ---------------------------------------------------------
def _edit_state(card_dir: Path, edit) -> None:
    path = card_dir / "state.json"
    doc = json.loads(path.read_bytes())
    edit(doc)
    path.write_text(json.dumps(doc))


BAD_COUNTERS = {
    "limit-above-profile": (lambda d: d["keys"]["auth"].update(limit=15, tries_left=15),
                            "keys.auth.limit is 15, but the card's profile says 3"),
    "tries-as-string": (lambda d: d["keys"]["auth"].update(tries_left="3"), "keys.auth.tries_left must be an integer"),
    "tries-as-float": (lambda d: d["keys"]["auth"].update(tries_left=2.9), "keys.auth.tries_left must be an integer"),
    "tries-as-bool": (lambda d: d["keys"]["auth"].update(tries_left=True), "keys.auth.tries_left must be an integer"),
    "tries-null": (lambda d: d["keys"]["auth"].update(tries_left=None), "keys.auth.tries_left must be an integer"),
    "tries-negative": (lambda d: d["keys"]["auth"].update(tries_left=-1), "keys.auth.tries_left must be an integer from 0 to 3"),
    "limit-as-bool": (lambda d: d["keys"]["auth"].update(limit=True), "keys.auth.limit must be an integer"),
    "value-not-hex": (lambda d: d["keys"]["auth"].update(value="31 32 33 34"), "keys.auth.value must be lower-case hex"),
    "value-number": (lambda d: d["keys"]["auth"].update(value=1234), "keys.auth.value must be lower-case hex"),
    "extra-field": (lambda d: d["keys"]["auth"].update(spare=1), "keys.auth must have exactly the fields"),
    "missing-field": (lambda d: d["keys"]["auth"].pop("limit"), "keys.auth must have exactly the fields"),
    "missing-key": (lambda d: d["keys"].pop("sign"), "has no state for key(s) sign"),
    "unknown-key": (lambda d: d["keys"].update(extra=d["keys"]["auth"]), "has key(s) extra that the profile does not know"),
    "key-not-table": (lambda d: d["keys"].update(auth=[3, 3, "31323334"]), "keys.auth must be a table"),
    "version-as-bool": (lambda d: d.update(version=True), "unknown mynaemu-state version True"),
}


@pytest.mark.parametrize("kind", list(BAD_COUNTERS))
def test_state_contradicting_the_profile_is_refused(card_dir: Path, kind: str) -> None:
    edit, says = BAD_COUNTERS[kind]
    _edit_state(card_dir, edit)
    raw = (card_dir / "state.json").read_bytes()
    for read_only in (False, True):
        with pytest.raises(StateError) as exc:
            Card.load(card_dir, read_only=read_only)
        assert str(card_dir / "state.json") in str(exc.value) and says in str(exc.value), str(exc.value)
        assert "1234" not in str(exc.value) and "31323334" not in str(exc.value)  # never the secret
    assert (card_dir / "state.json").read_bytes() == raw
    res = cli("info", str(card_dir))
    assert res.returncode != 0 and "Traceback" not in res.stderr and says in res.stderr


def _duplicate_tries(raw: bytes) -> bytes:
    # The first tries_left (0: blocked) is the one a reader that keeps the first would use;
    # json's default keeps the last (3). Either way the file says two things: refuse it.
    return raw.replace(b'"limit":3,"tries_left":3', b'"limit":3,"tries_left":0,"tries_left":3', 1)


MALFORMED = {
    "duplicate-tries": _duplicate_tries,
    "duplicate-keys-table": lambda raw: raw.replace(b'"keys":{', b'"keys":{},"keys":{', 1),
    "nan": lambda raw: raw.replace(b'"limit":3,"tries_left":3', b'"limit":3,"tries_left":NaN', 1),
    "nested-100000": lambda raw: b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_json_is_refused_with_the_file_named(card_dir: Path, kind: str) -> None:
    path = card_dir / "state.json"
    raw = MALFORMED[kind](path.read_bytes())
    assert raw != path.read_bytes()
    path.write_bytes(raw)
    with pytest.raises(StateError) as exc:
        Card.load(card_dir)
    assert str(path) in str(exc.value)
    assert path.read_bytes() == raw


def test_every_card_has_its_own_id_and_files_of_two_cards_never_mix(tmp_path: Path) -> None:
    a = issue_test_card(tmp_path / "a").path
    b = issue_test_card(tmp_path / "b").path
    ids = {Card.load(p, read_only=True).dir.card_id for p in (a, b)}
    assert len(ids) == 2  # same persona, same serial number: still two cards
    for name, says in (("state.json", "belongs to card"), ("keys.json", "belongs to card")):
        mixed = tmp_path / f"mixed-{name}"
        shutil.copytree(a, mixed)
        shutil.copy(b / name, mixed / name)
        with pytest.raises(StateError, match=says):
            Card.load(mixed)
    # keys.json with the right card_id but another card's keys: caught by the certificates.
    mixed = tmp_path / "mixed-keys"
    shutil.copytree(a, mixed)
    doc_a, doc_b = (json.loads((d / "keys.json").read_bytes()) for d in (a, b))
    doc_a["keys"] = doc_b["keys"]
    (mixed / "keys.json").write_text(json.dumps(doc_a))
    with pytest.raises(StateError, match="is not the key of the certificate"):
        Card.load(mixed)


def test_a_corrupt_private_key_is_refused_at_load(card_dir: Path) -> None:
    path = card_dir / "keys.json"
    doc = json.loads(path.read_bytes())
    doc["keys"]["text.ap"] = doc["keys"]["text.ap"].replace("A", "B", 40)
    path.write_text(json.dumps(doc))
    with pytest.raises(StateError, match=r"keys\.json: keys\.text\.ap is not"):
        Card.load(card_dir)


def test_crash_points_cover_both_writes_of_a_right_attempt(card_dir: Path) -> None:
    """The right attempt's two writes each pass every crash point (the crash tests rely on it)."""
    card = Card.load(card_dir)
    steps: list[str] = []
    card.store.fault = steps.append
    select_ap(card, "jpki")
    select_ef(card, "0018")
    assert verify(card, "1234") == OK
    assert steps == list(CRASH_POINTS) * 2
