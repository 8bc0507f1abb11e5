"""The ``mynaemu`` command: issue, inspect, script, administer and serve emulated cards.

Secrets (PINs, passwords, replay variables) can be given four ways, first found wins: as an
argument (readable by other local users in /proc/PID/cmdline, so for tests and demos), from a file
(``--auth-pin-file F``, ``-`` = stdin, first line), from an environment variable (``SECRET_ENV``),
or, when a value is needed and stdin is a terminal, from a prompt that does not echo.

Every error is one line on stderr, ``mynaemu COMMAND: error: ...``: exit code 2 for a usage
error (a bad option or value, a card directory that cannot be used), 1 for a runtime failure (a
full disk, no pcscd, a closed pipe). Secrets never appear in an error message.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import random
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from . import sw
from .authority import cli as authority_cli  # light: argparse registration; its commands import the rest
from .private_files import make_private_dirs
from .redact import mask_command, mask_hex_text, scrub

if TYPE_CHECKING:
    from . import admin
    from .authority.cli import certificate_report
    from .card import Card
    from .controls import CardControls
    from .keys import StorageFailure
    from .profile import Profile, ProfileError
    from .state import CardBusyError, StateError

KEY_NAMES = ("auth", "sign", "text", "juki", "common", "text-a", "text-b", "visual-a", "visual-b", "visual-birth")
SEXES = {"male": "1", "m": "1", "1": "1", "female": "2", "f": "2", "2": "2", "n/a": "9", "9": "9"}


# Environment variables that hold secrets (documented in README.md, "Secrets").
SECRET_ENV = {
    "auth": "MYNAEMU_AUTH_PIN",
    "sign": "MYNAEMU_SIGN_PIN",
    "text": "MYNAEMU_TEXT_PIN",
    "juki": "MYNAEMU_JUKI_PIN",
    "new": "MYNAEMU_NEW_VALUE",
    "other": "MYNAEMU_OTHER_VALUE",
}
# Transcript variables that are secrets, and the secret each is (for the env and the prompt).
SECRET_VARS = {"auth_pin": "auth", "sign_pin": "sign", "text_pin": "text", "juki_pin": "juki", "common_pin": "juki"}
MAX_SECRET_FILE = 64 * 1024


def _import_commands() -> None:
    """Import what the commands use, once a command is known: `mynaemu --help` (and a usage error)
    never pays for the card, its keys and the certificate tooling (~70 ms)."""
    global admin, Card, StorageFailure, Profile, ProfileError, StateError, CardBusyError, certificate_report
    from . import admin
    from .authority.cli import certificate_report
    from .card import Card
    from .keys import StorageFailure
    from .profile import Profile, ProfileError
    from .state import CardBusyError, StateError


def _usage_errors() -> tuple[type[BaseException], ...]:
    """The errors a command reports as a usage error (exit 2).

    IssuanceError only once ``mynaemu.issuance`` is imported: only the issuing commands import it
    (with the certificate and image tooling, ~20 ms that ``serve`` does not pay), and nothing
    else raises it.
    """
    _import_commands()  # a command that imports lazily (serve) may fail before it did
    errors: list[type[BaseException]] = [UsageError, admin.AdminError, StateError, ProfileError]
    issuance = sys.modules.get(f"{__package__}.issuance")
    if issuance is not None:
        errors.append(issuance.IssuanceError)
    return tuple(errors)


class UsageError(Exception):
    """A command-line mistake; the message says what to do (exit code 2)."""


class RuntimeFailure(Exception):
    """Something outside the command line failed (exit code 1); the message says what to do."""


class _Session:
    """What one ``main`` call has seen: secrets to scrub from messages, whether stdin was read."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.stdin_used_by: str | None = None


_session = _Session()


def _remember(value: str | None) -> str | None:
    if value:
        _session.secrets.add(value)
    return value


def _read_secret_file(option: str, name: str) -> str:
    """The first line of file ``name`` (``-`` = stdin), without its line end."""
    if name == "-":
        if _session.stdin_used_by is not None:
            raise UsageError(f"{option} -: stdin is already read for {_session.stdin_used_by}; use a file for one of them")
        _session.stdin_used_by = option
        line = sys.stdin.readline(MAX_SECRET_FILE)
    else:
        try:
            with open(name, encoding="utf-8") as f:
                line = f.readline(MAX_SECRET_FILE)
        except FileNotFoundError:
            raise UsageError(f"{option} {name}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"{option} {name}: is a directory; give a file holding the value") from None
        except UnicodeDecodeError:
            raise UsageError(f"{option} {name}: not UTF-8 text") from None
        except OSError as exc:
            raise UsageError(f"{option} {name}: cannot be read ({exc.strerror or exc})") from None
    value = line.rstrip("\r\n")
    if not value:
        raise UsageError(f"{option} {name}: holds no value on its first line")
    return value


def secret_value(what: str, *, arg: str | None, arg_name: str, file: str | None, file_option: str,
                 env: str, prompt: str | None = None, confirm: bool = False) -> str | None:
    """A secret from, in order: the argument, a file, the environment, a no-echo prompt (or None)."""
    if arg is not None and file is not None:
        raise UsageError(f"give {what} once: {arg_name} or {file_option}, not both")
    if arg is not None:
        return _remember(arg)
    if file is not None:
        return _remember(_read_secret_file(file_option, file))
    if os.environ.get(env):
        return _remember(os.environ[env])
    if prompt is not None and sys.stdin.isatty():
        try:
            value = getpass.getpass(prompt)
            if confirm and value and getpass.getpass("Again: ") != value:
                raise UsageError(f"{what}: the two entries differ; nothing was changed")
        except EOFError:
            value = ""
        if not value:
            raise UsageError(f"{what}: nothing entered; nothing was changed")
        return _remember(value)
    return None


def data_dir() -> Path:
    """Where mynaemu keeps per-user data (the demo card, the emulated authority)."""
    from .private_files import data_dir as per_user_data_dir

    return per_user_data_dir()


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700: it holds keys and cards other users must not swap."""
    try:
        make_private_dirs(path)
        path.chmod(0o700)
    except OSError as exc:
        raise RuntimeFailure(f"{path}: cannot be the data directory ({exc.strerror or exc}); "
                             "point MYNAEMU_DATA_DIR at a directory of yours") from None
    return path


# -- issue ---------------------------------------------------------------------------------------
def _persona(args: argparse.Namespace):
    from dataclasses import replace

    from .persona import MEIJI_START, Persona

    birth = None
    if args.birth:
        try:
            birth = date.fromisoformat(args.birth)
        except ValueError:
            raise UsageError(f"--birth {args.birth!r}: give the birth date as YYYY-MM-DD") from None
        # 照合番号B writes the birth date in the Japanese era, which starts with Meiji.
        if not MEIJI_START <= birth <= date.today():
            raise UsageError(f"--birth {args.birth}: the birth date must be from {MEIJI_START} (the Meiji era) to today")
    sex = None
    if args.sex:
        sex = SEXES.get(args.sex.lower())
        if sex is None:
            raise UsageError(f"--sex {args.sex!r}: use male, female or n/a (or 1, 2, 9)")
    rng = random.Random(args.seed) if args.seed is not None else None
    try:
        persona = Persona.generate(rng, name=args.name, birth=birth, sex=sex, my_number=args.my_number)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.kana is not None:
        family, _, given = args.kana.partition("\u3000")
        if not family or not given:
            raise UsageError("--kana: separate family and given name with an ideographic space (U+3000)")
        try:
            persona = replace(persona, family_name_kana=family, given_name_kana=given)
        except ValueError as exc:
            raise UsageError(f"--kana: {exc}") from None
    if args.address is not None:
        try:
            persona = replace(persona, address=args.address)
        except ValueError as exc:
            raise UsageError(f"--address: {exc}") from None
    return persona


def _variant_names() -> list[str]:
    """The default profile's card variants, for --help (a broken install lists just "default").

    Its ``[variants.NAME]`` headers, found in the text: building the parser must not parse the
    profile (tomllib and importlib.resources were 20 ms of every `--help`). `issue` checks the
    name against the parsed profile; a test checks that the two lists agree."""
    import re

    import apdu_specs

    try:
        text = (Path(apdu_specs.__file__).parent / "profile.toml").read_text(encoding="utf-8")
    except (OSError, TypeError, ValueError):
        return ["default"]
    return ["default", *re.findall(r"(?m)^\[variants\.([A-Za-z0-9_-]+)\]", text)]


def cmd_issue(args: argparse.Namespace) -> int:
    from .issuance import issue_card

    secrets = {
        key: secret_value(f"the {key} PIN", arg=getattr(args, f"{key}_pin"), arg_name=f"--{key}-pin",
                          file=getattr(args, f"{key}_pin_file"), file_option=f"--{key}-pin-file", env=SECRET_ENV[key])
        for key in ("auth", "sign", "text", "juki")
    }
    persona = _persona(args)
    private_dir(data_dir())
    try:
        profile = Profile.load(args.profile)
        if args.variant not in profile.variant_names():
            raise UsageError(f"--variant: invalid choice {args.variant!r} (choose from {', '.join(profile.variant_names())})")
        issued = issue_card(args.card_dir, persona=persona, secrets=secrets, profile=profile, variant=args.variant)
    except OSError as exc:
        raise RuntimeFailure(f"{exc.strerror or exc}") from None
    p = issued.persona
    print(f"Issued an emulated My Number card in {issued.path}")
    print(f"  name        {p.name} ({p.name_kana})")
    print(f"  birth       {p.birth.isoformat()}   sex {p.sex}")
    print(f"  card expiry {p.card_expiry.isoformat()}   certificates {p.cert_expiry.isoformat()}")
    print("Secrets (shown this once; keep them):")
    print(f"  auth PIN          {issued.secrets['auth']}")
    print(f"  signing password  {issued.secrets['sign']}")
    print(f"  input-assist PIN  {issued.secrets['text']}")
    print(f"  住基/common PIN    {issued.secrets['juki']}")
    print(f"  My Number (照合番号A) {p.my_number}   security code {p.security_code}")
    return 0


# -- info ----------------------------------------------------------------------------------------
def _card_persona(card: Card):
    """The card's persona from card.json, or a StateError naming the file."""
    from .issuance import persona_from_json

    doc = card.dir.meta.get("persona")
    try:
        if not isinstance(doc, dict):
            raise TypeError
        return persona_from_json(doc)
    except (KeyError, TypeError, ValueError):
        raise StateError(f"{card.dir.path / 'card.json'}: has no valid persona; the card directory is damaged "
                         "(restore it from a backup or re-issue the card)") from None


def cmd_info(args: argparse.Namespace) -> int:
    card = Card.load(args.card_dir, read_only=True)  # works beside a served card
    p = _card_persona(card)
    # The security code is the secret part of 照合番号B: shown once at issuance, never again.
    persona = {k: ("****" if k == "security_code" else v) for k, v in card.dir.meta["persona"].items()}
    apps = {name: {"aid": ap.aid.hex().upper(), "title": ap.spec.title} for name, ap in card.applications.items()}
    keys = card.key_status()
    cert_lines, certs = certificate_report(card, args.at)  # validity and status at --at (card time)
    kind = card.dir.meta.get("kind")
    secrets = _published_secrets(card, args.card_dir) if args.secrets else None
    if args.json:
        doc = {"card_id": card.dir.card_id, "kind": kind, "variant": card.profile.variant, "persona": persona,
               "applications": apps, "keys": keys, "clock_offset_seconds": int(card.clock_offset.total_seconds()),
               "certificates": certs}
        if secrets is not None:
            doc["secrets"] = secrets
        json.dump(doc, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    print(f"Card {card.dir.card_id} in {card.dir.path}, variant {card.profile.variant}")
    print(f"  {p.name} ({p.name_kana}), born {p.birth.isoformat()}, sex {p.sex}")
    print(f"  {p.address}")
    print(f"  card expiry {p.card_expiry.isoformat()}, certificates {p.cert_expiry.isoformat()}")
    if card.clock_offset:
        print(f"  card clock offset {int(card.clock_offset.total_seconds()):+d} s: card time "
              f"{card.now().replace(microsecond=0).isoformat()}")
    if card.dir.meta.get("suspended"):
        print(f"  SUSPENDED since {card.dir.meta['suspended']}: its JPKI certificates are revoked")
    print("Certificates:")
    for line in cert_lines:
        print(f"  {line}")
    print("Applications:")
    for name, a in apps.items():
        print(f"  {name:<7} {a['aid']:<22} {a['title']}")
    print("Keys:")
    for name, k in keys.items():
        state = "BLOCKED" if k["blocked"] else "ok"
        print(f"  {name:<14} {k['tries_left']:>2}/{k['limit']:<2} {state:<8} {k['label']}")
    if secrets is not None:
        print(f"Secrets ({kind} card; published, not secret):")
        for name, value in secrets.items():
            print(f"  {name:<5} {value}")
    return 0


def _published_secrets(card: Card, card_dir: Path) -> dict[str, str]:
    """The current secrets of a demo or test card; UsageError for any other card."""
    if card.dir.meta.get("kind") not in ("demo", "test"):
        raise UsageError(f"{card_dir} is not a demo or test card: its secrets were shown once, at issuance, "
                         f"and are never shown again (`mynaemu admin {card_dir} reset-pin KEY NEW` sets a new one)")
    return {k: card.keyring[k].value.decode("ascii") for k in ("auth", "sign", "text", "juki")}


# -- send ----------------------------------------------------------------------------------------
MAX_APDU = 4 + 3 + 65535 + 3  # header, extended Lc, data, extended Le


def _parse_apdus(texts: list[str]) -> list[bytes]:
    apdus = []
    for n, text in enumerate(texts, 1):
        cleaned = "".join(text.split())
        try:
            apdu = bytes.fromhex(cleaned)
        except ValueError:
            # Shown through the masking rule: a typo in a VERIFY must not echo its PIN.
            raise UsageError(f"APDU {n} ({mask_hex_text(text) or 'empty'}) is not an APDU in hex: whole bytes of "
                             "0-9A-F (e.g. 00A4040C0AD392F000260100000001)") from None
        if not 4 <= len(apdu) <= MAX_APDU:
            raise UsageError(f"APDU {n} ({mask_command(apdu) or 'empty'}) is {len(apdu)} bytes; "
                             f"an APDU is 4 to {MAX_APDU} bytes")
        apdus.append(apdu)
    return apdus


def _print_exchange(apdu: bytes, resp: bytes) -> None:
    print(f"{mask_command(apdu)} -> {resp.hex().upper()}  {sw.describe(resp[-2:])}")


def cmd_send(args: argparse.Namespace) -> int:
    texts = ([args.card_dir] if args.reader is not None else []) + args.apdu
    if not texts:
        raise UsageError("the following arguments are required: APDU_HEX")
    apdus = _parse_apdus(texts)
    if args.reader is not None:
        transmit = _reader_transmit(args.reader)
        for apdu in apdus:
            _print_exchange(apdu, transmit(apdu))
        return 0
    target = _load_or_channel(Path(args.card_dir))
    if not isinstance(target, Card):
        # A served card: one request, so no reader client's command comes between these.
        with target:
            answer = _remote(target, "transmit", apdus=[a.hex().upper() for a in apdus])
        for apdu, resp in zip(apdus, answer["responses"], strict=True):
            _print_exchange(apdu, bytes.fromhex(resp))
        return 0
    card = target
    try:
        card.power_on()
        for apdu in apdus:
            _print_exchange(apdu, card.transmit(apdu))
        card.power_off()
    finally:
        card.close()
    return 0


# -- served cards: the control channel -------------------------------------------------------------
def _channel(card_dir: Path):
    """A ControlClient to the serve of ``card_dir``, None when it is not served."""
    from .channel import ChannelError, ControlClient

    try:
        return ControlClient.connect(card_dir)
    except ChannelError as exc:
        raise RuntimeFailure(str(exc)) from None


def _load_or_channel(card_dir: Path):
    """The card for writing, or, when a ``serve`` holds it, a ControlClient to that serve."""
    try:
        return Card.load(card_dir)
    except CardBusyError:
        client = _channel(card_dir)
        if client is None:
            raise  # held by a process without a control channel: say it is in use
        return client


def _remote(client, op: str, **fields) -> dict:
    """One request to a served card; a refusal is a usage error, a failure a runtime one."""
    from .channel import ChannelError

    try:
        answer = client.request(op, **fields)
    except ChannelError as exc:
        raise RuntimeFailure(str(exc)) from None
    if not answer["ok"]:
        message = str(answer.get("error") or "refused")
        raise RuntimeFailure(message) if answer.get("kind") == "failed" else UsageError(message)
    return answer


# -- admin ---------------------------------------------------------------------------------------
def _new_value(args: argparse.Namespace) -> str:
    value = secret_value(f"the new value of {args.key}", arg=args.new, arg_name="NEW", file=args.new_value_file,
                         file_option="--new-value-file", env=SECRET_ENV["new"], prompt=f"New value for {args.key}: ",
                         confirm=True)
    if value is None:
        raise UsageError(f"give the new value of {args.key}: as NEW, with --new-value-file FILE (- = stdin), in "
                         f"{SECRET_ENV['new']}, or run on a terminal to be asked")
    return value


def cmd_admin(args: argparse.Namespace) -> int:
    if args.action in authority_cli.LIFECYCLE_ACTIONS:  # the authority's records: works beside `serve`
        return authority_cli.cmd_lifecycle(args)
    if args.action == "reset-pin":
        new = _new_value(args)
    elif args.action == "kiosk-reset":
        partner = admin.KIOSK_PARTNER[args.key]
        other = secret_value(f"the current {partner} value", arg=args.other, arg_name="--other", file=args.other_file,
                             file_option="--other-file", env=SECRET_ENV["other"],
                             prompt=f"Current value of the {partner} secret: ")
        if other is None:
            raise UsageError(f"give the current {partner} value: --other-file FILE (- = stdin), "
                             f"{SECRET_ENV['other']}, --other VALUE, or run on a terminal to be asked")
        new = _new_value(args)
    new = new if args.action in ("reset-pin", "kiosk-reset") else ""
    other = other if args.action == "kiosk-reset" else ""
    card = _load_or_channel(args.card_dir)
    if not isinstance(card, Card):
        with card:  # served: the serving process, the card's one writer, does it
            return _admin_remote(card, args, new, other)
    try:
        return _admin_action(card, args, new, other)
    except StorageFailure as exc:
        raise RuntimeFailure(f"the card's state could not be written ({exc}); nothing was changed") from None
    finally:
        card.close()


def _admin_remote(client, args: argparse.Namespace, new: str, other: str) -> int:
    if args.action == "suspend":
        from .pki import default_authority_dir

        answer = _remote(client, "suspend", authority_dir=str(default_authority_dir()))
        _print_suspended(answer["crls"])
        return 0
    fields = {"unblock": {}, "reset-pin": {"new": new}, "kiosk-reset": {"new": new, "other": other}}[args.action]
    answer = _remote(client, args.action, key=args.key, **fields)
    done = {"unblock": "unblocked", "reset-pin": "new value set", "kiosk-reset": "new value set at the kiosk"}
    print(f"{args.key}: {done[args.action]}, {answer['tries_left']} tries")
    return 0


def _print_suspended(crls: dict) -> None:
    print("Card suspended: its JPKI certificates are revoked; the card still answers as before.")
    for which, path in crls.items():
        print(f"  {which} CRL: {path}")


def _admin_action(card: Card, args: argparse.Namespace, new: str, other: str) -> int:
    if args.action == "unblock":
        admin.unblock(card, args.key)
        print(f"{args.key}: unblocked, {card.tries_left(args.key)} tries")
    elif args.action == "reset-pin":
        admin.reset_pin(card, args.key, new)
        print(f"{args.key}: new value set, {card.tries_left(args.key)} tries")
    elif args.action == "kiosk-reset":
        admin.kiosk_reset(card, args.key, new, other)
        print(f"{args.key}: new value set at the kiosk, {card.tries_left(args.key)} tries")
    else:
        from .controls import ControlFailure, suspend_card

        try:
            crls = suspend_card(card)["crls"]
        except ControlFailure as exc:
            raise RuntimeFailure(str(exc)) from None
        _print_suspended(crls)
    return 0


# -- replay --------------------------------------------------------------------------------------
def _reader_transmit(name: str):
    """A transmit function for a PC/SC reader (a real card, or a served one)."""
    try:
        from smartcard.Exceptions import SmartcardException
        from smartcard.System import readers
    except ImportError:
        raise UsageError("--reader needs pyscard: pip install 'mynaemu[pcsc]'") from None
    from reader_bridge.pcscd import pcscd_running

    if not pcscd_running():
        raise RuntimeFailure("no pcscd is running, so there is no reader; start pcscd (or `mynaemu serve`) first")
    try:
        listed = [str(r) for r in readers()]
        found = [r for r in readers() if str(r) == name or str(r).startswith(name)]
        if not found:
            raise UsageError(f"no reader named {name!r}; readers: {listed}")
        conn = found[0].createConnection()
        conn.connect()
    except SmartcardException as exc:
        raise RuntimeFailure(f"reader {name!r}: {' '.join(str(exc).split())}") from None

    def transmit(apdu: bytes) -> bytes:
        try:
            data, sw1, sw2 = conn.transmit(list(apdu))
        except SmartcardException as exc:
            raise RuntimeFailure(f"reader {name!r}: the card stopped answering ({' '.join(str(exc).split())})") from None
        return bytes(data) + bytes((sw1, sw2))

    return transmit


def _replay_variables(args: argparse.Namespace) -> dict[str, object]:
    """Variables from --var-file, then --var (later ones win), then (for a reader) the secrets' environment.

    Against an emulated card its own values are used unless a variable is given explicitly.
    """
    items = _var_items(args)
    variables: dict[str, object] = dict(items)
    for var, key in SECRET_VARS.items():
        if args.reader is not None and var not in variables and os.environ.get(SECRET_ENV[key]):
            variables[var] = _remember(os.environ[SECRET_ENV[key]])
    return variables


def cmd_replay(args: argparse.Namespace) -> int:
    from .transcript import TRANSCRIPT_DIR, TranscriptError, card_variables, load_transcript, replay, transcript_files

    if args.list:
        from .transcript import TRANSCRIPT_DIR

        files = transcript_files()
        if not files:
            raise UsageError(f"no transcripts in {TRANSCRIPT_DIR} (a mynaemu installed without its package data?)")
        for path in files:
            print(path.name.removesuffix(".txt"))
        return 0
    if not args.flow:
        raise UsageError("name at least one transcript (see --list)")
    if (args.card is None) == (args.reader is None):
        raise UsageError("give exactly one of --card CARD_DIR (the emulator) or --reader NAME (PC/SC)")
    given = _replay_variables(args)
    transcripts = []
    for flow in args.flow:
        path = Path(flow)
        if not path.exists() and path.parent == Path() and (TRANSCRIPT_DIR / path.with_suffix(".txt").name).exists():
            path = TRANSCRIPT_DIR / path.with_suffix(".txt").name
        try:
            transcripts.append(load_transcript(path))
        except TranscriptError as exc:
            raise UsageError(str(exc)) from None
    variables: dict[str, object] = {}
    if args.card is not None:
        card = Card.load(args.card)
        secrets = {k: card.keyring[k].value.decode("ascii") for k in ("auth", "sign", "text", "juki")}
        variables.update(card_variables(card, secrets))
        transmit = card.transmit
    else:
        # A real card: ask for the PINs the flows need and nobody gave, before anything is sent.
        needed = sorted({n for t in transcripts for n in t.variables_needed()} - set(given))
        for var in needed:
            if var in SECRET_VARS and sys.stdin.isatty():
                value = secret_value(var, arg=None, arg_name="", file=None, file_option="",
                                     env=SECRET_ENV[SECRET_VARS[var]], prompt=f"{var}: ")
                if value is not None:
                    given[var] = value
        transmit = _reader_transmit(args.reader)
    variables.update(given)
    failed = 0
    for flow, transcript in zip(args.flow, transcripts, strict=True):
        if args.card is not None and transcript.variant not in (None, card.profile.variant):
            raise UsageError(f"{flow}: a flow for card variant {transcript.variant!r}; this card is "
                             f"{card.profile.variant!r} (issue one with --variant {transcript.variant})")
        if args.card is not None:
            card.power_on()  # every transcript starts in the power-on state
        try:
            result = replay(transcript, transmit, variables)
        except TranscriptError as exc:
            raise UsageError(str(exc)) from None
        print(f"{flow}: {result.summary()}")
        failed += not result.ok
    return 1 if failed else 0


# -- keypool -------------------------------------------------------------------------------------
def cmd_keypool(args: argparse.Namespace) -> int:
    from .keypool import KeyPool, default_pool_dir

    pool = KeyPool(default_pool_dir())
    if args.action == "fill":
        if args.count < 0:
            raise UsageError(f"fill {args.count}: give the number of keys the pool should hold (6 per card)")
        private_dir(data_dir())
        try:
            added = pool.fill(args.count)
        except PermissionError as exc:
            raise UsageError(str(exc)) from None
        print(f"{pool.directory}: {pool.count()} keys ({added} generated now)")
    else:
        print(f"{pool.directory}: {pool.count()} keys")
    return 0


# -- ctl: scenario controls ---------------------------------------------------------------------
_OFFSET_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _offset_seconds(text: str, option: str) -> int:
    """``+400d``, ``-2h``, ``90m``, ``-3600``: a clock offset in seconds."""
    import re

    m = re.fullmatch(r"([+-]?)(\d{1,12})([smhd]?)", text.strip())
    if m is None:
        raise UsageError(f"{option} {text!r}: write a whole number with an optional unit s, m, h or d (e.g. +400d, "
                         "-- -2h)")
    seconds = int(m.group(2)) * _OFFSET_UNITS[m.group(3) or "s"]
    return -seconds if m.group(1) == "-" else seconds


def ctl_request(args: argparse.Namespace) -> dict:
    """The control request (``mynaemu.controls``) that parsed ``ctl`` arguments ask for."""
    op = args.op
    if op in ("set-tries",):
        return {"op": op, "key": args.key, "tries": args.tries}
    if op in ("block", "unblock"):
        return {"op": op, "key": args.key}
    if op == "reset-pin":
        return {"op": op, "key": args.key, "new": _new_value(args)}
    if op == "fault":
        request: dict = {"op": op, "kind": args.kind}
        for field in ("match", "mask", "at_apdu", "seconds", "times"):
            if getattr(args, field) is not None:
                request[field] = getattr(args, field)
        return request
    if op == "clock-offset":
        chosen = [x for x in (args.offset is not None, args.shift is not None, args.expire, args.not_yet_valid) if x]
        if len(chosen) != 1:
            raise UsageError("clock-offset: give one of OFFSET, --shift OFFSET, --expire, --not-yet-valid")
        if args.offset is not None:
            return {"op": op, "seconds": _offset_seconds(args.offset, "OFFSET")}
        if args.shift is not None:
            return {"op": op, "shift": _offset_seconds(args.shift, "--shift")}
        return {"op": op, "expire": True} if args.expire else {"op": op, "not_yet_valid": True}
    return {"op": op}


def describe_answer(request: dict, answer: dict) -> list[str]:
    """An answer of the control channel as lines for people."""
    op = request["op"]
    if op == "status":
        where = {None: "not in a reader", True: "in the reader", False: "removed from the reader"}[answer["inserted"]]
        keys = ", ".join(f"{k} {v['tries_left']}/{v['limit']}{' BLOCKED' if v['blocked'] else ''}"
                         for k, v in answer["keys"].items())
        faults = "; ".join(" ".join(f"{k}={v}" for k, v in f.items()) for f in answer["faults"]) or "none"
        lines = [f"card {answer['card_id']} in {answer['card_dir']}: {where}",
                 f"  keys: {keys}",
                 f"  clock offset {answer['clock_offset_seconds']:+d} s, card time {answer['card_time']}",
                 f"  faults: {faults}"]
        if answer.get("suspended"):
            lines.append(f"  SUSPENDED since {answer['suspended']}")
        return lines
    if "tries_left" in answer:
        return [f"{answer['key']}: {answer['tries_left']}/{answer['limit']} tries"]
    if op == "clock-offset":
        return [f"clock offset {answer['clock_offset_seconds']:+d} s, card time {answer['card_time']}"]
    if op in ("remove", "insert"):
        return ["inserted" if answer["inserted"] else "removed"]
    if op == "fault":
        return ["armed: " + " ".join(f"{k}={v}" for k, v in answer["fault"].items())]
    if op == "clear-faults":
        return [f"{answer['cleared']} fault(s) cleared"]
    facts = {k: v for k, v in answer.items() if k != "ok"}
    return [f"{op}: {json.dumps(facts, ensure_ascii=False)}"]


def cmd_ctl(args: argparse.Namespace) -> int:
    from .controls import CardControls

    request = ctl_request(args)
    target = _load_or_channel(args.card_dir)
    if isinstance(target, Card):  # not served: what needs no reader works on the card directly
        try:
            answer = CardControls(target).handle(request)
        finally:
            target.close()
        if not answer["ok"]:
            message = str(answer.get("error"))
            raise RuntimeFailure(message) if answer.get("kind") == "failed" else UsageError(message)
    else:
        with target:
            answer = _remote(target, args.op, **{k: v for k, v in request.items() if k != "op"})
    if args.json:
        print(json.dumps(answer, ensure_ascii=False))
    else:
        for line in describe_answer(request, answer):
            print(line)
    return 0


# -- run: APDU scripts -----------------------------------------------------------------------------
def _var_items(args: argparse.Namespace) -> list[tuple[str, str]]:
    """NAME=VALUE pairs from --var-file, then --var (later ones win)."""
    items: list[tuple[str, str]] = []
    if args.var_file is not None:
        if args.var_file == "-":
            if _session.stdin_used_by is not None:
                raise UsageError("--var-file -: stdin is already read")
            _session.stdin_used_by = "--var-file"
            text = sys.stdin.read(MAX_SECRET_FILE)
        else:
            try:
                text = Path(args.var_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else (exc.strerror or str(exc))
                raise UsageError(f"--var-file {args.var_file}: cannot be read ({why})") from None
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                name, sep, value = line.partition("=")
                if not sep or not name.strip():
                    raise UsageError(f"--var-file {args.var_file}: line {n}: write NAME=VALUE (e.g. auth_pin=1234)")
                items.append((name.strip(), value))
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--var {mask_hex_text(item) if not sep else name + '=…'}: write NAME=VALUE (e.g. auth_pin=1234)")
        items.append((name, value))
    for _name, value in items:
        _remember(value)
    return items


def cmd_run(args: argparse.Namespace) -> int:
    from .apduscript import ScriptError, parse_script, run_script

    if (args.card_dir is None) == (args.reader is None):
        raise UsageError("give exactly one of CARD_DIR (an emulated card, served or not) or --reader NAME (PC/SC)")
    try:
        text = args.script.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else (exc.strerror or str(exc))
        raise UsageError(f"{args.script}: cannot be read ({why})") from None
    try:
        lines = parse_script(text)
    except ScriptError as exc:
        raise UsageError(f"{args.script} {exc}") from None
    values = dict(_var_items(args))
    for name in sorted({n for line in lines for n in line.variables()} - set(values)):
        for env in (name, f"MYNAEMU_{name}"):
            if os.environ.get(env):
                values[name] = _remember(os.environ[env])  # type: ignore[assignment]
                break

    def show(line, command: bytes, response: bytes) -> None:
        if not args.quiet:
            print(f"{line.number:>4}: {mask_command(command)} -> {response.hex().upper()}")

    close = None
    if args.reader is not None:
        transmit = _reader_transmit(args.reader)
    else:
        target = _load_or_channel(args.card_dir)
        if isinstance(target, Card):
            target.power_on()
            transmit, close = target.transmit, target.close
        else:
            def transmit(apdu: bytes) -> bytes:
                return bytes.fromhex(_remote(target, "transmit", apdus=[apdu.hex().upper()])["responses"][0])

            close = target.close
    try:
        mismatch = run_script(lines, values, transmit, show)
    except ScriptError as exc:
        raise UsageError(f"{args.script} {exc}") from None
    finally:
        if close is not None:
            close()
    if mismatch is not None:
        expected = mismatch.line.expect
        raise RuntimeFailure(f"{args.script} line {mismatch.line.number}: expected {expected}, got "
                             f"{mismatch.response.hex().upper()} (for {mask_command(mismatch.command)})")
    print(f"{args.script}: {len(lines)} command(s), every answer as expected")
    return 0


# -- serve ---------------------------------------------------------------------------------------
def demo_card_dir() -> Path:
    """The demo card that ``mynaemu serve`` issues once and reuses."""
    return data_dir() / "demo-card"


def _demo_card(path: Path) -> None:
    """Issue the demo card into ``path`` unless it holds one; say which PINs it has."""
    from .testing import TEST_SECRETS, issue_test_card

    pins = ", ".join(f"{name} {value}" for name, value in TEST_SECRETS.items())
    if not (path / "card.json").exists():
        issue_test_card(path, kind="demo")
        print(f"Issued the demo card in {path}")
    elif Card.load(path, read_only=True).dir.meta.get("kind") != "demo":  # issued before the fixed demo PINs
        print(f"Note: the demo card in {path} was issued with random PINs, shown once then; remove {path} "
              f"to get a demo card with the documented demo PINs ({pins}).")
        return
    print(f"Demo card PINs: {pins} (`mynaemu info --secrets {path}` shows them)")


CONTROL_HELP = ("commands: remove [SLOT] | insert [SLOT] | status | quit   (SLOT defaults to the first); "
                "any `mynaemu ctl` command, e.g. `block auth`, `1 set-tries sign 2` (a leading number is the slot)")


def control_from_stdin(controls: dict, out=None):
    """A ``serve --interactive`` loop: lines on stdin become scenario controls (``mynaemu.controls``)."""
    out = out or sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    def status_line(slot: int) -> str:
        answer = controls[slot].handle({"op": "status"})
        where = "inserted" if answer["inserted"] else "removed"
        left = ", ".join(f"{k} {v['tries_left']}/{v['limit']}" for k, v in answer["keys"].items())
        return f"slot {slot}: {where}; {left}"

    def control(readers, stop) -> None:
        first = min(controls)
        say(CONTROL_HELP)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            command = words[0].lower()
            if command in ("q", "quit", "exit"):
                stop.set()
                return
            if command in ("s", "status") and len(words) == 1:
                for slot in sorted(controls):
                    say(status_line(slot))
                continue
            slot_word = None
            if words[0].isdigit():
                slot_word, words = words[0], words[1:]
            elif command in ("r", "remove", "i", "insert", "s", "status") and len(words) == 2:
                slot_word, words = words[1], [command]
            try:
                slot = first if slot_word is None else int(slot_word)
            except ValueError:
                say(f"not a slot: {slot_word!r}")
                continue
            if slot not in controls:
                say(f"no card for slot {slot} (slots: {sorted(controls)})")
                continue
            words[0] = {"r": "remove", "i": "insert", "s": "status"}.get(words[0].lower(), words[0].lower())
            if words == ["status"]:
                say(status_line(slot))
                continue
            try:
                args = _CTL_PARSER.parse_args(words)
                request = ctl_request(args)
            except (SystemExit, UsageError) as exc:
                say(str(exc) if isinstance(exc, UsageError) else CONTROL_HELP)
                continue
            answer = controls[slot].handle(request)
            if not answer["ok"]:
                say(f"slot {slot}: error: {answer['error']}")
            elif request["op"] in ("remove", "insert"):
                say(f"slot {slot}: {'inserted' if answer['inserted'] else 'removed'}")
            else:
                for text in describe_answer(request, answer):
                    say(f"slot {slot}: {text}")

    return control


def _check_trace_path(path: Path) -> None:
    """Refuse a trace path that cannot be written, before pcscd is started for nothing."""
    from reader_bridge.trace import ApduTrace

    if path.is_dir():
        raise UsageError(f"--trace {path}: is a directory; give a file name (e.g. {path / 'apdus.jsonl'})")
    if not path.parent.is_dir():
        raise UsageError(f"--trace {path}: the folder {path.parent} does not exist; create it first")
    try:
        ApduTrace(path).close()  # created 0600 now; serve appends to it
    except OSError as exc:
        raise UsageError(f"--trace {path}: cannot be written ({exc.strerror or exc})") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve cards in vpcd readers. Imports the card stack itself, once the readers are connected."""
    from reader_bridge.serve import ServeError, reader_name, refuse_same_card_twice, serve

    if not 0 <= args.slot < 16:
        raise UsageError(f"--slot {args.slot}: a vpcd slot is 0 or more, at most 15 (Debian's vpcd has slots 0 and 1; "
                         "`mynaemu readers setup N` adds more)")
    if args.slot + max(1, len(args.card_dir)) > 16:
        raise UsageError(f"{len(args.card_dir)} cards from --slot {args.slot} on: pcscd has vpcd slots 0 to 15 at most")
    if args.trace is not None:
        _check_trace_path(args.trace)
    if args.no_start_pcscd:
        from reader_bridge.pcscd import pcscd_running

        if not pcscd_running():
            raise RuntimeFailure("--no-start-pcscd: no pcscd is running; start it (e.g. `pcscd -f`) or drop the option")
    private_dir(data_dir())
    dirs = [Path(d) for d in args.card_dir] or [demo_card_dir()]
    if not args.card_dir:
        _import_commands()
        _demo_card(dirs[0])
    try:
        refuse_same_card_twice(dirs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if any(not d.is_dir() for d in dirs):  # said before the reader is touched
        missing = next(d for d in dirs if not d.is_dir())
        raise UsageError(f"{missing}: no card directory here (issue one with `mynaemu issue {missing}`)")

    interface = "contactless" if args.contactless else "contact"
    cards: dict[int, Card] = {}
    faulty: dict[int, object] = {}
    controls: dict[int, CardControls] = {}
    channels: dict[int, Path] = {}

    def load_cards() -> dict[int, object]:
        # Run by serve() once its links are connected to vpcd: the card stack's imports (~100 ms)
        # and the loads overlap pcscd's presence poll instead of preceding it.
        _import_commands()
        try:
            for i, d in enumerate(dirs):
                cards[args.slot + i] = Card.load(d, interface=interface)
        except BaseException:
            for card in cards.values():
                card.close()
            raise
        # What goes into the reader is the card behind a fault injector; the controls steer both.
        # ObservedCard (a FaultyCard) also keeps the last exchanges, masked, for `ctl`'s `recent` op
        # (an attached `mynaemu console` shows them).
        from .console.live import ObservedCard

        faulty.update({slot: ObservedCard(card) for slot, card in cards.items()})
        return faulty

    def on_serving(readers):
        from reader_bridge.steering import ReaderSlot

        from .channel import ControlServer, socket_path
        from .controls import CardControls

        servers = []
        for slot, card in sorted(cards.items()):
            controls[slot] = CardControls(card, presence=ReaderSlot(readers, slot, faulty[slot]), faults=faulty[slot])
            try:
                servers.append(ControlServer(card.dir.path, controls[slot].handle).start())
                channels[slot] = socket_path(card.dir.path)
            except OSError as exc:  # e.g. a read-only card directory: serve on, without remote control
                print(f"mynaemu serve: warning: no control socket for {card.dir.path} ({exc.strerror or exc}); "
                      "`mynaemu ctl` and `admin` cannot reach this card", file=sys.stderr, flush=True)

        def close_servers() -> None:
            for server in servers:
                server.close()

        return close_servers

    def ready(readers: list[str]) -> None:
        for slot, name in zip(sorted(cards), readers, strict=False):
            card = cards[slot]
            if slot in controls:
                controls[slot].reader = name
            print(f"Serving card {card.dir.card_id} in reader {name!r}. Ctrl-C stops.")
            if slot in channels:
                print(f"  steer it: mynaemu ctl {card.dir.path} status   (control socket {channels[slot]})")
        name = readers[0] if readers else reader_name(args.slot)
        print("  opensc-tool -n                       # names the card (JPKI)")
        select_jpki = "[0x00,0xA4,0x04,0x0C,0x0A,0xD3,0x92,0xF0,0x00,0x26,0x01,0x00,0x00,0x00,0x01]"
        print("  python3 -c \"from smartcard.System import readers; "
              f"c = [r for r in readers() if str(r) == '{name}'][0].createConnection(); "
              f"c.connect(); print(c.transmit({select_jpki}))\"")
        sys.stdout.flush()

    control = control_from_stdin(controls) if args.interactive else None
    try:
        serve(dict.fromkeys(args.slot + i for i in range(len(dirs))), trace_path=args.trace,
              start_pcscd=not args.no_start_pcscd, on_ready=ready, control=control, on_serving=on_serving,
              load=load_cards)
    except ValueError as exc:  # e.g. a slot this vpcd does not have
        raise UsageError(str(exc)) from None
    except ServeError as exc:  # an occupied or lost slot: said in one line, exit 1
        raise RuntimeFailure(str(exc)) from None
    except (OSError, TimeoutError, RuntimeError) as exc:  # pcscd missing, not starting, no card shown
        raise RuntimeFailure(f"the reader could not be set up: {exc}") from None
    finally:
        for card in cards.values():
            card.close()
    print("Stopped; the card's state is saved.")
    return 0


cmd_serve.imports_lazily = True  # type: ignore[attr-defined]  # main() leaves the imports to it


def cmd_console(args: argparse.Namespace) -> int:
    """The trainer's console (``mynaemu.console``): the cards served, a web page on 127.0.0.1 with a token."""
    try:
        from .console.run import ConsoleError, ConsoleServer
    except ImportError as exc:
        raise RuntimeFailure(f"the console needs its extra ({exc.name} is missing): pip install 'mynaemu[console]'") from None
    if args.slot < 0 or not 0 <= args.port <= 65535:
        raise UsageError("--slot is 0 or more, --port 0 (any free one) to 65535")
    private_dir(data_dir())
    dirs = [Path(d) for d in args.card_dir] or [demo_card_dir()]
    if not args.card_dir:
        _demo_card(dirs[0])
    server = ConsoleServer(dirs, slot=args.slot, port=args.port, start_pcscd=not args.no_start_pcscd)
    try:
        server.start()
    except ConsoleError as exc:
        raise RuntimeFailure(str(exc)) from None
    for card in server.console.cards:
        where = "attached (served by mynaemu serve)" if card.attached else f"in reader {card.reader!r}"
        print(f"Card {card.index}: {card.path} {where}")
    print(f"Console: {server.url}   (127.0.0.1 only; the token is the key, keep it in the room)  Ctrl-C stops.", flush=True)
    try:
        server.run()
    except ConsoleError as exc:
        raise RuntimeFailure(str(exc)) from None
    print("Stopped; the cards' state is saved.")
    return 0


def cmd_readers(args: argparse.Namespace) -> int:
    """``readers setup N`` / ``readers remove``: pcscd reader entries for vpcd slots 2-15."""
    from reader_bridge import readers

    try:
        if args.action == "setup":
            done = readers.setup(args.slots, args.conf_dir, args.lib_dir)
            verb = "wrote"
        else:
            done = readers.remove(args.conf_dir, args.lib_dir)
            verb = "removed"
    except readers.ReaderConfError as exc:
        raise UsageError(str(exc)) from None
    except PermissionError as exc:
        raise RuntimeFailure(f"{_os_error(exc)}; run `mynaemu readers` as root") from None
    for path in done:
        print(f"{verb} {path}")
    slots = readers.configured_slots(args.conf_dir)
    print(f"{args.conf_dir}: vpcd slots 0-{slots - 1}" if slots else f"{args.conf_dir}: no vpcd slots")
    print("restart pcscd to load them (a pcscd that `mynaemu serve` starts reads them by itself)")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line, without echoing stray arguments.

    An unrecognized argument may be a secret typed after a misspelt option (``--othr 1234``).
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            count = len(message.split(":", 1)[1].split())
            message = f"{count} unrecognized argument(s) (not shown: they may hold a secret)"
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _secret_option(p: argparse.ArgumentParser, key: str, help_text: str) -> None:
    p.add_argument(f"--{key}-pin", help=f"{help_text} (argv is readable by other local users: prefer the file or "
                                        f"{SECRET_ENV[key]})")
    p.add_argument(f"--{key}-pin-file", metavar="FILE", help=f"read the {key} PIN from FILE's first line (- = stdin)")


def _add_ctl_commands(p: argparse.ArgumentParser) -> None:
    """The ``ctl`` commands (also what ``serve --interactive`` reads)."""
    from .vocabulary import FAULT_KINDS

    csub = p.add_subparsers(dest="op", required=True, metavar="COMMAND")
    csub.add_parser("status", help="keys, clock, presence, faults")
    csub.add_parser("remove", help="take the served card out of its reader (PC/SC sees it EMPTY)")
    csub.add_parser("insert", help="put it back")
    c = csub.add_parser("set-tries", help="set a key's tries left (0 to its limit)")
    c.add_argument("key", choices=KEY_NAMES, metavar="KEY")
    c.add_argument("tries", type=int, metavar="N")
    for op, what in (("block", "block a key (VERIFY answers 6984)"), ("unblock", "full counter, value kept")):
        c = csub.add_parser(op, help=what)
        c.add_argument("key", choices=KEY_NAMES, metavar="KEY")
    c = csub.add_parser("reset-pin", help="new value and a full counter (the municipal office)")
    c.add_argument("key", choices=KEY_NAMES, metavar="KEY")
    c.add_argument("new", metavar="NEW", nargs="?", help=f"the new value (argv is readable by other local users: "
                                                         f"prefer --new-value-file, {SECRET_ENV['new']} or the prompt)")
    c.add_argument("--new-value-file", metavar="FILE", help="read the new value from FILE's first line (- = stdin)")
    c = csub.add_parser("fault", help="arm a fault between reader and card (served cards)")
    c.add_argument("kind", choices=FAULT_KINDS, metavar="KIND", help="remove, mute, error (6F00) or slow")
    c.add_argument("--match", metavar="HEX", help="fire on commands starting so; ? is any nibble (e.g. 0020??80)")
    c.add_argument("--mask", metavar="HEX", help="a bytewise mask applied before --match compares")
    c.add_argument("--at-apdu", type=int, metavar="N", help="fire on the N-th command from now (1 = the next)")
    c.add_argument("--seconds", type=float, metavar="S", help="slow: the delay per command; mute: how long until "
                                                               "the reader gives up (default: until cleared)")
    c.add_argument("--times", type=int, metavar="N", help="error: how many commands (default: until cleared)")
    csub.add_parser("clear-faults", help="disarm every fault (a muted command is let go)")
    c = csub.add_parser("clock-offset", help="move the card's clock (expire the certificates, or not yet valid)")
    c.add_argument("offset", metavar="OFFSET", nargs="?", help="e.g. +400d, 2h, 0 (a negative one after --: -- -1d)")
    c.add_argument("--shift", metavar="OFFSET", help="move it by OFFSET from where it is")
    c.add_argument("--expire", action="store_true", help="one day past the certificates' notAfter")
    c.add_argument("--not-yet-valid", action="store_true", help="one day before their notBefore")
    for op, what in (("hold", "put the JPKI certificates on hold"), ("lift", "lift a hold"),
                     ("revoke", "revoke the JPKI certificates"), ("reissue", "issue new JPKI certificates")):
        csub.add_parser(op, help=f"{what} (the authority service)")


# The ctl commands alone, for the lines ``serve --interactive`` reads.
_CTL_PARSER: argparse.ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mynaemu",
        description="Emulate the IC chip of Japan's My Number card, in-process or in a PC/SC reader.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level to stderr (PINs stay masked)")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"mynaemu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("issue", help="issue a new emulated card into CARD_DIR")
    p.add_argument("card_dir", metavar="CARD_DIR", type=Path)
    p.add_argument("--name", help="name in kanji, family and given separated by U+3000 (random if omitted)")
    p.add_argument("--kana", help="the name in katakana, family and given separated by U+3000")
    p.add_argument("--address", help="address (random fictitious one if omitted)")
    p.add_argument("--birth", help="birth date YYYY-MM-DD")
    p.add_argument("--sex", help="male, female or n/a")
    p.add_argument("--my-number", help="12-digit My Number with a valid check digit (random if omitted)")
    _secret_option(p, "auth", "JPKI user-authentication PIN, 4 digits")
    _secret_option(p, "sign", "JPKI signing password, 6-16 of A-Z and 0-9")
    _secret_option(p, "text", "input-assist AP PIN, 4 digits")
    _secret_option(p, "juki", "住基 and common AP PIN, 4 digits")
    p.add_argument("--profile", type=Path, help="card profile TOML (default: apdu_specs/profile.toml)")
    p.add_argument("--seed", type=int, help="seed for a reproducible random persona")
    p.add_argument("--variant", default="default", metavar="NAME",
                   help="card variant, where real cards differ; choices: " + ", ".join(_variant_names())
                   + " (a --profile may define others)")
    p.set_defaults(func=cmd_issue)

    p = sub.add_parser("info", help="show a card's persona, applications and key counters")
    p.add_argument("card_dir", metavar="CARD_DIR", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--secrets", action="store_true", help="also show the secrets (demo and test cards only)")
    authority_cli.add_at_option(p, "show certificate validity and status")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("send", help="send APDUs (hex) to a card (in one session), a served card or a PC/SC reader",
                       usage="mynaemu send [-h] (CARD_DIR | --reader NAME) APDU_HEX [APDU_HEX ...]")
    p.add_argument("card_dir", metavar="CARD_DIR", help="the card (served or not); left out with --reader")
    p.add_argument("apdu", metavar="APDU_HEX", nargs="*")
    p.add_argument("--reader", metavar="NAME", help="send through this PC/SC reader instead (pyscard)")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("run", help="run an APDU script (one APDU per line, `=> 9000` expectations)")
    p.add_argument("script", metavar="SCRIPT", type=Path)
    p.add_argument("card_dir", metavar="CARD_DIR", type=Path, nargs="?", help="the card (served or not)")
    p.add_argument("--reader", metavar="NAME", help="run through this PC/SC reader instead (pyscard)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="a script variable ${NAME} (argv is readable by other local users: prefer --var-file or "
                        "the environment variable NAME or MYNAEMU_NAME)")
    p.add_argument("--var-file", metavar="FILE", help="NAME=VALUE lines, one variable each (- = stdin)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ctl", help="steer a card, served or not: tries, clock, certificates, presence, faults")
    p.add_argument("card_dir", metavar="CARD_DIR", type=Path)
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    _add_ctl_commands(p)
    p.set_defaults(func=cmd_ctl)

    p = sub.add_parser("admin", help="operator commands: unblock, reset a PIN, kiosk reset, hold/lift/revoke/reissue")
    p.add_argument("card_dir", metavar="CARD_DIR", type=Path)
    asub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = asub.add_parser("unblock", help="restore a key's full retry counter (municipal office)")
    a.add_argument("key", choices=KEY_NAMES, metavar="KEY", help=", ".join(KEY_NAMES))
    new_help = (f"the new value (argv is readable by other local users: prefer --new-value-file, "
                f"{SECRET_ENV['new']} or the prompt)")
    a = asub.add_parser("reset-pin", help="set a new PIN/password and a full counter (municipal office)")
    a.add_argument("key", choices=KEY_NAMES, metavar="KEY")
    a.add_argument("new", metavar="NEW", nargs="?", help=new_help)
    a.add_argument("--new-value-file", metavar="FILE", help="read the new value from FILE's first line (- = stdin)")
    a = asub.add_parser("kiosk-reset", help="reset one JPKI secret by presenting the other (kiosk rule)")
    a.add_argument("key", choices=("auth", "sign"), metavar="KEY")
    a.add_argument("new", metavar="NEW", nargs="?", help=new_help)
    a.add_argument("--new-value-file", metavar="FILE", help="read the new value from FILE's first line (- = stdin)")
    a.add_argument("--other", help=f"the current value of the other JPKI secret (argv is readable by other local "
                                   f"users: prefer --other-file, {SECRET_ENV['other']} or the prompt)")
    a.add_argument("--other-file", metavar="FILE", help="read the other secret from FILE's first line (- = stdin)")
    asub.add_parser("suspend", help="revoke the card's JPKI certificates (lost card); the card still answers")
    authority_cli.add_admin_actions(asub)
    p.set_defaults(func=cmd_admin)

    p = sub.add_parser("replay", help="replay conformance transcripts against a card or a PC/SC reader")
    p.add_argument("flow", metavar="FLOW", nargs="*", help="transcript name (e.g. opensc-pkcs15-dump) or file")
    p.add_argument("--card", type=Path, metavar="CARD_DIR", help="replay against this emulated card")
    p.add_argument("--reader", metavar="NAME", help="replay through this PC/SC reader (a real card)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="a transcript variable, e.g. auth_pin=1234 (argv is readable by other local users: "
                        "prefer --var-file or MYNAEMU_AUTH_PIN etc.)")
    p.add_argument("--var-file", metavar="FILE", help="NAME=VALUE lines, one variable each (- = stdin)")
    p.add_argument("--list", action="store_true", help="list the transcripts")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("keypool", help="the pool of pre-generated card keys that makes issuing fast")
    ksub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = ksub.add_parser("fill", help="generate keys until the pool holds COUNT (6 per card)")
    k.add_argument("count", type=int, metavar="COUNT")
    ksub.add_parser("status", help="how many keys the pool holds")
    p.set_defaults(func=cmd_keypool)

    p = sub.add_parser("serve", help="put a card into a PC/SC virtual reader (pcscd + vpcd)")
    p.add_argument("card_dir", metavar="CARD_DIR", type=Path, nargs="*",
                   help="card(s) to serve, one per slot from --slot on (default: a demo card issued once "
                        "into the data directory)")
    p.add_argument("--slot", type=int, default=0, help="first vpcd slot: 0 = 'Virtual PCD 00 00', 1 = '... 00 01', "
                                                          "2-15 after `mynaemu readers setup`")
    p.add_argument("--interactive", action="store_true",
                   help="read commands from stdin: remove/insert a card on demand, status, quit")
    p.add_argument("--trace", type=Path, help="write an APDU trace (JSON lines, secrets masked)")
    p.add_argument("--contactless", action="store_true", help="answer the contactless (Type B) ATR")
    p.add_argument("--no-start-pcscd", action="store_true", help="never start pcscd; use a running one")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("console", help="a trainer's web console (127.0.0.1, token): live cards, actions, guided scenarios")
    p.add_argument("card_dir", metavar="CARD_DIR", type=Path, nargs="*",
                   help="cards to show: served here from --slot on, or attached when a `mynaemu serve` holds them "
                        "(default: the demo card)")
    p.add_argument("--slot", type=int, default=0, help="first vpcd slot for the cards served here")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: any free one)")
    p.add_argument("--no-start-pcscd", action="store_true", help="never start pcscd; use a running one")
    p.set_defaults(func=cmd_console)

    authority_cli.add_commands(sub)  # authority serve|config, verify

    from reader_bridge.readers import DEFAULT_CONF_DIR, DEFAULT_LIB_DIR, MAX_SLOTS

    p = sub.add_parser("readers", help="pcscd reader entries for more vpcd slots (up to 16; root)")
    rsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("setup", "write entries for vpcd slots 0 .. N-1 (restart pcscd afterwards)"),
                       ("remove", "delete the entries and library copies that setup wrote")):
        r = rsub.add_parser(name, help=text)
        if name == "setup":
            r.add_argument("slots", type=int, metavar="N", help=f"how many slots, 1 to {MAX_SLOTS} (rounded up to even)")
        r.add_argument("--conf-dir", type=Path, default=DEFAULT_CONF_DIR, help=f"pcscd's entries (default {DEFAULT_CONF_DIR})")
        r.add_argument("--lib-dir", type=Path, default=DEFAULT_LIB_DIR,
                       help=f"where the per-entry copies of libifdvpcd.so go (default {DEFAULT_LIB_DIR})")
    p.set_defaults(func=cmd_readers)
    return parser


class _QuietParser(OneLineParser):
    """OneLineParser that raises instead of printing: for ``serve --interactive`` lines."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(" ".join(message.split()))


_CTL_PARSER = _QuietParser(prog="ctl", add_help=False)
_add_ctl_commands(_CTL_PARSER)


def _one_line(text: str) -> str:
    """An error message fit for one stderr line, with every secret this run saw masked."""
    return scrub(" ".join(str(text).split()), _session.secrets) or "(no detail)"


def _os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def _silence_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so the flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the ``mynaemu`` command; returns the exit code (0 ok, 1 runtime failure, 2 usage error)."""
    global _session
    _session = _Session()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args.func, "imports_lazily", False):
        _import_commands()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    name = "mynaemu " + args.command

    def fail(code: int, message: str) -> int:
        with contextlib.suppress(OSError, ValueError):
            print(f"{name}: error: {_one_line(message)}", file=sys.stderr)
        return code

    try:
        return args.func(args)
    except _usage_errors() as exc:
        return fail(2, str(exc))
    except RuntimeFailure as exc:
        return fail(1, str(exc))
    except BrokenPipeError:
        _silence_stdout()
        return fail(1, "the output was closed before everything was written (broken pipe)")
    except StorageFailure as exc:
        return fail(1, f"the card's state could not be written ({exc}); nothing was changed")
    except OSError as exc:
        return fail(1, _os_error(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line, never a traceback
        return fail(1, f"internal error ({type(exc).__name__}: {exc}); please report it")


if __name__ == "__main__":
    sys.exit(main())
