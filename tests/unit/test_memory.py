"""The end of a default-mode run: what it keeps until then (run.kept) and whether it is
analysed whole or counted per process (run.memory)."""
import numpy as np
import pytest

from agent.record import decode, layout
from agent.run import memory
from agent.run.kept import Kept
from support.streams import OFFSET_NS, raw


def batch(*pids: int) -> np.ndarray:
    return np.frombuffer(b"".join(raw(pid=p) for p in pids), layout.EVENT_DTYPE)


def kept_holding(tmp_path, spooled: int, decoded: int) -> Kept:
    """`spooled` records in the spool and a frame of `decoded` rows decoded already (as
    the timewaits still open at the end are)."""
    kept = Kept(str(tmp_path))
    kept.add(batch(*range(1, spooled + 1)))
    kept.add(decode.decode(batch(*range(100, 100 + decoded)), OFFSET_NS))
    return kept


def decoder(records: np.ndarray):
    return decode.decode(records, OFFSET_NS)


@pytest.mark.parametrize("available, skipped", [(12_000, False), (8_000, True), (None, False)])
def test_the_guard_holds_the_rows_at_900_bytes_against_80_percent_of_what_is_available(available, skipped):
    """10 rows at 900 bytes need 9 000: more than 80 % of 8 000, less than of 12 000; unknown: try."""
    verdict = memory.too_big(10, available)
    assert (verdict is not None) == skipped
    if skipped:
        assert verdict == {"records": 10, "needed_bytes": 9_000, "available_bytes": 8_000}


def test_the_rows_to_analyse_count_the_rows_decoded_already_too(tmp_path):
    kept = kept_holding(tmp_path, 4, 6)
    assert kept.spooled == 4 and kept.rows == 10


def test_analysed_whole_every_row_comes_back_in_order(tmp_path):
    events = kept_holding(tmp_path, 4, 6).events(decoder)
    assert list(events["pid"]) == [1, 2, 3, 4, *range(100, 106)]


def test_counted_the_spooled_lives_are_counted_per_owner_and_the_decoded_rows_stay_events(tmp_path):
    counts, events = kept_holding(tmp_path, 4, 6).counted(decoder)
    assert sum(c["lives"] for c in counts) == 4 and {c["pid"] for c in counts} == {1, 2, 3, 4}
    assert sorted(events["pid"]) == list(range(100, 106))
