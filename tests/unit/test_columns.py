"""A batch of rows as the figures read it (analysis.columns): its groups, counts and subsets
are pandas' own (groupby, value_counts, a frame filtered), however the key columns were
read and whichever were factorized first."""
import numpy as np
import pandas as pd
import pytest

from agent.analysis.columns import Columns, among, plain


def frame(n: int = 2_000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pid = rng.integers(1, 6, n)
    return pd.DataFrame({
        "pid": pd.array(np.where(pid == 5, None, pid), dtype="Int64"),
        "comm": pd.Series(rng.choice(np.array(["nginx", "curl", "", None, np.nan], dtype=object), n), dtype=object),
        "raddr": pd.array(rng.choice(["10.0.0.1", "10.0.0.2", None], n), dtype="str"),
        "rport": rng.choice([80, 443, 5432], n),
        "opened_at": rng.random(n),
    })


def expected_groups(rows: pd.DataFrame, keys: list[str]) -> tuple[np.ndarray, list[tuple]]:
    number = rows.groupby(keys, dropna=False, sort=False).ngroup()
    firsts = rows.loc[~number.duplicated(), keys]  # (the groups in the order first met: as numbered)
    return number.to_numpy(), [tuple(plain(v) for v in row) for row in firsts.itertuples(index=False)]


@pytest.mark.parametrize("keys", [["pid"], ["pid", "comm"], ["comm", "raddr", "rport"], ["raddr", "pid", "comm"]])
def test_groups_are_pandas_groups_in_order_first_met(keys):
    rows = frame()
    codes, labels = Columns(frame=rows).groups(keys)
    want_codes, want_labels = expected_groups(rows, keys)
    # groupby(sort=False) numbers groups as first met, as groups() does; every missing kind is None
    assert codes.tolist() == want_codes.tolist()
    assert [tuple(label) for label in labels] == [tuple(label) for label in want_labels]
    assert None in {value for label in labels for value in label}


@pytest.mark.parametrize("how", ["mask", "positions"])
@pytest.mark.parametrize("factorized_first", [True, False])
def test_a_subset_is_the_filtered_frame(how, factorized_first):
    rows = frame()
    batch = Columns(frame=rows)
    if factorized_first:  # (the subset then takes the whole batch's codes, with its distinct values)
        batch.groups(["pid", "comm", "raddr"])
    mask = (rows["rport"] != 443).to_numpy() & (np.arange(len(rows)) % 3 > 0)
    subset = batch.where(mask if how == "mask" else np.flatnonzero(mask))
    assert len(subset) == mask.sum()
    filtered = rows[mask].reset_index(drop=True)
    codes, labels = subset.groups(["pid", "comm", "raddr"])
    assert [labels[c] for c in codes] == [tuple(plain(v) for v in row)
                                         for row in filtered[["pid", "comm", "raddr"]].itertuples(index=False)]
    np.testing.assert_array_equal(subset["opened_at"], filtered["opened_at"].to_numpy())
    assert "rport" in subset and "nothing" not in subset


def test_counts_are_value_counts():
    rows = frame()
    batch = Columns(frame=rows)
    assert batch.counts("comm") == rows["comm"].value_counts().to_dict()
    assert list(batch.counts("comm")) == list(rows["comm"].value_counts().to_dict())  # (most common first)
    mask = rows["rport"].to_numpy() == 80
    assert batch.counts("raddr", mask) == rows.loc[mask, "raddr"].value_counts().to_dict()


def test_arrays_given_and_read_from_the_frame():
    rows = frame(10)
    batch = Columns({"made": np.ones(10, dtype=bool)}, frame=rows)
    assert batch["made"].all() and len(batch) == 10
    assert batch["pid"].dtype == "Int64"  # (a missing pid stays missing: not a float)
    assert batch["raddr"].dtype == "str"  # (pandas' text kept as it is: converted it costs more)
    assert batch["comm"].dtype == object
    for name in ("raddr", "comm"):  # (either kind, as numpy's isin on objects says)
        np.testing.assert_array_equal(among(batch[name], ["10.0.0.1", "curl"]),
                                      np.isin(rows[name].to_numpy(object), ["10.0.0.1", "curl"]))
    with pytest.raises(KeyError):
        batch["nothing"]
