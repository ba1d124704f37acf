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


def test_the_daemonset_runs_the_agent_on_every_node_with_what_it_needs_and_no_more():
    """No kubeconform here: the manifest is loaded and the fields that matter are checked."""
    import yaml

    manifest = yaml.safe_load((DEPLOY / "daemonset.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("apps/v1", "DaemonSet")
    spec = manifest["spec"]["template"]["spec"]
    assert spec["hostPID"] and spec["hostNetwork"]  # the node's processes and sockets
    assert manifest["spec"]["selector"]["matchLabels"].items() <= manifest["spec"]["template"]["metadata"][
        "labels"].items()
    (container,) = spec["containers"]
    context = container["securityContext"]
    assert context["privileged"] is False and context["capabilities"]["drop"] == ["ALL"]
    assert {"BPF", "PERFMON", "SYS_PTRACE"} <= set(context["capabilities"]["add"])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/sys/kernel/tracing", "/sys/fs/cgroup", "/lib/modules", "/usr/src"} <= mounts
    volumes = {v["name"] for v in spec["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} <= volumes
    result = CliRunner().invoke(main, [*container["args"], "--help"])  # the command and options exist
    assert result.exit_code == 0, result.output
    port = int(container["args"][container["args"].index("--listen") + 1].rsplit(":", 1)[1])
    assert container["ports"][0]["containerPort"] == port == container["livenessProbe"]["httpGet"]["port"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_image_runs_the_agent_command():
    text = (DEPLOY / "Containerfile").read_text()
    assert 'CMD ["agent", "--listen", "0.0.0.0:9864"]' in text and "python3-bpfcc" in text
