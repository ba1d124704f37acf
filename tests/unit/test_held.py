"""The lives a stream holds until their rows are final (analysis.held): each comes back as it
was decoded, whatever was done to its chunk meanwhile, and a minute of them stays small."""
import numpy as np
import pandas as pd

from agent.analysis import held
from agent.analysis.held import Held
from agent.record import decode, layout
from support.streams import HZ, OFFSET_NS, churn


def lives(connections: int) -> pd.DataFrame:
    """Decoded lives of `connections` client and server pairs, with pids of every size."""
    records = np.frombuffer(churn(connections), layout.EVENT_DTYPE)
    records = records[records["kind"] == layout.DEFINES["EV_LIFE"]]
    events = decode.decode(records.tobytes(), OFFSET_NS, HZ)
    events["pid"] = np.arange(len(events)) * 7919 % 4_194_304  # (up to pid_max)
    return events


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal frames, a missing object cell being None or NaN alike (held gives None)."""
    none = lambda f: f.astype({c: object for c in f.columns if f[c].dtype == object}).where(  # noqa: E731
        f.notna() | (f.dtypes != object), None)
    pd.testing.assert_frame_equal(none(a), none(b))


def test_a_life_held_comes_back_as_decoded_after_its_chunk_is_filtered_and_merged(monkeypatch):
    monkeypatch.setattr(held, "MERGE_CHUNKS", 2)
    everything = lives(100)
    h = Held()
    for i in range(4):
        h.add(everything.iloc[50 * i:50 * (i + 1)].reset_index(drop=True), now=float(i))
    h.set_flags(np.array([3, 120]), 0x40)
    everything.loc[[3, 120], "flags_raw"] |= 0x40
    # most of the first chunk let go (it is filtered), then a few of every chunk (small ones merge)
    taken = h.frame(np.arange(0, 90, 2))
    h.drop(np.arange(0, 90, 2))
    same(taken, everything.iloc[np.arange(0, 90, 2)].reset_index(drop=True))
    gone = set(range(0, 90, 2))
    rest = everything.drop(index=list(gone))
    assert len(h) == len(rest)
    back = h.frame(np.flatnonzero(h.alive))
    h.drop(np.flatnonzero(h.alive))
    # (a merge does not keep the order of arrival: compare the lives by their socket)
    order = lambda f: f.sort_values("skaddr", kind="stable").reset_index(drop=True)  # noqa: E731
    same(order(back), order(rest))
    assert len(h) == 0


def test_a_life_held_costs_under_200_bytes():
    """With a minute of TIME_WAITs held, a hundred thousand lives and more wait at once: decoded,
    one costs some 400 bytes (text cells), packed fewer than half that."""
    chunk = lives(5000)
    h = Held()
    h.add(chunk, now=0.0)
    packed = sum(sum(v.nbytes for v in c.numbers.values())
                 + sum(codes.nbytes + pd.Series(texts).memory_usage(deep=True) for codes, texts in c.texts.values())
                 for c in h._chunks)
    stream_columns = sum(v.nbytes for v in h.columns.values())
    assert chunk.memory_usage(deep=True).sum() / len(chunk) > 350
    assert (packed + stream_columns) / len(chunk) < 200


def test_columns_of_other_kinds_come_back_as_they_arrived():
    """A recording's lives may carry columns decode does not make: nullable integers, flags,
    categories, objects of mixed kinds; each comes back with its dtype and its missing cells."""
    chunk = lives(3).assign(
        fd=pd.array([3, None, 5, None, 7, 8], dtype="Int64"),
        existing=[True, False, True, False, False, True],
        unit=pd.Categorical(["a.service", None, "a.service", "b.service", None, "b.service"]),
        inode=[1, "x", None, 2.5, None, 4])
    h = Held()
    h.add(chunk.iloc[:4].reset_index(drop=True), now=0.0)
    h.add(chunk.iloc[4:].reset_index(drop=True), now=1.0)
    same(h.frame(np.arange(6)), chunk)


def test_remaking_the_columns_costs_one_column_while_it_runs_not_all_of_them():
    """refresh() runs twice a step over every life held (a minute of a busy host's TIME_WAITs):
    each column is concatenated anew and the old one let go before the next, so what it costs
    while it runs is about one column, not a second copy of them all."""
    import tracemalloc

    tracemalloc.start()  # (before the columns are made: letting them go shows only if they were traced)
    try:
        h = Held()
        for i in range(8):
            h.add(lives(2500), now=float(i))  # (each add remakes them: the chunks' views stay shared)
        h.set_flags(np.array([0]), 0x40)
        every = sum(v.nbytes for v in h.columns.values())
        widest = max(v.nbytes for v in h.columns.values())
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        h.refresh()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert every > 8 * widest and peak - before < 2 * widest, (every, widest, peak - before)
    assert h.columns["flags"][0] & 0x40 and h._columns[0]["flags"][0] & 0x40  # still one array, views of it
    h.set_flags(np.array([1]), 0x40)
    assert h._columns[0]["flags"][1] & 0x40
