"""bench.rowcost: a recording's records made into rows and figures, timed, the reading left out."""
from __future__ import annotations

import re

from bench import rowcost
from support.streams import churn, replay


def test_rowcost_makes_every_row_of_the_recording_in_each_repeat(tmp_path, capsys):
    replay(tmp_path, churn(1_000, span=20.0), ended=30.0, timewait="timers")  # 3 records a connection
    rowcost.main([str(tmp_path / "stream.jsonl"), "--repeats", "2"])
    out = capsys.readouterr().out
    assert len(re.findall(r"\[\d/2\] [\d.]+ s CPU, [\d.]+ µs a record", out)) == 2, out
    summary = re.search(r"([\d,]+) records, ([\d,]+) rows: ([\d.]+) µs a record", out)
    assert summary, out
    assert summary.group(1) == "3,000"  # every event of the file, read once
    assert summary.group(2) == "2,000"  # a client's and a server's row a connection
    assert float(summary.group(3)) > 0
