"""--aggregates: per-process counts made in BPF, merged with the lives still open at the end."""
import csv
import json

from click.testing import CliRunner

from agent.cli import main
from support.streams import raw, replay

COUNTS = [  # as Probe.process_counts reads the procs map
    {"pid": 10, "comm": "client", "lives": 40, "active": 38, "passive": 0, "simultaneous": 1, "reset_local": 0,
     "reset_remote": 1, "never_established": 0, "timewait": 39},
    {"pid": 20, "comm": "server", "lives": 39, "active": 0, "passive": 39, "simultaneous": 0, "reset_local": 0,
     "reset_remote": 0, "never_established": 0, "timewait": 0},
    {"pid": None, "comm": "", "lives": 2, "active": 0, "passive": 0, "simultaneous": 0, "reset_local": 0,
     "reset_remote": 0, "never_established": 2, "timewait": 0},
]


def test_report_of_an_aggregates_run_writes_per_process_rows_only(tmp_path):
    leak = raw("open", skaddr=3, pid=20, comm="server", states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT"),
               last="CLOSE_WAIT", close_wait=2.0, ts=0, owner="listener")
    replay(tmp_path, leak, ended=10.0, aggregates=COUNTS)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", str(tmp_path / "stream.jsonl"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["processes.csv", "run.json", "summary.txt", "workloads.csv"]
    with open(out / "processes.csv") as f:
        rows = {r["comm"]: r for r in csv.DictReader(f)}
    client, server, unknown = rows["client"], rows["server"], rows[""]
    assert (client["connections"], client["active_closes"], client["simultaneous_closes"],
            client["resets_remote"], client["timewait_count"]) == ("40", "38", "1", "1", "39")
    assert client["timewait_p50_s"] == ""  # counted, not timed
    # the server's 39 ended lives and its one CLOSE_WAIT still open
    assert (server["connections"], server["passive_closes"], server["close_wait_open"]) == ("40", "39", "1")
    assert float(server["close_wait_max_age_s"]) == 8.0
    assert (unknown["pid"], unknown["connections"]) == ("", "2")
    text = (out / "summary.txt").read_text()
    assert text.startswith("tcpclose: 82 socket lives of 2 processes")  # and one owner never learnt
    assert "client (pid 10) closed first on 38 of 39 closes" in text


def test_doctor_given_an_aggregates_run_says_what_it_cannot_tell(tmp_path):
    replay(tmp_path, raw(), ended=10.0, aggregates=COUNTS)
    out = tmp_path / "out"
    CliRunner().invoke(main, ["report", str(tmp_path / "stream.jsonl"), "-o", str(out)])
    for run in (tmp_path / "stream.jsonl", out):
        result = CliRunner().invoke(main, ["doctor", str(run), "--json"])
        assert result.exit_code == 0, result.output
        assert [f["topic"] for f in json.loads(result.output)["recording"]] == ["aggregates"]


def test_a_run_counted_only_says_why_and_what_to_do(tmp_path):
    skipped = {"records": 16_000_000, "needed_bytes": 19_200_000_000, "available_bytes": 20 * 2 ** 30}
    replay(tmp_path, raw(), ended=10.0, aggregates=COUNTS, analysis_skipped=skipped)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", str(tmp_path / "stream.jsonl"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["processes.csv", "run.json", "summary.txt", "workloads.csv"]
    for text in (result.output, (out / "summary.txt").read_text()):
        assert "16,000,000 records would need about 17.9 GiB, with 20.0 GiB available" in text
        assert "use --aggregates" in text
