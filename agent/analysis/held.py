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

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..record.decode import concat, empty_events
from . import rules
from .lives import initiators
from .timewait import TIMEWAIT_NAME, server_side, timewait_name

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


# what _columns reads (initiators: kind, states_raw, last_state, flags_raw)
DECIDED_ON = ["kind", "tw_timer", "tw_start_at", "event_at", "skaddr", "flags_raw", "tw_timeout_s", "owner_src",
              "states_raw", "last_state", "lport", "rport"]
# columns of a life kept once, in the stream's columns (_columns), and not again in its chunk
IN_COLUMNS = {"skaddr": "skaddr", "event_at": "closed_at", "flags_raw": "flags", "tw_timeout_s": "timeout",
              "lport": "lport", "rport": "rport"}
NARROW = ("pid", "tid", "states_raw")  # held as int32: a pid (pid_max is at most 2**22) and a state bitmask


@dataclass
class Chunk:
    """The lives of one arrival, packed: numbers as numpy arrays (NARROW narrowed), and each
    text column as a code a row (-1: none; int8 where its texts allow) into its distinct texts.  A
    chunk's lives share a few names and addresses, but each text cell otherwise costs tens of
    bytes (an object, or Arrow's buffers under pandas' str): with a minute of TIME_WAITs held,
    this cuts what a life held costs from about 480 bytes to 170, its stream columns included.
    Plain arrays, not a frame: a step's lives come from some sixty chunks, and gathering them
    costs numpy's few microseconds a chunk and column, not pandas' tens."""
    numbers: dict[str, np.ndarray]
    texts: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (codes, its distinct texts as objects)
    kinds: dict  # every column's dtype as it arrived, in its order (IN_COLUMNS' too)

    @classmethod
    def packed(cls, frame: pd.DataFrame, rows: np.ndarray | None = None) -> "Chunk":
        """The lives at `rows` of `frame` (None: all): each column taken as an array and those
        rows of it, not the frame's rows first (each of its text columns copied: Arrow's take)."""
        numbers, texts = {}, {}
        for name, values in frame.items():
            if name in IN_COLUMNS:
                continue
            if pd.api.types.is_numeric_dtype(values.dtype):
                array = values.to_numpy() if rows is None else values.to_numpy()[rows]
                numbers[name] = array.astype(np.int32) if name in NARROW and array.dtype == np.int64 else array
            else:  # (a text only the other rows hold is kept among the distinct ones: harmless)
                codes, distinct = pd.factorize(values)
                narrowest = np.int8 if len(distinct) < 127 else np.int16 if len(distinct) < 32767 else np.int32
                codes = codes if rows is None else codes[rows]
                texts[name] = codes.astype(narrowest), np.asarray(distinct, dtype=object)
        return cls(numbers, texts, frame.dtypes.to_dict())

    def kept(self, rows: np.ndarray) -> "Chunk":
        """Only the lives at `rows` (their texts' codes as they were)."""
        return Chunk({name: values[rows] for name, values in self.numbers.items()},
                     {name: (codes[rows], distinct) for name, (codes, distinct) in self.texts.items()}, self.kinds)


def _texts(parts: list[tuple[np.ndarray, np.ndarray]], rows: list[np.ndarray], kind):
    """One text column of the lives at `rows` of each chunk's (codes, distinct texts), as
    decoded (`kind`): the chunks' distinct texts made one list, each code moved to it."""
    distinct = [texts for _, texts in parts]
    remap, uniques = pd.factorize(np.concatenate(distinct) if len(distinct) > 1 else distinct[0])
    starts = np.cumsum([0, *map(len, distinct[:-1])])
    remap = np.append(remap, -1)  # (a code -1, none, stays -1: it indexes this last entry)
    codes = np.concatenate([remap[np.where(c[r] >= 0, c[r].astype(np.int64) + start, -1)]
                            for (c, _), r, start in zip(parts, rows, starts)])
    if kind == object:  # (none as None, as decode gives it)
        return np.append(np.asarray(uniques, dtype=object), None)[codes]
    return pd.array(np.asarray(uniques, dtype=object), dtype=kind).take(codes, allow_fill=True)


def _gathered(parts: list[tuple[Chunk, np.ndarray, dict[str, np.ndarray]]], only=None) -> pd.DataFrame:
    """The lives at `rows` of each (chunk, rows, its stream columns), all arrived with the same
    dtypes, one frame as decoded (only those columns, where given), their IN_COLUMNS from the
    stream's columns."""
    out = {}
    for name, kind in parts[0][0].kinds.items():
        if only is not None and name not in only:
            continue
        if name in IN_COLUMNS:
            values = np.concatenate([columns[IN_COLUMNS[name]][rows] for _, rows, columns in parts])
        elif name in parts[0][0].numbers:
            values = np.concatenate([chunk.numbers[name][rows] for chunk, rows, _ in parts])
        else:
            out[name] = _texts([chunk.texts[name] for chunk, _, _ in parts], [rows for _, rows, _ in parts], kind)
            continue
        out[name] = values.astype(kind, copy=False) if isinstance(kind, np.dtype) else pd.array(values, dtype=kind)
    return pd.DataFrame(out)


class Held:
    """Lives in arrival chunks; positions run over the chunks in order, gone rows included."""

    def __init__(self):
        self._chunks: list[Chunk] = []
        self._dtypes: dict = {}  # the first chunk's, as decoded (frame(): a mixed step's text columns)
        self._columns: list[dict[str, np.ndarray]] = []
        self._gone: list[np.ndarray] = []
        self.columns: dict[str, np.ndarray] = {}  # every chunk's, concatenated (refresh())
        self.alive = np.zeros(0, dtype=bool)
        self.fresh = np.zeros(0, dtype=bool)  # the lives of the last add()

    def __len__(self) -> int:
        return int(self.alive.sum())

    def add(self, frame: pd.DataFrame, now: float, rows: np.ndarray | None = None) -> None:
        """Hold the lives of `frame` (those at `rows`, where given: a step's records are mostly
        lives), arrived at `now`."""
        count = len(frame) if rows is None else len(rows)
        if count:
            self._dtypes = self._dtypes or frame.dtypes.to_dict()
            self._chunks.append(Chunk.packed(frame, rows))
            self._columns.append(_columns(frame if rows is None else frame[DECIDED_ON].iloc[rows], now))
            self._gone.append(np.zeros(count, dtype=bool))
        self.refresh()
        self.fresh = np.zeros(len(self.alive), dtype=bool)
        self.fresh[len(self.alive) - count:] = True

    def refresh(self) -> None:
        """The chunks' columns concatenated into `columns`; each chunk's become views of those
        (a life's columns are in memory once, and what is set there is set in both).  A column
        at a time: the old one goes before the next is made, so that what this costs while
        it runs is one column of the lives held, not all of them (with a minute of a busy
        host's TIME_WAITs held, some 17 MiB, twice a step)."""
        if not self._columns:
            self.columns = {name: np.zeros(0) for name in _columns(empty_events(), 0.0)}
        sizes = [len(chunk["arrived"]) for chunk in self._columns]
        for name in list(self._columns[0]) if self._columns else ():
            values = np.concatenate([chunk[name] for chunk in self._columns])
            start = 0
            for chunk, size in zip(self._columns, sizes):
                chunk[name] = values[start:start + size]
                start += size
            self.columns[name] = values
        self.alive = ~np.concatenate(self._gone) if self._gone else np.zeros(0, dtype=bool)

    def ports(self) -> np.ndarray:
        """Each life's local and remote port as one number: where a client that took a TIME_WAIT
        over is looked for (analysis.reuses)."""
        return self.columns["lport"] * 65536 + self.columns["rport"]

    def names(self, which: np.ndarray) -> dict[str, np.ndarray]:
        """The names the lives at `which` (positions or a mask) give their timewait sockets
        (timewait_name's columns), for end_of: those columns only, not a copy of every one."""
        return {name: self.columns[name][which] for name in TIMEWAIT_NAME}

    def set_flags(self, positions: np.ndarray, bits: int) -> None:
        """OR `bits` into the flags of the lives at `positions` (the frames' flags_raw with them, when taken)."""
        self.columns["flags"][positions] |= bits

    def note(self, positions: np.ndarray) -> None:
        """Mark the lives at `positions` noted."""
        self.columns["noted"][positions] = True

    def frame(self, positions: np.ndarray, only: list[str] | None = None) -> pd.DataFrame:
        """The lives at `positions`, as decoded, with their flags as set here (only those
        columns, where given: a few lives gathered from many chunks cost a gathering a column)."""
        split = [(self._chunks[chunk], rows, self._columns[chunk]) for chunk, rows in self._split(positions)]
        if not split:
            return concat([])
        runs = [[split[0]]]  # (chunks in a row that arrived with the same dtypes: one gathering each)
        for part in split[1:]:
            if part[0].kinds == runs[-1][-1][0].kinds:
                runs[-1].append(part)
            else:
                runs.append([part])
        if len(runs) == 1:
            return _gathered(runs[0], only)
        lives = concat(_gathered(run, only) for run in runs)  # (a recording's chunks, or a step with sock_diag's rows)
        for name, kind in self._dtypes.items():
            if name in lives and not pd.api.types.is_numeric_dtype(kind) and lives[name].dtype != kind:
                lives[name] = lives[name].astype(kind)
                if kind == object:
                    lives[name] = lives[name].where(lives[name].notna(), None)
        return lives

    def values(self, name: str, positions: np.ndarray) -> np.ndarray:
        """One numeric column of the lives at `positions` (sorted), not decoded whole."""
        parts = [self._chunks[chunk].numbers[name][rows] for chunk, rows in self._split(positions)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def drop(self, positions: np.ndarray) -> None:
        """Let the lives at `positions` go (their rows were made from frame()); the positions
        of the others change."""
        for chunk, rows in self._split(positions):
            self._gone[chunk][rows] = True
        self._compact()

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
                self._chunks[i] = self._chunks[i].kept(~gone)
                self._columns[i] = {name: values[~gone] for name, values in self._columns[i].items()}
                self._gone[i] = np.zeros(int((~gone).sum()), dtype=bool)
        self._chunks = [self._chunks[i] for i in keep]
        self._columns = [self._columns[i] for i in keep]
        self._gone = [self._gone[i] for i in keep]
        small = [i for i, gone in enumerate(self._gone) if len(gone) < SMALL_CHUNK]
        if len(self._gone) > MERGE_CHUNKS and len(small) > 1:  # (lives parked to the end, a few a chunk)
            whole = [(self._chunks[i], slice(None), self._columns[i]) for i in small]
            merged = (Chunk.packed(concat(_gathered([part]) for part in whole)),
                      {name: np.concatenate([self._columns[i][name] for i in small]) for name in self._columns[0]},
                      np.concatenate([self._gone[i] for i in small]))
            rest = [i for i in range(len(self._gone)) if i not in set(small)]
            # (arrival order is not kept across the merge: positions are only used within a step)
            self._chunks = [merged[0], *(self._chunks[i] for i in rest)]
            self._columns = [merged[1], *(self._columns[i] for i in rest)]
            self._gone = [merged[2], *(self._gone[i] for i in rest)]
        self.refresh()
