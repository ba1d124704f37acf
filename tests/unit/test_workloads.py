"""Processes grouped by name: a loop of short-lived clients is one application, not a row
per pid (--by, --top, workloads.csv)."""
import csv

from click.testing import CliRunner

from support.streaming import whole_run
from agent.record.runrows import RunRows
from agent.cli import main
from support.streams import raw, replay

CURLS = 30
CLIENT = dict(states=("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), last="FIN_WAIT2")
SERVER = dict(states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"), last="LAST_ACK")


def curl_loop(tmp_path):
    """CURLS processes named curl, one connection each to a server that closes after them."""
    stream = []
    for i in range(CURLS):
        t = 1.0 + i * 0.1
        stream.append(raw(skaddr=2 * i + 1, pid=1000 + i, comm="curl", lport=50000 + i, rport=80,
                          opened=t, ts=t + 0.01, **CLIENT))
        stream.append(raw(skaddr=2 * i + 2, pid=20, comm="web", lport=80, rport=50000 + i,
                          opened=t, ts=t + 0.01, **SERVER))
    replay(tmp_path, *stream, ended=10.0)
    return tmp_path / "stream.jsonl"


def report(*args):
    result = CliRunner().invoke(main, ["report", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_loop_of_processes_of_one_name_is_one_row_and_one_finding(tmp_path):
    text = report(curl_loop(tmp_path))
    assert text.startswith(f"tcpclose: {2 * CURLS} socket lives of {CURLS + 1} processes")
    table = text.split("\n\n")[0].splitlines()[1:]
    assert [line.split()[1] for line in table[1:]] == ["curl", "web"]  # PID COMM PROCS ...
    assert table[0].split()[:3] == ["PID", "COMM", "PROCS"] and table[1].split()[2] == str(CURLS)
    assert text.count(f"curl ({CURLS} processes) closed first on {CURLS} of {CURLS} closes") == 1
    assert "curl (pid" not in text


def test_by_pid_shows_each_process_and_top_sums_the_rest(tmp_path):
    recording = curl_loop(tmp_path)
    text = report(recording, "--by", "pid", "--top", "0")
    assert sum(f"curl (pid {1000 + i}) closed first" in text for i in range(CURLS)) == CURLS
    text = report(recording, "--by", "pid", "--top", "3")
    table = text.split("\n\n")[0].splitlines()[2:]
    assert len(table) == 4 and table[0].split()[:4] == ["20", "web", "1", str(CURLS)]  # PID COMM PROCS CONNS
    other = table[3].split()
    assert other[:5] == ["-", f"{CURLS - 2}", "others", str(CURLS - 2), str(CURLS - 2)]


def test_workloads_csv_has_a_row_per_name_and_processes_csv_a_row_per_process(tmp_path):
    out = tmp_path / "out"
    report(curl_loop(tmp_path), "-o", out)
    with open(out / "workloads.csv") as f:
        names = {row["comm"]: row for row in csv.DictReader(f)}
    assert set(names) == {"curl", "web"}
    curl = names["curl"]
    assert (curl["processes"], curl["connections"], curl["active_closes"]) == (str(CURLS), str(CURLS), str(CURLS))
    assert curl["pids"] == "1000 1001 1002 1003 1004 ..." and names["web"]["pids"] == "20"
    with open(out / "processes.csv") as f:
        assert sum(row["comm"] == "curl" for row in csv.DictReader(f)) == CURLS


def test_the_summary_wraps_at_the_terminals_width(tmp_path, monkeypatch):
    """On a terminal of 70 columns no line is longer (rich wraps between words); into a pipe or a
    file, 120 as summary.txt."""
    import io
    import os
    import sys

    from agent.cli import results
    from agent.record.recording import read_recording

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    events, run = read_recording(curl_loop(tmp_path))
    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(results.shutil, "get_terminal_size", lambda fallback: os.terminal_size((70, 24)))
    kept = RunRows.at_hand(whole_run(events, run), run)
    results.show(kept, run, None)
    shown = sys.stdout.getvalue().splitlines()
    assert max(map(len, shown)) <= 70 and any(len(line) > 60 for line in shown)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal
    results.show(kept, run, None)
    assert max(map(len, sys.stdout.getvalue().splitlines())) > 70
