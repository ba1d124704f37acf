"""The lives a stream holds until their rows are final (analysis.stream), kept so that a
step costs little more than what arrived in it.

Most of them are lives waiting for the end of their TIME_WAIT: up to a minute of a busy
host's closes, a hundred thousand and more.  Filtering or concatenating them as one frame
at every step copies every column of every one of them; here they stay in the chunks they
arrived in, untouched, beside numpy copies of the few columns the stream decides on
(COLUMNS), and a row that is taken is only marked gone.  A chunk is filtered once most of it
is gone, and dropped when all of it is.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..record.decode import concat, empty_events
from . import rules
from .lives import initiators
from .timewait import server_side, timewait_name

COMPACT_SHARE = 0.5  # a chunk is filtered once this share of its rows is gone
MERGE_CHUNKS, SMALL_CHUNK = 64, 4096  # past this many chunks, the small ones become one


def _columns(frame: pd.DataFrame, now: float) -> dict[str, np.ndarray]:
    """What the stream decides on, per life; `now`: when they arrived."""
    return {
        "arrived": np.full(len(frame), now),
        **timewait_name(frame),
        "closed_at": frame["event_at"].astype(float).to_numpy(),
        "skaddr": frame["skaddr"].astype(np.uint64).to_numpy(),
        "flags": frame["flags_raw"].to_numpy(np.int64, copy=True),
        "due": rules.timewait_due(initiators(frame)) if len(frame) else np.zeros(0, bool),
        "timeout": frame["tw_timeout_s"].astype(float).to_numpy(),
        "listener": (frame["owner_src"] == "listener").to_numpy(bool),
        "server": server_side(frame["states_raw"]) if len(frame) else np.zeros(0, bool),
        "lport": frame["lport"].astype(np.int64).to_numpy(),
        "rport": frame["rport"].astype(np.int64).to_numpy(),
        "noted": np.zeros(len(frame), dtype=bool),  # its provisional row written (Stream.provisional)
    }


# columns of a life kept once, in the stream's columns (_columns), and not again in its chunk
IN_COLUMNS = {"skaddr": "skaddr", "event_at": "closed_at", "flags_raw": "flags", "tw_timeout_s": "timeout",
              "lport": "lport", "rport": "rport"}
NARROW = ("pid", "tid", "states_raw")  # held as int32: a pid (pid_max is at most 2**22) and a state bitmask


def _packed(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The frame with each text column as categories (a code a row, each distinct text once),
    without the IN_COLUMNS and with NARROW narrowed; and its dtypes, to restore it (_restored).
    A chunk's lives share a few names and addresses, but each text cell otherwise costs tens
    of bytes (an object, or Arrow's buffers under pandas' str): with a minute of TIME_WAITs
    held, this cuts what a life held costs from about 480 bytes to 170, its stream columns
    included."""
    packed = frame.drop(columns=[c for c in IN_COLUMNS if c in frame.columns])
    text = [c for c in packed.columns if not pd.api.types.is_numeric_dtype(packed[c])]
    narrow = [c for c in NARROW if c in packed.columns and packed[c].dtype == np.int64]
    return packed.astype({**dict.fromkeys(text, "category"), **dict.fromkeys(narrow, np.int32)}), frame.dtypes


def _restored(packed: pd.DataFrame, columns: dict[str, np.ndarray], kinds: pd.Series) -> pd.DataFrame:
    """Rows of a _packed chunk (or of chunks joined, all of one `kinds`) with the IN_COLUMNS
    taken back from `columns` (theirs, in the same order) and its numbers as they were
    (`kinds`, the dtypes it arrived with); text columns stay categories (_unpacked)."""
    part = packed.assign(**{name: columns[held] for name, held in IN_COLUMNS.items() if name in kinds})
    part = part[list(kinds.index) + [c for c in part.columns if c not in kinds.index]]
    changed = {c: kinds[c] for c in [*IN_COLUMNS, *NARROW] if c in kinds and part[c].dtype != kinds[c]}
    return part.astype(changed) if changed else part


def _as_decoded(kinds: pd.Series, columns: dict[str, np.ndarray]) -> bool:
    """Did a chunk arrive with the dtypes decode gives (a recording's may differ)?  Then its
    IN_COLUMNS were as the stream keeps them, its NARROW were int64, and its rows can be joined
    to other such chunks' before they are restored, once (Held.frame)."""
    return (all(kinds.get(name) == columns[held].dtype for name, held in IN_COLUMNS.items())
            and all(kinds.get(name, np.dtype(np.int64)) == np.int64 for name in NARROW))


def _unpacked(frame: pd.DataFrame, dtypes: dict) -> pd.DataFrame:
    """A _packed frame with its columns as decoded (`dtypes`), None where a text column had none."""
    out = {}
    for column, values in frame.items():
        was = dtypes.get(column, values.dtype)
        if not pd.api.types.is_numeric_dtype(was):  # (chunks of other categories concatenated: object)
            if isinstance(values.dtype, pd.CategoricalDtype) and values.cat.categories.dtype == was != object:
                # (each code's text taken from the categories: astype would make a Python str of each)
                codes = values.cat.codes.to_numpy()
                values = pd.Series(values.cat.categories.array.take(codes, allow_fill=True), index=values.index)
            elif values.dtype != was:
                values = values.astype(was)
            if was == object:
                values = values.where(values.notna(), None)
        out[column] = values
    return pd.DataFrame(out, index=frame.index)


class Held:
    """Lives in arrival chunks; positions run over the chunks in order, gone rows included."""

    def __init__(self):
        self._frames: list[pd.DataFrame] = []  # (_packed)
        self._kinds: list[pd.Series] = []  # each chunk's dtypes, as it arrived (_restored)
        self._dtypes: dict = {}  # their columns' as decoded
        self._columns: list[dict[str, np.ndarray]] = []
        self._gone: list[np.ndarray] = []
        self.columns: dict[str, np.ndarray] = {}  # every chunk's, concatenated (refresh())
        self.alive = np.zeros(0, dtype=bool)
        self.fresh = np.zeros(0, dtype=bool)  # the lives of the last add()

    def __len__(self) -> int:
        return int(self.alive.sum())

    def add(self, frame: pd.DataFrame, now: float) -> None:
        """Hold the lives of `frame`, arrived at `now`."""
        if len(frame):
            self._dtypes = self._dtypes or frame.dtypes.to_dict()
            packed, kinds = _packed(frame.reset_index(drop=True))
            self._frames.append(packed)
            self._kinds.append(kinds)
            self._columns.append(_columns(frame, now))
            self._gone.append(np.zeros(len(frame), dtype=bool))
        self.refresh()
        self.fresh = np.zeros(len(self.alive), dtype=bool)
        self.fresh[len(self.alive) - len(frame):] = True

    def refresh(self) -> None:
        """The chunks' columns concatenated into `columns`; each chunk's become views of those
        (a life's columns are in memory once, and what is set there is set in both)."""
        names = self._columns[0].keys() if self._columns else _columns(empty_events(), 0.0).keys()
        self.columns = {name: np.concatenate([c[name] for c in self._columns]) if self._columns
                        else np.zeros(0) for name in names}
        start = 0
        for chunk in self._columns:
            stop = start + len(chunk["arrived"])
            chunk.update({name: values[start:stop] for name, values in self.columns.items()})
            start = stop
        self.alive = ~np.concatenate(self._gone) if self._gone else np.zeros(0, dtype=bool)

    def ports(self) -> np.ndarray:
        """Each life's local and remote port as one number: where a client that took a TIME_WAIT
        over is looked for (analysis.reuses)."""
        return self.columns["lport"] * 65536 + self.columns["rport"]

    def set_flags(self, positions: np.ndarray, bits: int) -> None:
        """OR `bits` into the flags of the lives at `positions` (the frames' flags_raw with them, when taken)."""
        self.columns["flags"][positions] |= bits

    def note(self, positions: np.ndarray) -> None:
        """Mark the lives at `positions` noted."""
        self.columns["noted"][positions] = True

    def frame(self, positions: np.ndarray) -> pd.DataFrame:
        """The lives at `positions`, as decoded, with their flags as set here."""
        split = list(self._split(positions))
        if not split:
            return concat([])
        taken = lambda chunk, rows: {held: self._columns[chunk][held][rows] for held in IN_COLUMNS.values()}  # noqa: E731
        if all(_as_decoded(self._kinds[chunk], self._columns[chunk]) for chunk, _ in split):
            # (restored once, joined: a step's lives come from some sixty chunks of a minute of arrivals)
            columns = [taken(chunk, rows) for chunk, rows in split]
            joined = {held: np.concatenate([c[held] for c in columns]) for held in IN_COLUMNS.values()}
            lives = _restored(concat(self._frames[chunk].iloc[rows] for chunk, rows in split), joined,
                              self._kinds[split[0][0]])
        else:
            lives = concat(_restored(self._frames[chunk].iloc[rows], taken(chunk, rows), self._kinds[chunk])
                           for chunk, rows in split)
        return _unpacked(lives, self._dtypes)

    def values(self, name: str, positions: np.ndarray) -> np.ndarray:
        """One numeric column of the lives at `positions` (sorted), not decoded whole."""
        parts = [self._frames[chunk][name].to_numpy()[rows] for chunk, rows in self._split(positions)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def take(self, positions: np.ndarray) -> pd.DataFrame:
        """The lives at `positions`, now gone from here."""
        out = self.frame(positions)
        for chunk, rows in self._split(positions):
            self._gone[chunk][rows] = True
        self._compact()
        return out

    def _split(self, positions: np.ndarray):
        """(chunk, rows in it) for sorted `positions`."""
        positions = np.sort(np.asarray(positions, dtype=np.int64))
        start = 0
        for chunk, gone in enumerate(self._gone):
            stop = start + len(gone)
            lo, hi = np.searchsorted(positions, [start, stop])
            if hi > lo:
                yield chunk, positions[lo:hi] - start
            start = stop

    def _compact(self) -> None:
        keep = [i for i, gone in enumerate(self._gone) if not gone.all()]
        for i in keep:
            gone = self._gone[i]
            if gone.mean() >= COMPACT_SHARE:
                self._frames[i] = self._frames[i][~gone].reset_index(drop=True)
                self._columns[i] = {name: values[~gone] for name, values in self._columns[i].items()}
                self._gone[i] = np.zeros(int((~gone).sum()), dtype=bool)
        self._frames = [self._frames[i] for i in keep]
        self._kinds = [self._kinds[i] for i in keep]
        self._columns = [self._columns[i] for i in keep]
        self._gone = [self._gone[i] for i in keep]
        small = [i for i, gone in enumerate(self._gone) if len(gone) < SMALL_CHUNK]
        if len(self._gone) > MERGE_CHUNKS and len(small) > 1:  # (lives parked to the end, a few a chunk)
            merged = (_packed(concat([_restored(self._frames[i], self._columns[i], self._kinds[i]) for i in small])),
                      {name: np.concatenate([self._columns[i][name] for i in small]) for name in self._columns[0]},
                      np.concatenate([self._gone[i] for i in small]))
            rest = [i for i in range(len(self._gone)) if i not in set(small)]
            # (arrival order is not kept across the merge: positions are only used within a step)
            self._frames = [merged[0][0], *(self._frames[i] for i in rest)]
            self._kinds = [merged[0][1], *(self._kinds[i] for i in rest)]
            self._columns = [merged[1], *(self._columns[i] for i in rest)]
            self._gone = [merged[2], *(self._gone[i] for i in rest)]
        self.refresh()
