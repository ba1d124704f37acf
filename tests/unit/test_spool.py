"""The spool: raw records on disk while tracing, back in order at the end."""
import os
import tempfile

import numpy as np
import pandas as pd
import pytest

from agent.record import decode, layout, spool
from agent import safefiles
from agent.errors import CannotWrite
from support.streams import OFFSET_NS, raw


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
    decoded = decode.decode(back, OFFSET_NS)
    assert decoded["pid"].tolist() == [1, 2, 3, 4, 5]


def _where(s: spool.Spool) -> str:
    return os.readlink(f"/proc/self/fd/{s._file.fileno()}")


def test_the_file_has_no_name_and_stays_off_tmpfs_unless_tmpdir_says(tmp_path, monkeypatch):
    given = spool.Spool(layout.EVENT_DTYPE, str(tmp_path))
    assert _where(given).startswith(str(tmp_path)) and _where(given).endswith("(deleted)")
    monkeypatch.delenv("TMPDIR", raising=False)
    assert _where(spool.Spool(layout.EVENT_DTYPE)).startswith(safefiles.SCRATCH_DIR + "/")
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
    monkeypatch.setattr(safefiles, "SCRATCH_DIR", str(tmp_path / "missing"))
    assert _where(spool.Spool(layout.EVENT_DTYPE)).startswith(tempfile.gettempdir() + "/")


def test_a_spool_that_cannot_be_made_is_one_line_naming_the_fix(tmp_path):
    with pytest.raises(CannotWrite, match=r"cannot make the spool file in .*missing: .*set TMPDIR"):
        spool.Spool(layout.EVENT_DTYPE, str(tmp_path / "missing"))
