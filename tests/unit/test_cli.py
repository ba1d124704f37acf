"""The command line through click's runner: outputs from recordings, and every expected error."""
import csv
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.analysis import lives, processes
from agent.kernel import preflight
from agent.cli import main
from support.streams import raw, replay, recorded_text

README = Path(__file__).resolve().parents[2] / "README.md"


def run(*args):
    return CliRunner().invoke(main, list(args))


def one_line_error(result, code, *words):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tcpclose: "), result.output
    for word in words:
        assert word in lines[0]


@pytest.fixture
def recording(tmp_path):
    stream = [
        raw(skaddr=1, pid=10, comm="client", states=("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2")),
        raw(skaddr=2, pid=20, comm="server", states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"),
            last="LAST_ACK"),
        raw("open", skaddr=3, pid=20, comm="server", states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT"),
            last="CLOSE_WAIT", close_wait=2.0, ts=0),
    ]
    replay(tmp_path, *stream)
    return tmp_path / "stream.jsonl"


def test_report_writes_the_contract_files(tmp_path, recording):
    out = tmp_path / "out"
    result = run("report", str(recording), "-o", str(out))
    assert result.exit_code == 0, result.output
    with open(out / "connections.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:len(lives.CONNECTION_COLUMNS)] == lives.CONNECTION_COLUMNS  # the contract's first, in order
    assert [r["initiator"] for r in rows] == ["active", "passive", "open"]
    with open(out / "processes.csv") as f:
        procs = {r["comm"]: r for r in csv.DictReader(f)}
    columns = list(next(iter(procs.values())))
    assert columns[:len(processes.PROCESS_COLUMNS)] == processes.PROCESS_COLUMNS  # the contract's first
    assert procs["server"]["close_wait_open"] == "1" and procs["client"]["active_closes"] == "1"
    text = (out / "summary.txt").read_text()
    assert "client (pid 10) closed first on 1 of 1" in text
    assert "server (pid 20): 1 sockets in CLOSE_WAIT" in text
    assert "Not seen: 0 ring-buffer drops" in text


def test_a_command_allocates_pyarrows_buffers_on_the_c_heap(recording):
    """run.memory.arrow_on_the_c_heap: mimalloc, pyarrow's default, keeps what a step freed
    where malloc_trim cannot hand it back."""
    import pyarrow

    before = pyarrow.default_memory_pool()
    try:
        pyarrow.set_memory_pool(pyarrow.mimalloc_memory_pool())
        assert run("report", str(recording)).exit_code == 0
        assert pyarrow.default_memory_pool().backend_name == "system"
    finally:
        pyarrow.set_memory_pool(before)


def test_a_command_has_malloc_map_its_big_blocks_apart(recording, monkeypatch):
    """run.memory.big_blocks_mapped (tests/unit/test_c_heap.py): what a step freed goes back."""
    from agent.run import memory

    called = []
    monkeypatch.setattr(memory, "big_blocks_mapped", lambda: called.append(True))
    assert run("report", str(recording)).exit_code == 0
    assert called


def test_report_without_out_prints_the_summary(recording):
    result = run("report", str(recording))
    assert result.exit_code == 0
    assert "Who closes first" in result.output


def test_report_of_a_corrupt_recording_names_the_line(tmp_path, recording):
    lines = recorded_text(recording).splitlines()
    lines[1] = lines[1][:20]
    recording.write_text("\n".join(lines) + "\n")
    one_line_error(run("report", str(recording)), 7, "stream.jsonl:2")


def test_report_of_a_missing_file_is_a_usage_error(tmp_path):
    result = run("report", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.parametrize("args, text", [
    (["-L", "70000"], "not a port"),
    (["-D", "80,x"], "not a port"),
    (["-p", "abc"], "not a valid integer"),
    (["-d", "-1"], "-1"),
    (["-4", "-6"], "exclude each other"),
    (["-c", "a-name-longer-than-15"], "1 to 15 bytes"),
])
def test_bad_option_values_are_usage_errors(args, text):
    result = run("trace", *args)
    assert result.exit_code == 2, result.output
    assert text in result.output
    assert "Traceback" not in result.output


def test_not_root(monkeypatch):
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    one_line_error(run("trace", "-d", "1"), 3, "sudo")


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 0)


def test_no_tracefs(as_root, monkeypatch, tmp_path):
    monkeypatch.setattr(preflight, "TRACEFS_ROOTS", (tmp_path,))
    one_line_error(run("trace", "-d", "1"), 6, "mount -t tracefs")


def test_no_tracepoint(as_root, monkeypatch, tmp_path):
    (tmp_path / "events" / "sock").mkdir(parents=True)
    monkeypatch.setattr(preflight, "TRACEFS_ROOTS", (tmp_path,))
    one_line_error(run("trace", "-d", "1"), 6, "sock:inet_sock_set_state", "4.16")


def test_no_headers(as_root, monkeypatch, tmp_path):
    monkeypatch.setattr(preflight, "check_tracepoints", lambda: None)
    monkeypatch.setattr(preflight, "MODULES_DIR", tmp_path)
    one_line_error(run("trace", "-d", "1"), 5, "linux-headers-", "make setup")


def test_no_bcc(as_root, monkeypatch):
    monkeypatch.setattr(preflight, "check_tracepoints", lambda: None)
    monkeypatch.setattr(preflight, "check_headers", lambda: None)
    monkeypatch.setitem(sys.modules, "bcc", None)
    one_line_error(run("trace", "-d", "1"), 4, "python3-bpfcc")


def test_print_bpf_shows_the_filters_as_defines():
    result = run("trace", "--print-bpf", "-p", "42", "-c", "nginx", "-L", "80", "-4")
    assert result.exit_code == 0
    first = result.output.splitlines()[0]
    for flag in ["-DFILTER_TGID=42", "-DFILTER_COMM", "-DFILTER_LPORTS", f"-DFILTER_FAMILY={2}"]:
        assert flag in first
    assert "TRACEPOINT_PROBE(sock, inet_sock_set_state)" in result.output


@pytest.mark.parametrize("command", ["trace", "report", "demo"])
def test_every_command_has_help_with_examples_and_is_in_the_readme(command):
    for flag in ("-h", "--help"):
        result = run(command, flag)
        assert result.exit_code == 0
        assert "Example" in result.output
    assert f"tcpclose {command}" in README.read_text()




@pytest.mark.parametrize("command", ["states", "doctor"])
def test_entering_a_namespace_without_root_is_one_line_naming_the_fix(monkeypatch, tmp_path, command):
    monkeypatch.setattr("agent.kernel.netns.named_netns", lambda name: tmp_path)
    monkeypatch.setattr("agent.cli.options.os.geteuid", lambda: 1000)
    one_line_error(run(command, "--netns", "web1"), 3, "needs root", "sudo ip netns exec web1")
