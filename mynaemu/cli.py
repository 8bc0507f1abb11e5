"""The ``mynaemu`` command: issue, inspect, script, administer and serve emulated cards."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import sys
from datetime import date
from pathlib import Path

from . import admin, sw
from .card import Card
from .issuance import IssuanceError, issue_card, persona_from_json
from .profile import ProfileError
from .redact import mask_command
from .state import StateError

KEY_NAMES = ("auth", "sign", "text", "juki", "common", "text-a", "text-b", "visual-a", "visual-b", "visual-birth")
MEIJI_START = date(1868, 1, 25)
SEXES = {"male": "1", "m": "1", "1": "1", "female": "2", "f": "2", "2": "2", "n/a": "9", "9": "9"}


class UsageError(Exception):
    """A command-line mistake; the message says what to do."""


def data_dir() -> Path:
    """Where mynaemu keeps per-user data (the demo card, the emulated authority)."""
    if env := os.environ.get("MYNAEMU_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mynaemu"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as 0700: it holds keys and cards other users must not swap."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


# -- issue ---------------------------------------------------------------------------------------
def _persona(args: argparse.Namespace):
    from .persona import Persona

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
    if args.kana:
        family, _, given = args.kana.partition("\u3000")
        if not given:
            raise UsageError("--kana: separate family and given name with an ideographic space (U+3000)")
        persona = dataclasses.replace(persona, family_name_kana=family, given_name_kana=given)
    if args.address:
        persona = dataclasses.replace(persona, address=args.address)
    return persona


def cmd_issue(args: argparse.Namespace) -> int:
    private_dir(data_dir())
    secrets = {"auth": args.auth_pin, "sign": args.sign_pin, "text": args.text_pin, "juki": args.juki_pin}
    issued = issue_card(args.card_dir, persona=_persona(args), secrets=secrets, profile=args.profile)
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
def cmd_info(args: argparse.Namespace) -> int:
    card = Card.load(args.card_dir, read_only=True)  # works beside a served card
    # The security code is the secret part of 照合番号B: shown once at issuance, never again.
    persona = {k: ("****" if k == "security_code" else v) for k, v in card.dir.meta.get("persona", {}).items()}
    apps = {name: {"aid": ap.aid.hex().upper(), "title": ap.spec.title} for name, ap in card.applications.items()}
    keys = card.key_status()
    kind = card.dir.meta.get("kind")
    secrets = _published_secrets(card, args.card_dir) if args.secrets else None
    if args.json:
        doc = {"card_id": card.dir.card_id, "kind": kind, "persona": persona, "applications": apps, "keys": keys}
        if secrets is not None:
            doc["secrets"] = secrets
        json.dump(doc, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    print(f"Card {card.dir.card_id} in {card.dir.path}")
    p = persona_from_json(card.dir.meta["persona"])
    print(f"  {p.name} ({p.name_kana}), born {p.birth.isoformat()}, sex {p.sex}")
    print(f"  {p.address}")
    print(f"  card expiry {p.card_expiry.isoformat()}, certificates {p.cert_expiry.isoformat()}")
    if card.dir.meta.get("suspended"):
        print(f"  SUSPENDED since {card.dir.meta['suspended']}: its JPKI certificates are revoked")
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
def cmd_send(args: argparse.Namespace) -> int:
    card = Card.load(args.card_dir)
    card.power_on()
    apdus = []
    for text in args.apdu:
        cleaned = "".join(text.split())
        try:
            apdus.append(bytes.fromhex(cleaned))
        except ValueError:
            raise UsageError(f"{text!r} is not an APDU in hex (e.g. 00A4040C0AD392F000260100000001)") from None
    for apdu in apdus:
        resp = card.transmit(apdu)
        print(f"{mask_command(apdu)} -> {resp.hex().upper()}  {sw.describe(resp[-2:])}")
    card.power_off()
    return 0


# -- admin ---------------------------------------------------------------------------------------
def cmd_admin(args: argparse.Namespace) -> int:
    card = Card.load(args.card_dir)
    if args.action == "unblock":
        admin.unblock(card, args.key)
        print(f"{args.key}: unblocked, {card.tries_left(args.key)} tries")
    elif args.action == "reset-pin":
        admin.reset_pin(card, args.key, args.new)
        print(f"{args.key}: new value set, {card.tries_left(args.key)} tries")
    elif args.action == "kiosk-reset":
        admin.kiosk_reset(card, args.key, args.new, args.other)
        print(f"{args.key}: new value set at the kiosk, {card.tries_left(args.key)} tries")
    else:
        from .pki import Authority, default_authority_dir
        from .revocation import suspend

        crls = suspend(card, Authority.load(default_authority_dir()))
        print("Card suspended: its JPKI certificates are revoked; the card still answers as before.")
        for which, path in crls.items():
            print(f"  {which} CRL: {path}")
    return 0


# -- replay --------------------------------------------------------------------------------------
def _reader_transmit(name: str):
    """A transmit function for a PC/SC reader (a real card, or a served one)."""
    try:
        from smartcard.System import readers
    except ImportError:
        raise UsageError("--reader needs pyscard: pip install 'mynaemu[pcsc]'") from None
    found = [r for r in readers() if str(r) == name or str(r).startswith(name)]
    if not found:
        raise UsageError(f"no reader named {name!r}; readers: {[str(r) for r in readers()]}")
    conn = found[0].createConnection()
    conn.connect()

    def transmit(apdu: bytes) -> bytes:
        data, sw1, sw2 = conn.transmit(list(apdu))
        return bytes(data) + bytes((sw1, sw2))

    return transmit


def cmd_replay(args: argparse.Namespace) -> int:
    from .transcript import TranscriptError, card_variables, replay_file, transcript_files

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
    variables: dict[str, object] = {}
    if args.card is not None:
        card = Card.load(args.card)
        secrets = {k: card.keyring[k].value.decode("ascii") for k in ("auth", "sign", "text", "juki")}
        variables.update(card_variables(card, secrets))
        card.power_on()
        transmit = card.transmit
    else:
        transmit = _reader_transmit(args.reader)
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--var {item!r}: write NAME=VALUE (e.g. auth_pin=1234)")
        variables[name] = value
    failed = 0
    for flow in args.flow:
        if args.card is not None:
            card.power_on()  # every transcript starts in the power-on state
        try:
            result = replay_file(flow, transmit, variables)
        except (TranscriptError, FileNotFoundError) as exc:
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


CONTROL_HELP = "commands: remove [SLOT] | insert [SLOT] | status | quit   (SLOT defaults to the first)"


def control_from_stdin(cards: dict[int, Card], out=None):
    """A ``serve`` control loop: insert and remove cards on demand from lines on stdin."""
    out = out or sys.stdout
    first = min(cards)

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    def control(readers, stop) -> None:
        say(CONTROL_HELP)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            command, arg = words[0].lower(), words[1] if len(words) > 1 else str(first)
            try:
                slot = int(arg)
            except ValueError:
                say(f"not a slot: {arg!r}")
                continue
            if command in ("q", "quit", "exit"):
                stop.set()
                return
            if command in ("s", "status"):
                for n, card in sorted(cards.items()):
                    where = "inserted" if n in readers else "removed"
                    left = ", ".join(f"{k} {v['tries_left']}/{v['limit']}" for k, v in card.key_status().items())
                    say(f"slot {n}: {where}; {left}")
            elif slot not in cards:
                say(f"no card for slot {slot} (slots: {sorted(cards)})")
            elif command in ("r", "remove"):
                if slot in readers:
                    readers.remove(slot)  # the card leaves the reader: power and security status go
                say(f"slot {slot}: removed")
            elif command in ("i", "insert"):
                if slot not in readers:
                    readers.insert(slot, cards[slot])
                say(f"slot {slot}: inserted")
            else:
                say(CONTROL_HELP)

    return control


def cmd_serve(args: argparse.Namespace) -> int:
    from reader_bridge.serve import ServeError, reader_name, refuse_same_card_twice, serve

    if args.slot < 0:
        raise UsageError(f"--slot {args.slot}: a vpcd slot is 0 or more (Debian's vpcd has slots 0 and 1)")
    private_dir(data_dir())
    dirs = [Path(d) for d in args.card_dir] or [demo_card_dir()]
    if not args.card_dir:
        _demo_card(dirs[0])
    try:
        refuse_same_card_twice(dirs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    interface = "contactless" if args.contactless else "contact"
    cards = {args.slot + i: Card.load(d, interface=interface) for i, d in enumerate(dirs)}

    def ready(readers: list[str]) -> None:
        for card, name in zip([cards[slot] for slot in sorted(cards)], readers, strict=False):
            print(f"Serving card {card.dir.card_id} in reader {name!r}. Ctrl-C stops.")
        name = readers[0] if readers else reader_name(args.slot)
        print("  opensc-tool -n                       # names the card (JPKI)")
        select_jpki = "[0x00,0xA4,0x04,0x0C,0x0A,0xD3,0x92,0xF0,0x00,0x26,0x01,0x00,0x00,0x00,0x01]"
        print("  python3 -c \"from smartcard.System import readers; "
              f"c = [r for r in readers() if str(r) == '{name}'][0].createConnection(); "
              f"c.connect(); print(c.transmit({select_jpki}))\"")
        sys.stdout.flush()

    control = control_from_stdin(cards) if args.interactive else None
    try:
        serve(cards, trace_path=args.trace, start_pcscd=not args.no_start_pcscd, on_ready=ready, control=control)
    except ValueError as exc:  # e.g. a slot this vpcd does not have
        raise UsageError(str(exc)) from None
    except ServeError as exc:  # an occupied or lost slot: said in one line, exit 1
        print(f"mynaemu serve: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for card in cards.values():
            card.close()
    print("Stopped; the card's state is saved.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    p.add_argument("--auth-pin", help="JPKI user-authentication PIN, 4 digits")
    p.add_argument("--sign-pin", help="JPKI signing password, 6-16 of A-Z and 0-9")
    p.add_argument("--text-pin", help="input-assist AP PIN, 4 digits")
    p.add_argument("--juki-pin", help="住基 and common AP PIN, 4 digits")
    p.add_argument("--profile", type=Path, help="card profile TOML (default: apdu_specs/profile.toml)")
    p.add_argument("--seed", type=int, help="seed for a reproducible random persona")
    p.set_defaults(func=cmd_issue)

    p = sub.add_parser("info", help="show a card's persona, applications and key counters")
    p.add_argument("card_dir", metavar="CARD_DIR", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--secrets", action="store_true", help="also show the secrets (demo and test cards only)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("send", help="power the card on and send APDUs (hex) in one session")
    p.add_argument("card_dir", metavar="CARD_DIR", type=Path)
    p.add_argument("apdu", metavar="APDU_HEX", nargs="+")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("admin", help="operator commands: unblock, reset a PIN, kiosk reset")
    p.add_argument("card_dir", metavar="CARD_DIR", type=Path)
    asub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = asub.add_parser("unblock", help="restore a key's full retry counter (municipal office)")
    a.add_argument("key", choices=KEY_NAMES, metavar="KEY", help=", ".join(KEY_NAMES))
    a = asub.add_parser("reset-pin", help="set a new PIN/password and a full counter (municipal office)")
    a.add_argument("key", choices=KEY_NAMES, metavar="KEY")
    a.add_argument("new", metavar="NEW")
    a = asub.add_parser("kiosk-reset", help="reset one JPKI secret by presenting the other (kiosk rule)")
    a.add_argument("key", choices=("auth", "sign"), metavar="KEY")
    a.add_argument("new", metavar="NEW")
    a.add_argument("--other", required=True, help="the current value of the other JPKI secret")
    asub.add_parser("suspend", help="revoke the card's JPKI certificates (lost card); the card still answers")
    p.set_defaults(func=cmd_admin)

    p = sub.add_parser("replay", help="replay conformance transcripts against a card or a PC/SC reader")
    p.add_argument("flow", metavar="FLOW", nargs="*", help="transcript name (e.g. opensc-pkcs15-dump) or file")
    p.add_argument("--card", type=Path, metavar="CARD_DIR", help="replay against this emulated card")
    p.add_argument("--reader", metavar="NAME", help="replay through this PC/SC reader (a real card)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="a transcript variable, e.g. auth_pin=1234 (needed for a real card)")
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
    p.add_argument("--slot", type=int, default=0, help="first vpcd slot: 0 = 'Virtual PCD 00 00', 1 = '... 00 01'")
    p.add_argument("--interactive", action="store_true",
                   help="read commands from stdin: remove/insert a card on demand, status, quit")
    p.add_argument("--trace", type=Path, help="write an APDU trace (JSON lines, secrets masked)")
    p.add_argument("--contactless", action="store_true", help="answer the contactless (Type B) ATR")
    p.add_argument("--no-start-pcscd", action="store_true", help="never start pcscd; use a running one")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except (UsageError, IssuanceError, admin.AdminError, StateError, ProfileError) as exc:
        print(f"mynaemu {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
