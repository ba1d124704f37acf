"""The bench's table: medians per mode and ratios paired within each repeat; saved rows
(--rows) and the table again from them (--from)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
from rich.table import Table

from .harness import AGENT, TCPCLOSE_MODES, UNTRACED


COLUMNS = {  # title: (row key, format); the lost lives and the RSS growth are computed
    "conn/s": ("rate", ",.0f"), "CPU us/conn": ("cpu_us_per_conn", ",.1f"),
    "workload's user CPU": ("workload_user", ".2%"), "steal": ("steal", ".1%"),
    "lives expected": ("lives_expected", ",.0f"),
    "lives reported": ("lives_reported", ",.0f"), "lost": ("lives_lost", ",.0f"), "drops": ("drops", ",.0f"),
    "evicted": ("evicted", ",.0f"), "skipped": ("skipped", ",.0f"), "TW reported": ("tw_reported", ",.0f"),
    "TW due, timer unseen": ("tw_unlinked_lives", ",.0f"),
    "kernel TW": ("kernel_tw", ",.0f"), "TW end unknown": ("tw_unknown", ",.0f"),
    "TW ends read mid-change": ("tw_stale_end", ",.0f"),
    "transitions expected": ("transitions_expected", ",.0f"), "transitions written": ("transitions_written", ",.0f"),
    "transitions lost (counted)": ("transitions_lost", ",.0f"),
    "BPF ns/transition": ("bpf_ns_per_transition", ",.0f"), "BPF cores": ("bpf_cores", ".3f"),
    "CPU cores": ("cpu_cores", ".2f"), "CPU taken": ("cpu_taken", ".1%"), "peak RSS MiB": ("rss_mib", ".0f"),
    "peak RSS with report MiB": ("rss_report_mib", ".0f"), "Ctrl-C to files s": ("report_s", ".1f"),
    "RSS at 1 min": ("rss_1min_mib", ".0f"), "RSS at end": ("rss_end_mib", ".0f"), "RSS growth": ("rss_growth", "+.0%"),
    "RSS median, 2nd minute": ("rss_2nd_min_median_mib", ".0f"),
    "RSS median, last minute": ("rss_last_min_median_mib", ".0f"), "RSS growth, medians": ("rss_median_growth", "+.1%"),
    "start s": ("start_s", ".2f"),
}

RATIOS = {  # paired ratio: (the row it follows, its title)
    "ratio": ("rate", "ratio"), "cpu_ratio": ("cpu_us_per_conn", "ratio by CPU/conn"),
    "user_ratio": ("workload_user", "ratio by workload's user CPU"),
}


def untraced_reference(frame: pd.DataFrame, column: str) -> pd.Series:
    """What each run's figure is held against, from its own repeat: for a traced run the mean
    of the repeat's untraced runs, "untraced" and "untraced again", which sit at the two ends
    of its order, so that a drift of the machine's speed within the repeat cancels and the
    reference has half the noise of one run; for the untraced runs the first one ("untraced
    again" against it is the A/A ratio).  NaN where the repeat has no untraced run (a soak)."""
    untraced = frame[frame["mode"].isin(UNTRACED)]
    first = frame["repeat"].map(untraced[untraced["mode"] == "untraced"].set_index("repeat")[column])
    both = frame["repeat"].map(untraced.groupby("repeat")[column].mean())
    return first.where(frame["mode"].isin(UNTRACED), both)


def table(rows: list[dict], rate: float) -> Table:
    frame = pd.DataFrame(rows)
    if "lives_reported" in frame:
        frame["lives_lost"] = frame["lives_expected"] - frame["lives_reported"]
    if "rss_end_mib" in frame:
        frame["rss_growth"] = frame["rss_end_mib"] / frame["rss_1min_mib"] - 1
    if "rss_last_min_median_mib" in frame:
        frame["rss_median_growth"] = frame["rss_last_min_median_mib"] / frame["rss_2nd_min_median_mib"] - 1
    if "bpf_cores" in frame:  # BPF and user-space time together, per core: what the workload cannot have
        tracer = frame["cpu_cores"].fillna(0) if "cpu_cores" in frame else 0  # the empty program has no process
        frame["cpu_taken"] = (frame["bpf_cores"] + tracer) / os.cpu_count()
    frame["ratio"] = frame["rate"] / untraced_reference(frame, "rate")
    if "cpu_us_per_conn" in frame:  # the same ratio, were the rate set by CPU per connection alone
        frame["cpu_ratio"] = untraced_reference(frame, "cpu_us_per_conn") / frame["cpu_us_per_conn"]
    if "workload_user" in frame:  # the share of the machine the workload's own code got, paired
        frame["user_ratio"] = frame["workload_user"] / untraced_reference(frame, "workload_user")
    medians = frame.groupby("mode", sort=False).median(numeric_only=True)
    quartiles = {column: frame.groupby("mode", sort=False)[column].quantile([0.25, 0.75]).unstack()
                 for column in RATIOS if column in frame}
    title = f"target rate: {'maximum' if not rate else f'{rate:g}/s'}, {frame.groupby('mode').size().iloc[0]} repeat(s), medians"
    out = Table(title=title)  # one column per mode, one row per figure: 20 figures fit no terminal's width
    out.add_column("", justify="left")
    for mode in medians.index:
        out.add_column(mode, justify="right")
    fmt = lambda v, spec: "-" if v is None or pd.isna(v) else format(v, spec)  # noqa: E731
    for title, (key, spec) in COLUMNS.items():
        cells = [fmt(m.get(key), spec) if key != "lives_expected" or mode in (*TCPCLOSE_MODES, AGENT) else "-"
                 for mode, m in medians.iterrows()]
        if any(cell != "-" for cell in cells):
            out.add_row(title, *cells)
        for ratio, (after, label) in RATIOS.items():
            if key != after or ratio not in medians:
                continue
            out.add_row(label, *(fmt(m[ratio], ".2f") for _, m in medians.iterrows()))
            if len(frame) >= 4 * len(medians):
                out.add_row(f"{label}, middle half", *(
                    "-" if pd.isna(q[0.25]) else f"{q[0.25]:.2f}-{q[0.75]:.2f}" for _, q in quartiles[ratio].iterrows()))
    return out


def save_row(path: Path, row: dict) -> None:
    """Append one run's row to a --rows file as a JSON line, as soon as the run ends: an
    interrupted bench keeps the runs that ended, and several benches can be pooled later."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")  # NaN is written as NaN, which json.loads reads back


def load_rows(paths: list[Path]) -> dict[float, list[dict]]:
    """The rows of one or more --rows files, by target rate.  Each row's repeat is made
    that of its own bench ("bench" names the invocation), so that every ratio stays paired
    within the repeat it was measured in, whatever files are pooled."""
    by_rate: dict[float, list[dict]] = {}
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise SystemExit(f"bench: cannot read {path}: {exc.strerror}") from None
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                row["repeat"] = f"{row['bench']}/{row['repeat']}"
                by_rate.setdefault(float(row.pop("target_rate")), []).append(row)
            except (ValueError, KeyError) as exc:
                raise SystemExit(f"bench: {path}:{number} is not a row a bench saved with --rows ({exc})") from None
    return by_rate


def bench_id() -> str:
    """What names one invocation in its saved rows: when it began and the commit it ran."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or "?"
    except OSError:  # no git: a copy of the tree, not a checkout
        commit = "?"
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {commit}"
