"""What a fleet deploys (deploy/): the alert rules pass promtool's check and their own unit
tests (each alert fires on the series that should fire it, and only then); the systemd
unit runs the agent command that exists."""
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: make setup-test installs prometheus")


@promtool
def test_the_alert_rules_are_valid_and_fire_when_they_should():
    for args in (["check", "rules", "prometheus-rules.yml"], ["test", "rules", "prometheus-rules.test.yml"]):
        done = subprocess.run(["promtool", *args], cwd=DEPLOY, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_systemd_unit_starts_the_agent_with_options_it_has():
    lines = (DEPLOY / "tcpclose-agent.service").read_text().splitlines()
    start = next(line for line in lines if line.startswith("ExecStart="))
    command = start.split()[1:]
    assert command[0] == "agent"
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
