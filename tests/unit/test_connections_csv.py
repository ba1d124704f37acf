"""connections.csv as Arrow's CSV writer makes it (record.connections_csv): what it holds reads
back as the rows it was made from, appended a batch at a time or written whole."""
import csv
import io

import numpy as np
import pandas as pd

from support.streaming import whole_run
from agent.record import connections_csv
from agent.record import rows
from support.incidents import ACTIVE_CLIENT, PASSIVE_SERVER
from support.streams import raw, replay


def _rows(tmp_path) -> pd.DataFrame:
    events, run = replay(tmp_path, *(raw(skaddr=i, pid=10 + i, comm=name, ts=1.0 + i / 7, opened=0.5 + i / 3,
                                         lport=40000 + i, **(ACTIVE_CLIENT if i % 2 else PASSIVE_SERVER))
                                     for i, name in enumerate(["web", 'a,b "c"', "line\nbreak", "+SUM(A1)", "ok"])),
                         ended=9.0)
    conns = whole_run(events, run)
    conns.loc[0, "thread_comm"] = "=HYPERLINK(x)"
    return conns


def _written(*parts: pd.DataFrame) -> bytes:
    f = io.BytesIO()
    writer = connections_csv.Writer(f)
    for part in parts:
        writer.append(rows.table(part))
    writer.close()
    return f.getvalue()


def test_the_cells_read_back_as_the_rows(tmp_path):
    conns = _rows(tmp_path)
    back = pd.read_csv(io.BytesIO(_written(conns)), keep_default_na=False, na_values=[""])
    assert list(back.columns) == connections_csv.COLUMNS
    for column in connections_csv.COLUMNS:
        want, got = conns[column], back[column]
        if pd.api.types.is_float_dtype(want):
            assert np.allclose(want.to_numpy(float), got.to_numpy(float), rtol=0, atol=1e-6, equal_nan=True), column
        elif column in connections_csv.FREE_TEXT:
            continue
        else:
            assert [None if pd.isna(v) else str(v) for v in want] == [None if pd.isna(v) else str(v) for v in got], column
    names = list(back["comm"])
    assert names[:3] == ["web", 'a,b "c"', "line\nbreak"]  # quoted: a comma, a quote or a newline stays in its cell
    assert names[3] == "'+SUM(A1)" and back.loc[0, "thread_comm"] == "'=HYPERLINK(x)"  # text, not a formula


def test_rows_appended_a_batch_at_a_time_make_the_same_file_as_all_at_once(tmp_path):
    conns = _rows(tmp_path)
    assert _written(conns.iloc[:2], conns.iloc[2:2], conns.iloc[2:]) == _written(conns)


def test_no_rows_is_the_header_alone():
    text = _written().decode()
    assert next(csv.reader(io.StringIO(text))) == connections_csv.COLUMNS and text.count("\n") == 1
