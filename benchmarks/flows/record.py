#!/usr/bin/env python3
"""Record the APDUs real OpenSC tools send to our card, as benchmark flows (root; needs OpenSC).

    python benchmarks/flows/record.py            # rewrites benchmarks/flows/opensc-*.json

A test card (PINs of ``mynaemu.testing.TEST_SECRETS``) is served in slot 0 of a private pcscd
(own network and mount namespaces), wrapped so every command APDU reaching it is kept; then
``pkcs15-tool --dump`` and ``pkcs11-tool --sign`` run as any user would run them (file caching
off, so every run reads the card). The command APDUs go to one JSON file per tool, the PIN of a
VERIFY replaced by ``{auth_pin}``; the benchmark gets the responses from a card of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mynaemu import Card  # noqa: E402
from mynaemu.testing import TEST_SECRETS, issue_test_card  # noqa: E402
from reader_bridge import CardWrapper  # noqa: E402
from reader_bridge.pcscd import PcscdHarness, find_vpcd_readers, reader_name, wait_for_card  # noqa: E402
from reader_bridge.vpcd import VirtualReaderSet  # noqa: E402

HERE = Path(__file__).resolve().parent
OPENSC_CONF = "app default {\n\tframework pkcs15 {\n\t\tuse_file_caching = no;\n\t}\n}\n"
PKCS11_MODULES = ("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so", "/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so",
                  "/usr/lib/x86_64-linux-gnu/pkcs11/opensc-pkcs11.so")  # fmt: skip
PIN_HEX = TEST_SECRETS["auth"].encode().hex().upper()


class RecordingCard(CardWrapper):
    """A card that keeps every command APDU it answers."""

    def __init__(self, card: Card) -> None:
        self.card = card
        self.apdus: list[bytes] = []

    def transmit(self, apdu: bytes) -> bytes:
        self.apdus.append(bytes(apdu))
        return self.card.transmit(apdu)


def masked(apdu: bytes) -> str:
    """The APDU as hex, the auth PIN of a VERIFY as ``{auth_pin}``."""
    text = apdu.hex().upper()
    if text.startswith("0020") and len(apdu) > 5 and apdu[5:] == TEST_SECRETS["auth"].encode():
        return text[:10] + "{auth_pin}"
    assert PIN_HEX not in text[10:] or not text.startswith("0020"), "an unmasked PIN"
    return text


def tool_version() -> str:
    out = subprocess.run(["opensc-tool", "--info"], capture_output=True, text=True).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def save(name: str, description: str, command: list[str], apdus: list[bytes]) -> None:
    doc = {"description": description, "command": " ".join(command), "opensc": tool_version(),
           "apdus": [masked(a) for a in apdus]}  # fmt: skip
    (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{name}: {len(apdus)} APDUs")


def main() -> int:
    module = next((m for m in PKCS11_MODULES if Path(m).exists()), None)
    if shutil.which("pkcs15-tool") is None or module is None:
        print("record: OpenSC (pkcs15-tool, opensc-pkcs11.so) is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mynaemu-record-") as tmp:
        work = Path(tmp)
        os.environ["MYNAEMU_DATA_DIR"] = str(work / "data")
        conf = work / "opensc.conf"
        conf.write_text(OPENSC_CONF)
        (work / "home").mkdir()
        env = dict(os.environ, OPENSC_CONF=str(conf), HOME=str(work / "home"), XDG_CACHE_HOME=str(work / "home"))
        (work / "in").write_bytes(b"mynaemu benchmark flow")
        card = RecordingCard(Card.load(issue_test_card(work / "card").path))
        with PcscdHarness(private_socket=True) as harness, VirtualReaderSet(netns=harness.netns) as readers:
            env.update(harness.client_env())
            readers.insert(0, card)
            name = reader_name(0, find_vpcd_readers())
            wait_for_card(name, present=True, timeout=10)
            runs = [
                ("opensc-pkcs15-dump", "OpenSC pkcs15-tool --dump, every driver's probes included",
                 ["pkcs15-tool", "--reader", "0", "--dump"]),
                ("opensc-pkcs11-sign", "OpenSC pkcs11-tool --sign with the auth key (login, SHA256-RSA-PKCS)",
                 ["pkcs11-tool", "--module", module, "--token-label", "JPKI (User Authentication PIN)", "--login",
                  "--pin", TEST_SECRETS["auth"], "--sign", "--id", "01", "-m", "SHA256-RSA-PKCS",
                  "-i", str(work / "in"), "-o", str(work / "sig")]),
            ]  # fmt: skip
            for flow, description, command in runs:
                card.apdus.clear()
                subprocess.run(command, env=env, check=True, capture_output=True, timeout=60)
                shown = [("<module>" if c == module else "<pin>" if c == TEST_SECRETS["auth"] else c) for c in command]
                shown = [c if not c.startswith(str(work)) else Path(c).name for c in shown]
                save(flow, description, shown, list(card.apdus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
