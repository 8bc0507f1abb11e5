"""The authority's part of the ``mynaemu`` command, registered by ``mynaemu.cli.build_parser``.

    mynaemu authority serve [--host 127.0.0.1] [--port N]     CRLs and OCSP over HTTP
    mynaemu authority config [--base-url URL] [--ocsp-signer delegated|ca]
    mynaemu admin CARD_DIR hold | lift | revoke --reason R | reissue [NEW_DIR] [--new-my-number]
    mynaemu verify --signature SIG --data DATA (--cert CERT | --card CARD_DIR [--key auth|sign]) ...
    mynaemu info CARD_DIR [--at TIME]                          (certificates: validity and status)

Errors follow ``mynaemu.cli``: one line, exit 2 for usage, 1 for a runtime failure; ``verify``
exits 0 only for a valid signature, 1 for any refusal (its reason on the one output line).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

LIFECYCLE_ACTIONS = ("hold", "lift", "revoke", "reissue")


def _errors():
    from ..cli import RuntimeFailure, UsageError

    return UsageError, RuntimeFailure


def parse_at(text: str | None, option: str = "--at") -> datetime | None:
    """An ISO 8601 date or date-time (``Z`` or an offset; without one it is UTC)."""
    if text is None:
        return None
    usage_error, _ = _errors()
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise usage_error(f"{option} {text!r}: give an ISO 8601 time, e.g. 2030-01-31T12:00:00+09:00 or 2030-01-31") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def add_at_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--at", metavar="TIME", help=f"{what} at this instant (ISO 8601; UTC unless an offset is given)")


def _which(args: argparse.Namespace) -> tuple[str, ...]:
    return ("auth", "sign") if args.cert == "both" else (args.cert,)


# -- admin: the lifecycle ----------------------------------------------------------------------------
def add_admin_actions(asub) -> None:
    """``admin CARD_DIR hold | lift | revoke | reissue`` (the card may be served meanwhile)."""
    from ..vocabulary import REVOKE_REASONS

    for name, text in (("hold", "put the card's certificates on hold (certificateHold)"),
                       ("lift", "lift a hold: the certificates are good again")):
        a = asub.add_parser(name, help=text)
        a.add_argument("--cert", choices=("auth", "sign", "both"), default="both", help="which certificate (both)")
        add_at_option(a, "record the change")
    a = asub.add_parser("revoke", help="revoke the card's certificates for a reason (final)")
    a.add_argument("--reason", required=True, choices=REVOKE_REASONS, metavar="REASON", help=", ".join(REVOKE_REASONS))
    a.add_argument("--cert", choices=("auth", "sign", "both"), default="both", help="which certificate (both)")
    add_at_option(a, "record the revocation")
    a = asub.add_parser("reissue", help="issue a new card for the holder; the old certificates are revoked (superseded)")
    a.add_argument("new_dir", metavar="NEW_DIR", nargs="?", type=Path, help="the new card directory (CARD_DIR-reissued)")
    a.add_argument("--new-my-number", action="store_true", help="give the new card a new My Number")
    add_at_option(a, "issue and revoke")


def cmd_lifecycle(args: argparse.Namespace) -> int:
    """Run one lifecycle action of ``mynaemu admin``."""
    from . import lifecycle

    usage_error, runtime_failure = _errors()
    at = parse_at(args.at)
    try:
        if args.action == "reissue":
            done = lifecycle.reissue(args.card_dir, args.new_dir, new_my_number=args.new_my_number, at=at)
            p = done.issued.persona
            print(f"Reissued: a new card in {done.issued.path} (same PINs; My Number {p.my_number}, "
                  f"certificates until {p.cert_expiry.isoformat()})")
            changes = done.changes
        elif args.action == "revoke":
            changes = lifecycle.revoke(args.card_dir, args.reason, which=_which(args), at=at)
        else:
            changes = getattr(lifecycle, args.action)(args.card_dir, which=_which(args), at=at)
    except lifecycle.LifecycleError as exc:
        raise usage_error(str(exc)) from None
    except OSError as exc:
        raise runtime_failure(f"the change could not be written ({exc.strerror or exc}); nothing was changed") from None
    for change in changes:
        print(change.describe())
    return 0


# -- info ----------------------------------------------------------------------------------------
def certificate_report(card, at: str | None) -> tuple[list[str], dict]:
    """``info``'s certificate lines and JSON: validity and status at ``--at`` (default: the card's clock)."""
    from .lifecycle import certificate_status

    when = parse_at(at)
    if when is None and hasattr(card, "now"):
        when = card.now()  # follows the card's clock offset (`mynaemu ctl CARD clock-offset`)
    statuses = certificate_status(card, at=when)
    return [s.line() for s in statuses], {s.which: s.to_json() for s in statuses}


# -- authority serve / config --------------------------------------------------------------------
def add_commands(sub) -> None:
    """The ``authority`` and ``verify`` commands."""
    p = sub.add_parser("authority", help="the emulated JPKI authority: serve CRLs and OCSP, configure its URLs")
    asub = p.add_subparsers(dest="authority_action", required=True, metavar="ACTION")
    a = asub.add_parser("serve", help="serve CRLs and OCSP over HTTP on loopback until Ctrl-C")
    a.add_argument("--host", default="127.0.0.1", help="a loopback address (127.0.0.1 or ::1)")
    a.add_argument("--port", type=int, help="TCP port (default: the configured base URL's, 8480; 0 = any free one)")
    a = asub.add_parser("config", help="show or set where certificates point (base URL) and who signs OCSP")
    a.add_argument("--base-url", help="base URL written into new certificates (CDP, AIA), e.g. http://127.0.0.1:8480/")
    a.add_argument("--ocsp-signer", choices=("delegated", "ca"), help="delegated responder certificate or the CA itself")
    p.set_defaults(func=cmd_authority)

    p = sub.add_parser("verify", help="verify a card's signature: signature, chain, validity, status (OCSP/CRL)")
    p.add_argument("--signature", required=True, type=Path, metavar="FILE",
                   help="raw PKCS#1 v1.5 signature (pkcs11-tool -m SHA256-RSA-PKCS) or CMS/PKCS#7 (DER or PEM)")
    p.add_argument("--data", type=Path, metavar="FILE", help="the signed data (not needed for a CMS with content)")
    p.add_argument("--cert", type=Path, metavar="FILE", help="the signer's certificate (PEM or DER)")
    p.add_argument("--card", type=Path, metavar="CARD_DIR", help="take the signer's certificate from this card")
    p.add_argument("--key", choices=("auth", "sign"), default="sign", help="with --card: which certificate (sign)")
    p.add_argument("--ca", type=Path, action="append", metavar="FILE",
                   help="trust this CA certificate (repeatable; default: the emulated CAs of the authority)")
    add_at_option(p, "verify")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--ocsp", nargs="?", const="", metavar="URL", help="check status by OCSP (URL, or the certificate's AIA)")
    group.add_argument("--crl", nargs="?", const="", metavar="FILE|URL", help="check status on a CRL (file, URL, or the CDP)")
    group.add_argument("--no-status", action="store_true", help="do not check revocation status")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the OCSP responder or CRL")
    p.set_defaults(func=cmd_verify)


def cmd_authority(args: argparse.Namespace) -> int:
    from .ca import Authority, AuthorityError, default_authority_dir
    from .config import ConfigError, ServiceConfig, load_config, save_config

    usage_error, runtime_failure = _errors()
    where = default_authority_dir()
    if args.authority_action == "config":
        try:
            config = load_config(where)
            if args.base_url is not None or args.ocsp_signer is not None:
                if not (where / "authority.json").exists():
                    from ..cli import data_dir, private_dir

                    private_dir(data_dir())
                    Authority.load_or_create(where)
                config = ServiceConfig(args.base_url or config.base_url, args.ocsp_signer or config.ocsp_signer)
                save_config(where, config)
        except ConfigError as exc:
            raise usage_error(str(exc)) from None
        except OSError as exc:
            raise runtime_failure(f"{where}: the configuration could not be written ({exc.strerror or exc})") from None
        print(f"base URL     {config.base_url}")
        print(f"OCSP signer  {config.ocsp_signer}")
        for which in ("auth", "sign"):
            print(f"{which:<5} CRL {config.crl_url(which)}  OCSP {config.ocsp_url(which)}")
        return 0
    try:
        from .service import create_app, loopback_socket, serve
    except ImportError:
        raise runtime_failure("authority serve needs Starlette and uvicorn: pip install 'mynaemu[authority]'") from None

    if not (where / "authority.json").exists():
        raise runtime_failure(f"{where}: no emulated authority here; issue a card first (or set MYNAEMU_DATA_DIR)")
    try:
        config = load_config(where)
        authority = Authority.load(where)
    except (ConfigError, AuthorityError) as exc:
        raise usage_error(str(exc)) from None
    port = config.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise usage_error(f"--port {port}: a TCP port is 0-65535")
    try:
        sock = loopback_socket(args.host, port)
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    except OSError as exc:
        raise runtime_failure(f"{args.host}:{port}: cannot listen ({exc.strerror or exc})") from None
    host, bound = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/"
    print(f"Serving the emulated JPKI authority at {url} (CRL {url}crl/auth.crl, OCSP {url}ocsp/auth, "
          f"likewise sign). Ctrl-C stops.", flush=True)
    if url != config.base_url:
        print(f"  note: certificates point at {config.base_url} (mynaemu authority config --base-url {url})",
              flush=True)
    serve(create_app(authority, config=config), sock)
    print("Stopped.")
    return 0


# -- verify --------------------------------------------------------------------------------------
def _read(option: str, path: Path) -> bytes:
    usage_error, _ = _errors()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise usage_error(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise usage_error(f"{option} {path}: is a directory") from None
    except OSError as exc:
        raise usage_error(f"{option} {path}: cannot be read ({exc.strerror or exc})") from None


def cmd_verify(args: argparse.Namespace) -> int:
    from .verify import VerifyError, load_certificate, verify_signature

    usage_error, _ = _errors()
    if args.cert is not None and args.card is not None:
        raise usage_error("give the signer's certificate once: --cert FILE or --card CARD_DIR")
    signature = _read("--signature", args.signature)
    data = _read("--data", args.data) if args.data is not None else None
    cert = None
    try:
        if args.cert is not None:
            cert = load_certificate(_read("--cert", args.cert))
        elif args.card is not None:
            from .lifecycle import card_certificates

            certs = card_certificates(args.card)
            if args.key not in certs:
                raise usage_error(f"--card {args.card}: has no {args.key} certificate")
            cert = certs[args.key]
        trust = [load_certificate(_read("--ca", path)) for path in args.ca] if args.ca else None
    except ValueError as exc:
        raise usage_error(f"not a certificate ({' '.join(str(exc).split())})") from None
    status = "none" if args.no_status else "ocsp" if args.ocsp is not None else "crl" if args.crl is not None else "auto"
    try:
        verdict = verify_signature(signature, data, cert, trust=trust, at=parse_at(args.at), status=status,
                                   ocsp_url=args.ocsp or None, crl=args.crl or None, timeout=args.timeout)
    except VerifyError as exc:
        raise usage_error(str(exc)) from None
    print(verdict.line())
    sys.stdout.flush()
    return 0 if verdict.valid else 1

