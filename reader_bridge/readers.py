"""pcscd reader entries for up to 16 vpcd slots (``mynaemu readers setup N`` / ``remove``).

Debian's ``/etc/reader.conf.d/vpcd`` gives two slots (``Virtual PCD 00 00`` on TCP 35963,
``Virtual PCD 00 01`` on 35964): vpcd is built with two slots per reader entry. More slots need
more entries, and each entry needs

* its own copy of ``libifdvpcd.so``: pcscd loads a library once and shares it between entries
  with the same LIBPATH, and vpcd keeps its sockets in one static array indexed by the slot
  within its entry (``Lun & 0xffff``), so two entries on one library would clash on slot 0;
* its own FRIENDLYNAME (pcscd names a reader "FRIENDLYNAME NN SS"; entry ``base`` here is
  ``Virtual PCD {base}-{base+1}``, so slot ``base + SS`` is ``Virtual PCD 2-3 00 01`` for 3);
* its own port: DEVICENAME ``/dev/null:PORT`` (``/dev/null`` = listen, vpcd's server mode)
  and the same number as CHANNELID; the entry's slots listen on PORT and PORT + 1, so slot ``s``
  is always on 35963 + s, as :class:`reader_bridge.vpcd.VpcdLink` assumes.

pcscd has at most 16 reader contexts (PCSCLITE_MAX_READERS_CONTEXTS): eight entries of two.
pcscd reads the entries at start-up only: restart it after a change.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_CONF_DIR",
    "DEFAULT_LIB_DIR",
    "MAX_SLOTS",
    "ReaderConfError",
    "configured_slots",
    "friendly_name",
    "remove",
    "setup",
    "slot_of",
]

VPCD_PORT = 35963
DEFAULT_CONF_DIR = Path("/etc/reader.conf.d")
DEFAULT_LIB_DIR = Path("/usr/local/lib/mynaemu/vpcd")
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
SLOTS_PER_ENTRY = 2
MAX_SLOTS = 16
ENTRY_PREFIX = "mynaemu-vpcd-"
MARK = "# Written by `mynaemu readers setup`; `mynaemu readers remove` deletes it."
_FRIENDLY = "Virtual PCD"
_NAME = re.compile(r"^Virtual PCD(?: (\d+)-\d+)? [0-9A-F]{2} ([0-9A-F]{2})$")
_PORT = re.compile(r"^\s*DEVICENAME\s+\S*:(0x[0-9A-Fa-f]+|\d+)\s*$", re.M)


class ReaderConfError(ValueError):
    """The reader entries cannot be written or read as asked; the message says why."""


def friendly_name(base: int) -> str:
    """FRIENDLYNAME of the entry whose first slot is ``base`` (Debian's own for 0)."""
    return _FRIENDLY if base == 0 else f"{_FRIENDLY} {base}-{base + 1}"


def reader_name_of(slot: int) -> str:
    """The PC/SC reader name pcscd gives vpcd slot ``slot`` with these entries."""
    base = slot - slot % SLOTS_PER_ENTRY
    return f"{friendly_name(base)} 00 {slot % SLOTS_PER_ENTRY:02d}"


def slot_of(name: str) -> int | None:
    """The vpcd slot of a PC/SC reader name (``Virtual PCD 00 01`` → 1, ``Virtual PCD 2-3 00 01`` → 3)."""
    m = _NAME.match(name)
    if m is None:
        return None
    return int(m.group(1) or 0) + int(m.group(2), 16)


@dataclass(frozen=True)
class Entry:
    """One reader entry: its file, its library copy, its first slot."""

    base: int
    conf: Path
    lib: Path

    @property
    def port(self) -> int:
        return VPCD_PORT + self.base

    def text(self) -> str:
        return (f"{MARK}\n# vpcd slots {self.base} and {self.base + 1}: TCP ports {self.port} and {self.port + 1}\n"
                f'FRIENDLYNAME "{friendly_name(self.base)}"\n'
                f"DEVICENAME   /dev/null:0x{self.port:04X}\n"
                f"LIBPATH      {self.lib}\n"
                f"CHANNELID    0x{self.port:04X}\n")  # fmt: skip


def _ports(conf_dir: Path) -> dict[int, Path]:
    """Port → the entry file that listens on it, for every readable entry of ``conf_dir``."""
    found: dict[int, Path] = {}
    if not conf_dir.is_dir():
        return found
    for path in sorted(conf_dir.iterdir()):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if "libifdvpcd" not in text:
            continue
        for m in _PORT.finditer(text):
            found[int(m.group(1), 0)] = path
    return found


def configured_slots(conf_dir: Path = DEFAULT_CONF_DIR) -> int:
    """How many vpcd slots from 0 on the entries in ``conf_dir`` give (2 with Debian's alone)."""
    ports = _ports(conf_dir)
    slots = 0
    while VPCD_PORT + slots in ports:
        slots += SLOTS_PER_ENTRY
    return slots


def _ours(conf_dir: Path) -> list[Path]:
    if not conf_dir.is_dir():
        return []
    out = []
    for path in sorted(conf_dir.glob(ENTRY_PREFIX + "*")):
        try:
            if path.read_text(errors="replace").startswith(MARK):
                out.append(path)
        except OSError:
            continue
    return out


def remove(conf_dir: Path = DEFAULT_CONF_DIR, lib_dir: Path = DEFAULT_LIB_DIR) -> list[Path]:
    """Delete the entries and library copies ``setup`` wrote; returns what was deleted."""
    removed = []
    for path in _ours(conf_dir):
        path.unlink()
        removed.append(path)
    if lib_dir.is_dir():
        for lib in sorted(lib_dir.glob("libifdvpcd-*.so")):
            lib.unlink()
            removed.append(lib)
        with contextlib.suppress(OSError):
            lib_dir.rmdir()  # only when nothing else lives there
    return removed


def setup(slots: int, conf_dir: Path = DEFAULT_CONF_DIR, lib_dir: Path = DEFAULT_LIB_DIR,
          driver: Path = VPCD_DRIVER) -> list[Path]:
    """Write entries so that vpcd slots 0 .. ``slots`` - 1 exist (rounded up to an even count).

    Replaces what an earlier ``setup`` wrote. Slots 0-1 come from Debian's entry; when
    ``conf_dir`` has no entry on port 35963 (a scratch directory), one is written for them too.
    Returns the files written.
    """
    if not 1 <= slots <= MAX_SLOTS:
        raise ReaderConfError(f"{slots} slots: pcscd has room for 1 to {MAX_SLOTS} vpcd slots")
    if not driver.is_file():
        raise ReaderConfError(f"vsmartcard's vpcd driver {driver} is missing (apt-get install vsmartcard-vpcd)")
    if not conf_dir.is_dir():
        raise ReaderConfError(f"{conf_dir}: no such directory (pcscd reads its reader entries there)")
    remove(conf_dir, lib_dir)
    others = {port: path for port, path in _ports(conf_dir).items()}
    written: list[Path] = []
    lib_dir.mkdir(parents=True, exist_ok=True)
    for base in range(0, slots, SLOTS_PER_ENTRY):
        port = VPCD_PORT + base
        if port in others:
            if base == 0:
                continue  # Debian's own entry
            raise ReaderConfError(f"{others[port]} already listens on port {port}; remove it first")
        lib = driver if base == 0 else lib_dir / f"libifdvpcd-{base}.so"
        if base:
            shutil.copy2(driver.resolve(), lib)
            lib.chmod(0o644)
            written.append(lib)
        entry = Entry(base, conf_dir / f"{ENTRY_PREFIX}{base}", lib)
        entry.conf.write_text(entry.text())
        entry.conf.chmod(0o644)
        written.append(entry.conf)
    return written
