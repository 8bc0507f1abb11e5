"""Power loss (docs/card-interface.md, D3): a card process killed at random instants, and writes that fail.

A child process loads the card once and answers request APDUs over a pipe, sending each answer
only after ``Card.transmit`` returned; the parent asks one request at a time and SIGKILLs the
child at a random instant. After every kill the card must load, and its counters must be what
the answers the parent received allow: every answered wrong attempt counted, at most one more
(the one in flight), never fewer. A PIN change killed mid-way leaves exactly the old or the new
PIN. SIGKILL ends the process, not the machine: losing the page cache is what the fsyncs guard
against, and ``test_durability`` checks their order. The harness is also what ``scripts/power-loss``
runs for long.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mynaemu import Card, admin, state
from mynaemu.state import StateError, temp_files

from .cardkit import key_locations, wrong_value
from .conftest import AID, SECRETS

ROOT = Path(__file__).resolve().parent.parent
SW_OK, SW_BLOCKED, SW_MEMORY = b"\x90\x00", b"\x69\x84", b"\x65\x81"

# Keys whose wrong VERIFYs are killed (limits 3, 5 and 10), and the keys whose change is killed,
# each with the second value it alternates with (00 24 for auth and sign, JICSAP 80 32 for juki).
VERIFY_KEYS = ("auth", "sign", "text-a")
CHANGE_PAIRS = {"auth": (SECRETS["auth"], "9876"), "sign": (SECRETS["sign"], "NEWPASS9"), "juki": (SECRETS["juki"], "1357")}


class Zygote:
    """A fork server with mynaemu imported: each card child costs a fork, not an interpreter start."""

    def __init__(self) -> None:
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = f"from tests.test_power_loss import zygote_main; zygote_main({theirs.fileno()})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()], cwd=ROOT,
                                     stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        theirs.close()

    def spawn(self, card_dir: Path, mutation: str = "") -> tuple[int, int, int]:
        """A new child serving ``card_dir``: (pid, request pipe to write, answer pipe to read)."""
        req_r, req_w = os.pipe()
        ans_r, ans_w = os.pipe()
        socket.send_fds(self._sock, [os.fsencode(card_dir) + b"\0" + mutation.encode()], [req_r, ans_w])
        os.close(req_r)
        os.close(ans_w)
        pid = self._sock.recv(64)
        if not pid:
            raise RuntimeError(f"the fork server exited ({self.proc.wait()})")
        return int(pid), req_w, ans_r

    def close(self) -> None:
        self._sock.close()  # the server sees EOF and exits
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def zygote_main(fd: int) -> None:
    """The fork server: for each request (card dir + two pipe ends) fork a child and send back its pid."""
    sock = socket.socket(fileno=fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children; the parent waits on pidfds
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 4096, 2)
        if not msg:
            return
        pid = os.fork()
        if pid == 0:
            sock.close()
            try:
                card_dir, _, mutation = os.fsdecode(msg).partition("\0")
                serve_requests(card_dir, fds[0], fds[1], mutation)
            finally:
                os._exit(0)
        for f in fds:
            os.close(f)
        sock.send(str(pid).encode())


def serve_requests(card_dir: str, requests: int, answers: int, mutation: str = "") -> None:
    """Child: load the card once, then answer each request line; an answer leaves after transmit returned."""
    card = Card.load(card_dir)
    card.power_on()
    flush = _MUTATIONS[mutation](card) if mutation else None
    os.write(answers, b"ready\n")
    with os.fdopen(requests, "rb") as lines:
        for line in lines:
            if flush:
                flush()
            rsp = card.transmit(bytes.fromhex(line.decode()))
            os.write(answers, rsp.hex().encode() + b"\n")  # one write below PIPE_BUF: whole or nothing


def _answer_before_write(card: Card) -> Callable[[], None]:
    """Break the card on purpose: each state write happens only when the next request comes."""
    deferred: list[dict] = []
    real_save = card.store.save
    card.store.save = lambda keys: deferred.append(copy.deepcopy(keys))  # type: ignore[method-assign]

    def flush() -> None:
        while deferred:
            real_save(deferred.pop(0))

    return flush


def _write_in_place(card: Card) -> Callable[[], None]:
    """Break the card on purpose: state.json rewritten in place, in synced pieces."""

    def write(path: Path, data: bytes, **_: object) -> None:
        with open(path, "wb", buffering=0) as f:
            for i in range(0, len(data), 256):
                f.write(data[i : i + 256])
                os.fsync(f.fileno())

    state.atomic_write = write  # type: ignore[assignment]
    return lambda: None


# Deliberately broken cards, so that a test can show the harness catches them.
_MUTATIONS = {"answer-before-write": _answer_before_write, "write-in-place": _write_in_place}

_TIMEOUT = object()


class Child:
    """One card process, asked one request at a time and SIGKILLed at a deadline."""

    def __init__(self, zygote: Zygote, card_dir: Path, mutation: str = "") -> None:
        self.pid, self._req, self._ans = zygote.spawn(card_dir, mutation)
        self._buf = b""
        self.dead = False
        try:
            self._pidfd: int | None = os.pidfd_open(self.pid)
        except ProcessLookupError:  # already gone (it could not load the card)
            self._pidfd = None

    def _line(self, timeout: float) -> bytes | object | None:
        """The next answer line; None at end of file, _TIMEOUT when none came in time."""
        end = time.monotonic() + timeout
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self._ans], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                return _TIMEOUT
            chunk = os.read(self._ans, 4096)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def ready(self, timeout: float = 30.0) -> bool:
        """Wait until the card is loaded; False if the child died first."""
        if self._line(timeout) == b"ready":
            return True
        self.kill()
        return False

    def ask(self, apdu: bytes, deadline: float) -> bytes | None:
        """Send one request and return its answer; at ``deadline`` SIGKILL the child.

        An answer already in the pipe when the child died has reached the parent and is returned;
        None means no answer came. ``dead`` tells whether to go on.
        """
        try:
            os.write(self._req, apdu.hex().encode() + b"\n")
        except BrokenPipeError:
            self.kill()
            return None
        line = self._line(deadline - time.monotonic())
        if line is _TIMEOUT:
            self.kill()
            line = self._line(0)
        if not isinstance(line, bytes):
            self.kill()
            return None
        return bytes.fromhex(line.decode())

    def kill(self) -> None:
        """SIGKILL the child (if alive) and wait until it is gone: no write can follow."""
        if self.dead:
            return
        self.dead = True
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            select.select([self._pidfd], [], [], 10)  # readable once the process has exited
            os.close(self._pidfd)
        os.close(self._req)

    def close(self) -> None:
        self.kill()
        os.close(self._ans)


@dataclass
class Figures:
    """What a run did, and every violation it saw (there must be none)."""

    kills: int = 0
    requests: int = 0
    answered_wrong: int = 0  # wrong attempts whose 63Cx reached the parent
    answered_right: int = 0
    answered_changes: int = 0
    torn_writes: int = 0  # kills that left a .state.json.*.tmp behind: the kill landed inside a write
    in_flight_counted: int = 0  # kills after which the unanswered wrong attempt was found counted
    right_in_flight_cost: int = 0  # kills between a right attempt's decrement and its reset: one try gone
    unblocks: int = 0
    blocked_ends: int = 0  # of the kills, those that ended a child at once because every key was blocked
    violations: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def add(self, other: Figures) -> None:
        for name in ("kills", "requests", "answered_wrong", "answered_right", "answered_changes", "torn_writes",
                     "in_flight_counted", "right_in_flight_cost", "unblocks", "blocked_ends", "elapsed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.violations += other.violations


def _apdu(cla_ins_p1_p2: str, data: bytes = b"") -> bytes:
    head = bytes.fromhex(cla_ins_p1_p2)
    return head + bytes((len(data),)) + data if data else head


def _select(aid: str, fid: int) -> list[bytes]:
    return [_apdu("00A4040C", bytes.fromhex(aid)), _apdu("00A4020C", fid.to_bytes(2, "big"))]


class _Pace:
    """When to kill: mostly mid-stream, within about a dozen requests however slow the machine is,
    and sometimes during start-up and the SELECTs."""

    def __init__(self, max_delay: float) -> None:
        self.max_delay = max_delay
        self.per_request = 0.0

    def note(self, seconds: float) -> None:
        self.per_request = seconds if not self.per_request else 0.9 * self.per_request + 0.1 * seconds

    def delay(self, rng: random.Random) -> float:
        if rng.random() < 0.1:
            return rng.uniform(0, 0.001)
        return rng.uniform(0, max(self.max_delay, 12 * self.per_request))


def _drop_tmp(card_dir: Path) -> None:
    for leftover in temp_files(card_dir / "state.json"):
        leftover.unlink(missing_ok=True)


def _after_kill(card_dir: Path, fig: Figures, kill: int) -> Card | None:
    """Count the kill (and whether it landed inside a write), then load the card it left."""
    fig.kills += 1
    fig.torn_writes += bool(temp_files(card_dir / "state.json"))
    return _load(card_dir, fig, kill)


def _load(card_dir: Path, fig: Figures, kill: int) -> Card | None:
    try:
        return Card.load(card_dir)
    except StateError as exc:
        fig.violations.append(f"kill {kill}: the card does not load: {exc}")
        return None


def run_verify_kills(zygote: Zygote, card_dir: Path, kills: int, rng: random.Random, *,
                     max_delay: float = 0.02, mutation: str = "") -> Figures:
    """Kill children that answer wrong (and some right) VERIFYs and retry queries; check every counter.

    A child works on one key until it is blocked, checks that the blocked key refuses its right
    value, then moves on to another key; the parent unblocks keys between children.
    """
    fig, start, pace = Figures(), time.monotonic(), _Pace(max_delay)
    card = Card.load(card_dir)
    where = key_locations(card)
    right = {k: card.keyring[k].value for k in VERIFY_KEYS}
    wrong = {k: wrong_value(v.decode()).encode() for k, v in right.items()}
    limits = {k: card.keyring[k].spec.limit for k in VERIFY_KEYS}
    model = {k: card.tries_left(k) for k in card.keyring.keys}  # tries left the answers allow
    for n in range(1, kills + 1):
        if len(fig.violations) > 20:
            break
        _drop_tmp(card_dir)
        card.close()  # the child is the card's one writer now (a second process would be refused)
        child = Child(zygote, card_dir, mutation)
        in_flight: tuple[str, str] | None = None  # (kind, key) of the request still without an answer
        try:
            if not child.ready():
                fig.violations.append(f"kill {n}: the child could not load the card")
                break
            deadline = time.monotonic() + pace.delay(rng)
            key, probed, pending = "", False, []
            while not child.dead:
                if not pending:
                    if key and model[key] == 0 and not probed:
                        # Blocked: the right value must not match, the query says 63C0.
                        pending, probed = [("right", key), ("query", key)], True
                    elif not key or model[key] == 0:
                        usable = [k for k in VERIFY_KEYS if model[k] > 0]
                        if not usable:  # every key blocked: nothing left to do for this child
                            child.kill()
                            fig.blocked_ends += 1
                            break
                        key, probed = rng.choice(usable), False
                        pending = [("select-ap", key), ("select-ef", key)]
                    else:
                        p_wrong = 0.75 if model[key] > 1 else 0.5
                        pending = [(rng.choices(("wrong", "right", "query"), (p_wrong, 0.9 - p_wrong, 0.1))[0], key)]
                kind, k = pending.pop(0)
                if kind.startswith("select"):
                    apdu = _select(AID[where[k][0]], where[k][1])[kind == "select-ef"]
                else:
                    apdu = _apdu("00200080", {"wrong": wrong[k], "right": right[k], "query": b""}[kind])
                in_flight = (kind, k)
                fig.requests += 1
                asked = time.monotonic()
                rsp = child.ask(apdu, deadline)
                if rsp is None:
                    break
                in_flight = None
                m = model[k]
                if kind.startswith("select"):
                    expected = SW_OK
                else:
                    pace.note(time.monotonic() - asked)
                    if kind == "query":
                        expected = bytes((0x63, 0xC0 | m))
                    elif m == 0:
                        expected = SW_BLOCKED
                    elif kind == "wrong":
                        expected, model[k] = bytes((0x63, 0xC0 | (m - 1))), m - 1
                        fig.answered_wrong += 1
                    else:
                        expected, model[k] = SW_OK, limits[k]
                        fig.answered_right += 1
                if rsp != expected:
                    fig.violations.append(f"kill {n}: {k} {kind} answered {rsp.hex()}, the model says {expected.hex()}")
        finally:
            child.close()
        card = _after_kill(card_dir, fig, n)
        if card is None:
            break
        for k, status in card.key_status().items():
            m, tries = model[k], status["tries_left"]
            allowed = {m}
            if in_flight == ("wrong", k) and m > 0:
                allowed.add(m - 1)
            if in_flight == ("right", k) and m > 0:
                # Decrement, compare, reset: killed between the two writes the attempt costs a
                # try (as on a real card); killed after the reset the counter is full.
                allowed |= {m - 1, limits[k]}
            if tries not in allowed:
                fig.violations.append(
                    f"kill {n}: {k} has {tries} tries left on disk; the answers received allow {sorted(allowed)} "
                    f"(in flight: {in_flight})"
                )
            fig.in_flight_counted += in_flight == ("wrong", k) and tries == m - 1
            fig.right_in_flight_cost += in_flight == ("right", k) and tries == m - 1
            model[k] = tries
        for k in VERIFY_KEYS:
            if card.keyring[k].value != right[k]:
                fig.violations.append(f"kill {n}: the value of {k} changed")
            if model[k] == 0:
                admin.unblock(card, k)
                model[k] = limits[k]
                fig.unblocks += 1
    fig.elapsed = time.monotonic() - start
    return fig


def _verify_pair(card: Card, ap: str, fid: int, values: tuple[bytes, bytes]) -> list[bytes]:
    """Which of the two values VERIFY accepts; leaves the counter full again."""
    for apdu in _select(AID[ap], fid):
        card.transmit(apdu)
    accepted = [v for v in values if card.transmit(_apdu("00200080", v)) == SW_OK]
    if len(accepted) == 1:
        card.transmit(_apdu("00200080", accepted[0]))  # a match resets the counter the other cost
    return accepted


def run_change_kills(zygote: Zygote, card_dir: Path, kills: int, rng: random.Random, *,
                     max_delay: float = 0.02, mutation: str = "") -> Figures:
    """Kill children that alternate VERIFY and a PIN change; exactly the old or the new PIN must verify."""
    fig, start, pace = Figures(), time.monotonic(), _Pace(max_delay)
    card = Card.load(card_dir)
    where = key_locations(card)
    pairs = {k: (a.encode(), b.encode()) for k, (a, b) in CHANGE_PAIRS.items()}
    current = {k: card.keyring[k].value for k in CHANGE_PAIRS}  # the value the answers allow
    if any(current[k] not in pairs[k] for k in pairs):
        raise ValueError(f"{card_dir}: issue the card with the secrets of tests.conftest.SECRETS")
    for k in pairs:  # start from full counters: no wrong value is sent here
        if card.tries_left(k) != card.keyring[k].spec.limit:
            admin.unblock(card, k)
    for n in range(1, kills + 1):
        if len(fig.violations) > 20:
            break
        key = rng.choice(tuple(CHANGE_PAIRS))
        ap, fid = where[key]
        change = "00240180" if card.keyring[key].spec.change == "iso" else "80320080"
        _drop_tmp(card_dir)
        card.close()  # the child is the card's one writer now (a second process would be refused)
        child = Child(zygote, card_dir, mutation)
        try:
            if not child.ready():
                fig.violations.append(f"kill {n}: the child could not load the card")
                break
            deadline = time.monotonic() + pace.delay(rng)
            pending = _select(AID[ap], fid)
            in_flight, target, verified = None, b"", False
            while not child.dead:
                if pending:
                    kind, apdu = "select", pending.pop(0)
                elif not verified:
                    kind, apdu = "verify", _apdu("00200080", current[key])
                else:
                    target = pairs[key][1] if current[key] == pairs[key][0] else pairs[key][0]
                    kind, apdu = "change", _apdu(change, target)
                in_flight = kind
                fig.requests += 1
                asked = time.monotonic()
                rsp = child.ask(apdu, deadline)
                if rsp is None:
                    break
                in_flight = None
                if kind != "select":
                    pace.note(time.monotonic() - asked)
                if rsp != SW_OK:
                    fig.violations.append(f"kill {n}: {key} {kind} answered {rsp.hex()}")
                    continue
                if kind == "verify":
                    verified, fig.answered_right = True, fig.answered_right + 1
                elif kind == "change":
                    current[key], verified = target, False
                    fig.answered_changes += 1
        finally:
            child.close()
        card = _after_kill(card_dir, fig, n)
        if card is None:
            break
        allowed = {current[key]} | ({target} if in_flight == "change" else set())
        limit, tries = card.keyring[key].spec.limit, card.tries_left(key)
        # Only a right VERIFY killed between its decrement and its reset may cost a try.
        if tries != limit and not (in_flight == "verify" and tries == limit - 1):
            fig.violations.append(f"kill {n}: {key} lost a try though no wrong value was sent (in flight: {in_flight})")
        fig.right_in_flight_cost += tries == limit - 1
        accepted = _verify_pair(card, ap, fid, pairs[key])
        if len(accepted) != 1 or accepted[0] not in allowed:
            fig.violations.append(
                f"kill {n}: {key} accepts {[v.decode() for v in accepted]}; the answers allow exactly one of "
                f"{sorted(v.decode() for v in allowed)} (in flight: {in_flight})"
            )
            break
        current[key] = accepted[0]
        if card.tries_left(key) != card.keyring[key].spec.limit:
            fig.violations.append(f"kill {n}: {key} counter not full after a match")
    fig.elapsed = time.monotonic() - start
    return fig


# -- the tests ---------------------------------------------------------------------------------
def _seed() -> int:
    return int(os.environ.get("MYNAEMU_POWER_LOSS_SEED") or random.SystemRandom().randrange(2**32))


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    with Zygote() as z:
        yield z


def test_killed_wrong_verifies_are_never_uncounted(zygote: Zygote, card_dir: Path) -> None:
    seed = _seed()
    fig = run_verify_kills(zygote, card_dir, 200, random.Random(seed))
    assert fig.violations == [], f"seed {seed}: {fig}"
    assert fig.kills == 200
    # The kills landed mid-stream: attempts were answered, keys blocked, some kills tore a write.
    assert fig.answered_wrong > fig.kills and fig.unblocks > 0, fig
    assert fig.torn_writes > 0, fig


def test_killed_pin_changes_keep_exactly_the_old_or_the_new_pin(zygote: Zygote, card_dir: Path) -> None:
    seed = _seed()
    fig = run_change_kills(zygote, card_dir, 100, random.Random(seed))
    assert fig.violations == [], f"seed {seed}: {fig}"
    assert fig.kills == 100 and fig.answered_changes > fig.kills // 2 and fig.torn_writes > 0, fig


@pytest.mark.parametrize("mutation", sorted(_MUTATIONS))
def test_the_harness_catches_a_card_that_breaks_the_rule(zygote: Zygote, card_dir: Path, mutation: str) -> None:
    """Self-test: the same harness on a card broken on purpose finds violations."""
    runs = {"answer-before-write": run_verify_kills, "write-in-place": run_change_kills}
    fig = runs[mutation](zygote, card_dir, 200, random.Random(_seed()), mutation=mutation)
    assert fig.violations, fig


# -- writes that fail: a full disk, a read-only file system, a file size limit ------------------
@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted for this test (needs root and mount rights; skipped otherwise)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root; the in-process ENOSPC/EROFS faults of test_durability remain")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` until ENOSPC; returns the filler file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def _at_auth(card: Card) -> None:
    for apdu in _select(AID["jpki"], 0x0018):
        assert card.transmit(apdu) == SW_OK


def test_full_disk_refuses_wrong_verify_and_keeps_the_state(card_dir: Path, tmpfs: Path) -> None:
    work = tmpfs / "card"
    shutil.copytree(card_dir, work)
    card = Card.load(work)
    _at_auth(card)
    before = _snapshot(work / "state.json")
    filler = _fill(tmpfs)
    assert card.transmit(_apdu("00200080", b"0000")) == SW_MEMORY
    assert card.transmit(_apdu("00200080")) == b"\x63\xc3"  # nothing was counted, in memory either
    # The right value answers the same: its decrement cannot be written, so it is never compared.
    assert card.transmit(_apdu("00200080", b"1234")) == SW_MEMORY
    assert "auth" not in card.session.verified
    assert _snapshot(work / "state.json") == before
    assert Card.load(work, read_only=True).tries_left("auth") == 3
    filler.unlink()
    assert card.transmit(_apdu("00200080", b"0000")) == b"\x63\xc2"  # space again: counted and written
    assert Card.load(work, read_only=True).tries_left("auth") == 2


def test_full_disk_refuses_a_match_whose_reset_cannot_be_written(card_dir: Path, tmpfs: Path) -> None:
    work = tmpfs / "card"
    shutil.copytree(card_dir, work)
    card = Card.load(work)
    _at_auth(card)
    assert card.transmit(_apdu("00200080", b"0000")) == b"\x63\xc2"
    before = _snapshot(work / "state.json")
    _fill(tmpfs)
    assert card.transmit(_apdu("00200080", b"1234")) == SW_MEMORY  # no 9000 before the reset is durable
    assert "auth" not in card.session.verified
    assert card.transmit(_apdu("00240180", b"4321")) == b"\x69\x82"  # not verified: no change either
    assert _snapshot(work / "state.json") == before


def test_read_only_file_system_refuses_writes_and_keeps_the_state(card_dir: Path, tmpfs: Path) -> None:
    work = tmpfs / "card"
    shutil.copytree(card_dir, work)
    card = Card.load(work)
    _at_auth(card)
    before = _snapshot(work / "state.json")
    res = subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {res.stderr.strip()}")
    try:
        assert card.transmit(_apdu("00200080", b"0000")) == SW_MEMORY
        assert card.transmit(_apdu("00200080", b"1234")) == SW_MEMORY  # no decrement, no comparison
        assert card.transmit(_apdu("00240180", b"4321")) == b"\x69\x82"  # hence not verified
        assert _snapshot(work / "state.json") == before
        card.close()
        reloaded = Card.load(work)  # a read-only card directory still loads
        assert reloaded.tries_left("auth") == 3 and reloaded.keyring["auth"].value == b"1234"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], capture_output=True)


_FSIZE_CHILD = """
import resource, signal, sys
from mynaemu import Card
card = Card.load(sys.argv[1])
# Python ignores SIGXFSZ (the write then fails with EFBIG); "signal" restores the default: death.
signal.signal(signal.SIGXFSZ, signal.SIG_DFL if sys.argv[2] == "signal" else signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))
for apdu in ("00A4040C0AD392F000260100000001", "00A4020C020018", "002000800430303030", "002000800431323334"):
    print(card.transmit(bytes.fromhex(apdu)).hex(), flush=True)
"""


@pytest.mark.parametrize("outcome", ["efbig", "signal"])
def test_file_size_limit_refuses_wrong_verify_and_keeps_the_state(card_dir: Path, outcome: str) -> None:
    """RLIMIT_FSIZE below the state's size: the write fails (EFBIG) or SIGXFSZ kills the process."""
    before = _snapshot(card_dir / "state.json")
    res = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(card_dir), outcome], capture_output=True,
                         text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    answers = res.stdout.split()
    if outcome == "efbig":
        assert res.returncode == 0, res.stderr
        assert answers == ["9000", "9000", "6581", "6581"]  # right or wrong: uncompared
    else:
        assert res.returncode == -25, res.stderr  # SIGXFSZ: the process dies inside the write
        assert answers == ["9000", "9000"]  # ... and the wrong attempt got no answer
    assert _snapshot(card_dir / "state.json") == before
    assert Card.load(card_dir, read_only=True).tries_left("auth") == 3
