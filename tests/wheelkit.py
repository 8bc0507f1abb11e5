"""mynaemu as a user gets it: a wheel built from a copy of the source, installed into a fresh venv.

The venv has no pip and installs no dependencies (offline, fast): a ``.pth`` file points it at a
directory of links to this venv's third-party packages (cryptography, pyscard, pytest, ...),
leaving out mynaemu itself, so that ``import mynaemu`` can only find the wheel's copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "mynaemu", "reader_bridge", "apdu_specs")
# What this venv holds of mynaemu itself (an editable install): never visible to the wheel's venv.
OWN = ("mynaemu", "__editable__", "__editable___mynaemu", "apdu_specs", "reader_bridge")


@dataclass(frozen=True)
class InstalledWheel:
    """A venv with mynaemu installed from its wheel."""

    wheel: Path
    venv: Path
    data_dir: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for its commands: no PYTHONPATH into the source tree, a data dir of its own."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update(MYNAEMU_DATA_DIR=str(self.data_dir), PYTHONUNBUFFERED="1", **extra)
        return env

    def run(self, *args: str, cwd: Path, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run ``args`` (``mynaemu`` or ``python`` from the venv's bin) in ``cwd``."""
        return subprocess.run([str(self.bin / args[0]), *args[1:]], cwd=cwd, env=self.env(**extra),
                              capture_output=True, text=True, timeout=timeout)


def build_wheel(work: Path) -> Path:
    """``pip wheel`` of a copy of the source (the tree itself is never written to); the wheel's path."""
    src = work / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = work / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(src)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}")
    (wheel,) = dist.glob("mynaemu-*.whl")
    return wheel


def install_wheel(wheel: Path, work: Path) -> InstalledWheel:
    """A fresh venv (no pip) with ``wheel`` installed, the dependencies linked from this venv."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    deps = work / "deps"
    deps.mkdir()
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        if entry.name.startswith(OWN) or entry.suffix == ".pth" or entry.name == "__pycache__":
            continue
        (deps / entry.name).symlink_to(entry)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    found = subprocess.run([str(venv / "bin" / "python"), "-c", where], check=True, capture_output=True, text=True)
    theirs = Path(found.stdout.strip())
    (theirs / "zz-mynaemu-test-deps.pth").write_text(f"{deps}\n")  # after the venv's own packages
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                           "--no-deps", "--no-index", "--quiet", str(wheel)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install of the wheel failed:\n{proc.stdout}\n{proc.stderr}")
    data_dir = work / "data"
    data_dir.mkdir(mode=0o700)
    return InstalledWheel(wheel, venv, data_dir)
