"""A non-editable install traces: the wheel installed apart from the source tree, run from
elsewhere, finds its BPF program inside the package and loads it."""
import json
import os
import subprocess
import sys

import pytest

from support.package import build_wheel

pytestmark = pytest.mark.live


def test_tcpclose_installed_from_its_wheel_traces(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--disable-pip-version-check",
                    "--target", str(site), str(wheel)], check=True, capture_output=True)
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(site)},  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    where = run("-c", "import agent.record.layout as l; print(l.PROGRAM)")
    assert where.stdout.strip() == str(site / "agent" / "bpf" / "tcpclose.bpf.c"), where.stderr
    traced = run("-m", "agent", "trace", "-d", "1", "-o", str(tmp_path / "out"))
    assert traced.returncode == 0 and traced.stderr.startswith("Tracing"), traced.stderr
    assert "programs" in json.loads((tmp_path / "out" / "run.json").read_text())
