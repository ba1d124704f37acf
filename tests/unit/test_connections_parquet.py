"""--format parquet (record.connections_parquet): every column of the rows, in row groups as
they are appended, read back as they were; report writes it instead of connections.csv and
reads it back from a run directory that has no connections.arrow."""
import io

import pandas as pd
import pyarrow.parquet as pq
from click.testing import CliRunner

from agent.cli import main
from agent.record import connections_parquet
from agent.record import rows, rundir
from support.incidents import incident_stream
from support.streaming import cells_differ, whole_run
from support.streams import replay


def _report(*args) -> None:
    result = CliRunner().invoke(main, ["report", *map(str, args)])
    assert result.exit_code == 0, result.output


def test_rows_appended_in_pieces_read_back_whole_in_row_groups(tmp_path, monkeypatch):
    conns = whole_run(*replay(tmp_path, *incident_stream(), ended=150.0, timewait="timers"))
    monkeypatch.setattr(connections_parquet, "ROW_GROUP_ROWS", 10)
    f = io.BytesIO()
    writer = connections_parquet.Writer(f)
    for start in range(0, len(conns), 7):
        writer.append(rows.table(conns.iloc[start:start + 7]))
    writer.close()
    read = pq.ParquetFile(io.BytesIO(f.getvalue()))
    assert read.metadata.num_rows == len(conns) > 30 and read.metadata.num_row_groups == -(-len(conns) // 10)
    assert [read.metadata.row_group(i).num_rows for i in range(read.metadata.num_row_groups - 1)] == [10] * (
        read.metadata.num_row_groups - 1)  # pieces of 7 gathered into groups of ROW_GROUP_ROWS exactly
    assert read.schema_arrow == rows.SCHEMA  # every column, typed
    assert cells_differ(conns, rows.frame(read.read())).empty


def test_report_writes_parquet_instead_of_csv_and_reads_it_back_from_a_run_directory(tmp_path):
    replay(tmp_path, *incident_stream(), ended=150.0, timewait="timers")
    recording, as_csv, as_parquet = tmp_path / "stream.jsonl", tmp_path / "csv", tmp_path / "parquet"
    _report(recording, "-o", as_csv)
    _report(recording, "-o", as_parquet, "--format", "parquet")
    assert (as_parquet / "connections.parquet").is_file() and not (as_parquet / "connections.csv").exists()
    from_csv = pd.read_csv(as_csv / "connections.csv")
    from_parquet = pq.read_table(as_parquet / "connections.parquet").to_pandas()
    assert len(from_csv) == len(from_parquet) > 30
    assert (from_csv["initiator"].tolist(), from_csv["lport"].tolist()) == (
        from_parquet["initiator"].tolist(), from_parquet["lport"].tolist())

    (as_parquet / rundir.ROWS).unlink()  # a directory with the parquet rows only
    again = tmp_path / "again"
    _report(as_parquet, "-o", again)
    assert (again / "processes.csv").read_text() == (as_csv / "processes.csv").read_text()
    _report(as_parquet, "-o", again, "--format", "parquet")  # the other format of an earlier run goes
    assert (again / "connections.parquet").is_file() and not (again / "connections.csv").exists()
