"""tcpclose as root on someone else's host: planted links, other users' directories, full and
read-only file systems, names that carry terminal escapes or spreadsheet formulas, bad
option values.  Each case once did harm or printed a traceback (issue: hostile input)."""
import csv
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from support.streaming import whole_run
from agent.record.runrows import RunRows
from agent.cli import main
from agent.errors import CannotWrite
from agent.record.recording import Recorder
from support.streams import raw, replay, recorded_text

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown and mount need root (make test runs as root)")
NOBODY = 65534


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, code, *words):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("tcpclose: ") and "Traceback" not in result.output, result.output
    for word in words:
        assert word in lines[-1], lines[-1]


@pytest.fixture
def recording(tmp_path):
    replay(tmp_path, raw(skaddr=1, pid=10, comm="client", states=("SYN_SENT", "ESTABLISHED", "FIN_WAIT1")))
    return tmp_path / "stream.jsonl"


@pytest.fixture
def victim(tmp_path):
    """A file of root's that a planted link points at: it must never change."""
    path = tmp_path / "victim"
    path.write_text("root's own\n")
    return path


def test_a_link_planted_at_an_output_file_is_replaced_never_followed(tmp_path, recording, victim):
    out = tmp_path / "out"
    out.mkdir()
    (out / "connections.csv").symlink_to(victim)
    (out / "run.json").symlink_to(tmp_path / "made-through-a-link")
    assert run("report", recording, "-o", out).exit_code == 0
    assert victim.read_text() == "root's own\n" and not (tmp_path / "made-through-a-link").exists()
    assert not (out / "connections.csv").is_symlink() and "initiator" in (out / "connections.csv").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_an_output_directory_that_is_a_link_is_refused(tmp_path, recording):
    (tmp_path / "real").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "real")
    one_line_error(run("report", recording, "-o", tmp_path / "out"), 8, "symbolic link")
    assert not list((tmp_path / "real").iterdir())


@as_root
def test_another_users_directory_that_others_can_write_in_is_refused_unless_forced(tmp_path, recording, victim):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    os.chown(shared, NOBODY, NOBODY)
    (shared / "summary.txt").symlink_to(victim)
    one_line_error(run("report", recording, "-o", shared), 8, f"uid {NOBODY}", "--force")
    assert run("report", recording, "-o", shared, "--force").exit_code == 0
    assert victim.read_text() == "root's own\n" and not (shared / "summary.txt").is_symlink()


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo"])
def test_a_stream_is_never_written_through_a_planted_link_or_into_a_fifo(tmp_path, victim, plant):
    path = tmp_path / "rec.jsonl"
    {"symlink": lambda: path.symlink_to(victim), "hardlink": lambda: os.link(victim, path),
     "fifo": lambda: os.mkfifo(path)}[plant]()
    with pytest.raises(CannotWrite, match="rec.jsonl"):
        Recorder(path)
    assert victim.read_text() == "root's own\n"


@contextmanager
def tmpfs(where: Path, options: str):
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tcpclose-test", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@as_root
def test_a_read_only_directory_fails_before_anything_is_done(tmp_path, recording):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        one_line_error(run("report", recording, "-o", ro / "out"), 8, "Read-only file system")


@as_root
def test_a_disk_that_fills_up_keeps_the_earlier_files_whole_and_the_summary_on_stderr(tmp_path, recording):
    with tmpfs(tmp_path / "small", "size=256k") as small:
        out = small / "out"
        assert run("report", recording, "-o", out).exit_code == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        filler = small / "filler"
        with open(filler, "wb", buffering=0) as f:  # fill the disk to the last block
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        result = run("report", recording, "-o", out)
        one_line_error(result, 8, "No space left on device")
        assert "Who closes first" in result.output  # the summary, on stderr
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing half-written


@as_root
def test_a_trace_whose_files_cannot_be_written_is_kept_as_a_recording_elsewhere(tmp_path, recording, monkeypatch,
                                                                               capsys):
    from agent.cli import results
    from agent.record.recording import read_recording
    from agent.safefiles import OutputDir

    events, run_info = read_recording(recording)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    with tmpfs(tmp_path / "small", "size=64k") as small:
        out = OutputDir(small / "out")
        with open(small / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        with pytest.raises(CannotWrite, match="No space left"):
            results.show(RunRows.at_hand(whole_run(events, run_info), run_info), run_info, out, rescue=True)
    kept = list(scratch.glob("tcpclose-rescue-*"))
    assert len(kept) == 1 and f"the run is kept in {kept[0]}" in capsys.readouterr().err
    assert (kept[0].stat().st_mode & 0o777) == 0o700  # root's alone
    assert sorted(p.name for p in kept[0].iterdir()) == ["connections.arrow", "run.json"]
    result = run("report", kept[0], "-o", tmp_path / "later")
    assert result.exit_code == 0 and (tmp_path / "later" / "connections.csv").read_text() == (
        _report_files(recording, tmp_path / "direct")["connections.csv"])


def _report_files(recording: Path, out: Path) -> dict[str, str]:
    assert run("report", recording, "-o", out).exit_code == 0
    return {p.name: p.read_text() for p in out.iterdir() if p.suffix == ".csv"}


def test_a_counted_only_run_into_a_directory_of_a_full_run_removes_the_files_that_are_not_its(tmp_path, recording):
    out = tmp_path / "out"
    assert run("report", recording, "-o", out).exit_code == 0
    assert (out / "connections.csv").exists()
    counts = [{"pid": 10, "comm": "client", "lives": 1, "active": 1, "passive": 0, "simultaneous": 0,
               "reset_local": 0, "reset_remote": 0, "never_established": 0, "timewait": 1}]
    replay(tmp_path, raw(), aggregates=counts)
    assert run("report", recording, "-o", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["processes.csv", "run.json", "summary.txt", "workloads.csv"]


def test_a_name_with_a_newline_and_an_escape_cannot_forge_rows_on_the_terminal(tmp_path):
    forged = "x\n10864  FAKE\x1b["
    replay(tmp_path, raw(skaddr=1, pid=10, comm=forged[:15], states=("SYN_SENT", "ESTABLISHED", "FIN_WAIT1")))
    result = run("report", tmp_path / "stream.jsonl")
    assert result.exit_code == 0
    assert "\x1b" not in result.output and "\n10864  FAKE" not in result.output
    assert "x\\n10864  FAKE\\x1b[" in result.output


def test_a_name_that_a_spreadsheet_would_run_is_written_as_text(tmp_path):
    replay(tmp_path, raw(skaddr=1, pid=10, comm="=cmd|' /C calc'", states=("SYN_SENT", "ESTABLISHED")))
    assert run("report", tmp_path / "stream.jsonl", "-o", tmp_path / "out").exit_code == 0
    for name in ("connections.csv", "processes.csv"):
        with open(tmp_path / "out" / name) as f:
            assert {row["comm"] for row in csv.DictReader(f)} == {"'=cmd|' /C calc'"}


@pytest.mark.parametrize("args, text", [
    (["trace", "--netns", "../../etc"], "not a namespace name"),
    (["states", "--netns", "a/b"], "not a namespace name"),
    (["trace", "-p", "4294967297"], "4294967297"),
    (["trace", "-d", "nan"], "give a number of seconds"),
    (["trace", "-d", "inf"], "inf"),
])
def test_bad_values_are_usage_errors_not_tracebacks(args, text):
    result = run(*args)
    assert result.exit_code == 2 and text in result.output and "Traceback" not in result.output, result.output


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.output.startswith("tcpclose ")


def test_a_recording_whose_last_line_was_cut_off_mid_write_is_reported_up_to_it(tmp_path, recording):
    text = recorded_text(recording)
    recording.write_text(text[: len(text) - 40])  # the run line cut off, no newline after it
    result = run("report", recording)
    assert result.exit_code == 0, result.output
    assert "client (pid 10)" in result.output and "cut short" in result.output


def test_the_comm_filter_is_never_in_the_c_source():
    result = run("trace", "--print-bpf", "-c", 'a"b\\c')
    assert result.exit_code == 0
    assert "-DFILTER_COMM" in result.output.splitlines()[0] and 'a"b' not in result.output


@pytest.mark.parametrize("command", ["report", "doctor"])
@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_device_or_a_fifo_is_not_a_recording(tmp_path, command, special):
    if special == "fifo":
        special = tmp_path / "fifo"
        os.mkfifo(special)
    one_line_error(run(command, special), 7, "not a regular file")


@as_root
def test_a_disk_that_fills_up_under_record_stops_the_recording_not_the_run(tmp_path):
    """The recording keeps what it could write, readable, and says why it stopped."""
    from agent.record import decode
    from agent.record.recording import read_recording
    from agent.record.runinfo import RunInfo
    from support.streams import HZ, OFFSET_NS, churn

    events = decode.decode(churn(4000), OFFSET_NS, HZ)  # some 8 MB of JSON, compressed tenfold
    with tmpfs(tmp_path / "small", "size=64k") as small:
        recorder = Recorder(small / "rec.jsonl")
        for start in range(0, len(events), 500):
            recorder.write(events.iloc[start:start + 500])
        recorder.finish(RunInfo(started_at=0.0, ended_at=1.0))
        assert recorder.stopped and "No space left on device" in recorder.stopped
        kept, run = read_recording(small / "rec.jsonl")
        assert 0 < len(kept) < len(events) and run.cut_short


def test_a_compressed_recording_cut_anywhere_reads_up_to_where_it_was_cut(tmp_path):
    """A kill -9 leaves the compressed stream unfinished: what was flushed before it reads."""
    from agent.record import decode
    from agent.record.recording import read_recording
    from agent.record.runinfo import RunInfo
    from support.streams import HZ, OFFSET_NS, churn

    events = decode.decode(churn(300), OFFSET_NS, HZ)
    path = tmp_path / "rec.jsonl"
    recorder = Recorder(path)
    for start in range(0, len(events), 100):
        recorder.write(events.iloc[start:start + 100])
    recorder.finish(RunInfo(started_at=0.0, ended_at=1.0))
    whole = path.read_bytes()
    assert whole[:2] == b"\x1f\x8b" and len(whole) * 5 < len(recorded_text(path))  # gzip, and it pays
    assert len(read_recording(path)[0]) == len(events)
    seen = []
    for cut in (len(whole) * tenth // 10 for tenth in range(1, 9)):  # (the run line is in the last tenth)
        path.write_bytes(whole[:cut])
        kept, run = read_recording(path)
        assert run.cut_short and 0 < len(kept) < len(events)
        assert kept["skaddr"].tolist() == events["skaddr"].iloc[:len(kept)].tolist()  # the first ones, in order
        seen.append(len(kept))
    assert seen == sorted(seen) and len(set(seen)) > 5  # each flushed batch becomes readable


@pytest.mark.parametrize("field, value, says", [
    ("pid", "x", "pid is str, not a number"),
    ("lport", 70000, "lport is 70000, outside 0 to 65535"),
    ("opened_at", float("inf"), "opened_at is not a finite number"),
    ("opened_at", float("nan"), "opened_at is not a finite number"),
    ("pid", True, "pid is bool, not a number"),  # (an int to Python)
    ("pid", 20.5, "pid is 20.5, not a whole number"),
    ("lport", 443.5, "lport is 443.5, not a whole number"),
    ("comm", "c" * 100_000, "comm is not a name of at most 64 characters"),
    ("comm", None, "comm not set in a life record"),
    ("last_state", ["x"], "last_state"),
])
def test_a_field_of_the_wrong_type_or_size_is_one_line_naming_the_line(tmp_path, recording, field, value, says):
    import json

    lines = recorded_text(recording).splitlines()
    row = json.loads(lines[0])
    row[field] = value
    recording.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    one_line_error(run("report", recording), 7, "stream.jsonl:1:", says)


@as_root
def test_a_disk_that_fills_up_under_transitions_stops_the_stream_not_the_run(tmp_path):
    """The transitions written stay, the rest is counted as not written, and the summary says why."""
    import numpy as np

    from agent.output.text import transitions_line
    from agent.record import layout, transitions

    batch = np.zeros(500, layout.TRANSITION_DTYPE)
    batch["family"], batch["comm"] = 2, b"tc-stream"
    with tmpfs(tmp_path / "small", "size=64k") as small:
        writer = transitions.Writer(small / "t.csv", 0)
        for _ in range(20):  # about 10 000 rows of some 60 bytes: more than 64 KiB
            writer.write(batch)
        writer.close()
        assert writer.stopped and "No space left on device" in writer.stopped
        assert 0 < writer.written < 20 * len(batch)
        line = transitions_line(transitions.accounting(writer.written, {"transitions": 20 * len(batch)},
                                                       str(small / "t.csv"), writer.stopped))
        assert f"{20 * len(batch) - writer.written} not written after it" in line
