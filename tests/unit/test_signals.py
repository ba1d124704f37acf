"""Ctrl-C and SIGTERM: the first ends tracing, and the files are still written; once
tracing is over, a signal is answered with a warning and only the next abandons them."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from agent.run import control
from agent.errors import Abandoned
from support.streams import churn, replay

TCPCLOSE = [sys.executable, "-m", "agent"]


def test_the_first_signal_ends_tracing_the_next_warns_then_abandons():
    warnings = []
    stop = control.Stop(warn=warnings.append)
    stop.signalled()
    assert stop.is_set() and warnings == []
    stop.finishing()
    stop.signalled()
    assert len(warnings) == 1 and "Ctrl-C again abandons" in warnings[0]
    with pytest.raises(Abandoned):
        stop.signalled()


def test_a_signal_while_the_files_are_written_only_warns():
    warnings = []
    stop = control.Stop(warn=warnings.append)
    stop.finishing()  # ended by --duration, or a report from a recording: no signal yet
    stop.signalled()
    assert len(warnings) == 1


@pytest.fixture(scope="module")
def big_recording(tmp_path_factory):
    """A recording whose report takes seconds: past control.LONG_END_RECORDS."""
    connections = control.LONG_END_RECORDS // 3 + 1000
    tmp = tmp_path_factory.mktemp("big")
    replay(tmp, churn(connections), ended=200.0)
    return tmp / "stream.jsonl", connections


def start_report(recording, out) -> subprocess.Popen:
    proc = subprocess.Popen([*TCPCLOSE, "report", str(recording), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()  # the announcement: the files are being made from here on
    assert line.startswith("tcpclose: analysing ") and "records" in line, line + proc.stderr.read()
    return proc


@pytest.mark.slow  # a recording of 200 000 records, written and reported in a child
def test_sigterm_while_writing_the_files_still_writes_them_all(tmp_path, big_recording):
    recording, connections = big_recording
    proc = start_report(recording, tmp_path / "out")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "still analysing the run and writing its files" in err
    assert "the incident report:" in err
    with open(tmp_path / "out" / "connections.csv") as f:
        assert sum(1 for _ in f) == 1 + 2 * connections  # the header, then both ends of each


@pytest.mark.slow  # a recording of 200 000 records, written and reported in a child
def test_ctrl_c_twice_while_writing_the_files_abandons_them_in_one_line(tmp_path, big_recording):
    recording, _ = big_recording
    proc = start_report(recording, tmp_path / "out")
    proc.send_signal(signal.SIGINT)
    warning = proc.stderr.readline()
    assert "Ctrl-C again abandons" in warning
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "tcpclose: abandoned: the files were not all written"
    assert not (tmp_path / "out" / "report.html").exists()
