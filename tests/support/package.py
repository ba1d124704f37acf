"""The package as a user installs it: a wheel built from this tree (no network: the build
uses the venv's own setuptools)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(into: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "--disable-pip-version-check", "-w", str(into), str(ROOT)], check=True, capture_output=True)
    (wheel,) = into.glob("tcpclose-*.whl")
    return wheel
