"""The spool: raw records on disk while tracing, back in order at the end."""
import os
import tempfile

import numpy as np
import pandas as pd
import pytest

from agent import layout, records, spool
from agent.errors import CannotWrite
from streams import OFFSET_NS, raw


def batch(*pids: int) -> np.ndarray:
    return np.frombuffer(b"".join(raw(pid=p) for p in pids), layout.EVENT_DTYPE)


def test_batches_come_back_whole_and_in_order(tmp_path):
    s = spool.Spool(layout.EVENT_DTYPE, str(tmp_path))
    assert s.append(batch(1, 2)) == range(0, 2)
    assert s.append(batch(3)) == range(2, 3)
    first = s.read()
    assert s.append(batch(4, 5)) == range(3, 5)  # appending after a read goes on at the end
    back = s.read()
    assert first["pid"].tolist() == [1, 2, 3]
    assert back["pid"].tolist() == [1, 2, 3, 4, 5]
    assert back.tobytes() == b"".join(raw(pid=p) for p in (1, 2, 3, 4, 5))
    decoded = records.decode(back, OFFSET_NS)
    assert decoded["pid"].tolist() == [1, 2, 3, 4, 5]


def _where(s: spool.Spool) -> str:
    return os.readlink(f"/proc/self/fd/{s._file.fileno()}")


def test_the_file_has_no_name_and_stays_off_tmpfs_unless_tmpdir_says(tmp_path, monkeypatch):
    given = spool.Spool(layout.EVENT_DTYPE, str(tmp_path))
    assert _where(given).startswith(str(tmp_path)) and _where(given).endswith("(deleted)")
    monkeypatch.delenv("TMPDIR", raising=False)
    assert _where(spool.Spool(layout.EVENT_DTYPE)).startswith(spool.DEFAULT_DIR + "/")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert _where(spool.Spool(layout.EVENT_DTYPE)).startswith(str(tmp_path))


def test_in_order_decodes_consecutive_spans_together_between_frames(tmp_path):
    s = spool.Spool(layout.EVENT_DTYPE, str(tmp_path))
    existing = pd.DataFrame({"kind": ["existing"]})
    seen_at_end = pd.DataFrame({"kind": ["seen_at_end"]})
    parts = [existing, s.append(batch(1)), s.append(batch(2, 3)), seen_at_end, s.append(batch(4))]
    decoded = []

    def decode(part: np.ndarray) -> pd.DataFrame:
        decoded.append(part["pid"].tolist())
        return pd.DataFrame({"kind": ["life"] * len(part), "pid": part["pid"]})

    frames = spool.in_order(parts, s.read(), decode)
    assert decoded == [[1, 2, 3], [4]]
    assert [f["kind"].iloc[0] for f in frames] == ["existing", "life", "seen_at_end", "life"]
    assert frames[1]["pid"].tolist() == [1, 2, 3]


def test_in_order_refuses_spans_that_skip_records(tmp_path):
    s = spool.Spool(layout.EVENT_DTYPE, str(tmp_path))
    with pytest.raises(ValueError, match="out of order"):
        spool.in_order([range(0, 1), range(2, 3)], s.read(), lambda part: pd.DataFrame())


def test_without_a_writable_var_tmp_it_goes_to_tempfiles_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setattr(spool, "DEFAULT_DIR", str(tmp_path / "missing"))
    assert _where(spool.Spool(layout.EVENT_DTYPE)).startswith(tempfile.gettempdir() + "/")


def test_a_spool_that_cannot_be_made_is_one_line_naming_the_fix(tmp_path):
    with pytest.raises(CannotWrite, match=r"cannot make the spool file in .*missing: .*set TMPDIR"):
        spool.Spool(layout.EVENT_DTYPE, str(tmp_path / "missing"))


def tracer_holding(tmp_path, spooled: int, decoded: int):
    """A Tracer's end-of-run state without a probe: `spooled` records in the spool and a
    frame of `decoded` rows decoded already (as the timewaits still open are)."""
    from agent import session

    tracer = object.__new__(session.Tracer)
    tracer._offset_ns, tracer.hz, tracer._netns_of = OFFSET_NS, 250, {}
    tracer._spool = spool.Spool(layout.EVENT_DTYPE, str(tmp_path))
    tracer._parts = [tracer._spool.append(batch(*range(1, spooled + 1))),
                     records.decode(batch(*range(100, 100 + decoded)), OFFSET_NS)]
    return tracer


@pytest.mark.parametrize("available, skipped", [(12_000, False), (8_000, True)])
def test_the_memory_guard_counts_the_rows_decoded_already_too(tmp_path, monkeypatch, available, skipped):
    """4 spooled + 6 decoded rows at 900 bytes need 9 000: more than 80 % of 8 000, less than of 12 000."""
    from agent import kernel, session

    monkeypatch.setattr(session, "ANALYSIS_BYTES_PER_RECORD", 900)
    monkeypatch.setattr(kernel, "mem_available", lambda: available)
    run = {}
    events = tracer_holding(tmp_path, 4, 6)._analysable(run)
    assert ("analysis_skipped" in run) == skipped
    if skipped:
        assert run["analysis_skipped"]["records"] == 10 and run["analysis_skipped"]["needed_bytes"] == 9_000
        assert sum(c["lives"] for c in run["aggregates"]) == 4  # the spool's lives, counted per owner
        assert len(events) == 6  # the decoded rows stay events
    else:
        assert sorted(events["pid"]) == [1, 2, 3, 4, *range(100, 106)]
