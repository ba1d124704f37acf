"""The figures the agent's BPF side makes per owner, as totals per workload.

The BPF program (FIGURES) adds each life and each TIME_WAIT end to its owner's entry in the
figures map: a process (tgid), its thread name and its cgroup, or "never learnt" (all 0).
Each entry holds one copy per CPU, counted since the agent started.  A read sums the CPUs,
names each owner's workload the first time it is met (its container, else its unit, else
its process name, learnt while the process lives), and adds the owners of one workload up.

The map is keyed by owner, so a host that runs many short-lived processes would fill it.
An entry whose process is gone and whose figures have not moved for FORGET_AFTER_S is
deleted, its totals kept here under its workload: a TIME_WAIT ends at most 120 s after it
was made (probe.TW_STALE_AFTER_NS), so nothing adds to it any more.  Only a new process
given the same pid, thread name and cgroup within that time could, between the read and
the delete (a few ms), and its count would be lost.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from typing import Callable

import numpy as np

from ..record import layout

FORGET_AFTER_S = 180.0
# the counts of struct tcpclose_figures, as u64 words from its start: n ... duration_us
COUNT_WORDS = layout.FIGURES_DTYPE.fields["cgroup_id"][1] // 8
WORDS = layout.FIGURES_DTYPE.itemsize // 8


def _span(name: str) -> slice:
    """The words of one field of struct tcpclose_figures among COUNT_WORDS."""
    dtype, offset = layout.FIGURES_DTYPE.fields[name][:2]
    return slice(offset // 8, offset // 8 + dtype.itemsize // 8)


N, TW_FOLLOWED, TW_END = _span("n"), _span("tw_followed"), _span("tw_end")
TW_LIFE, TW_LIFE_US, DURATION, DURATION_US = _span("tw_life"), _span("tw_life_us"), _span("duration"), _span("duration_us")
Namer = Callable[[np.ndarray], list]  # owners (pid, cgroup_id, comm) -> the workload label of each


def summed(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-CPU figures (shape (owners, CPUs), layout.FIGURES_DTYPE) as each owner's counts
    (shape (owners, COUNT_WORDS), uint64) and its owner fields (the entry was made on one CPU:
    the other CPUs' copies have 0 there)."""
    words = np.ascontiguousarray(values).view(np.uint64).reshape(*values.shape, WORDS)
    counts = words[:, :, :COUNT_WORDS].sum(axis=1, dtype=np.uint64)
    maker = np.argmax(values["pid"] != 0, axis=1) if len(values) else np.zeros(0, int)
    return counts, values[np.arange(len(values)), maker][["pid", "cgroup_id", "comm"]]


class OwnerTotals:
    def __init__(self, namer: Namer, alive: Callable[[int], bool] | None = None):
        """namer: the workload label of owners met for the first time; alive: is this pid's
        process still there (default: /proc/PID exists)."""
        self._namer = namer
        self._alive = alive or (lambda pid: os.path.exists(f"/proc/{pid}"))
        self._labels: dict[int, str] = {}  # owner key -> its workload label
        self._moved: dict[int, tuple[int, float]] = {}  # owner key -> (its activity, when it last changed)
        self.retired: dict[str, np.ndarray] = {}  # workload -> the counts of its owners deleted from the map
        self._unseen: Counter = Counter()  # owner key -> its TIME_WAITs swept, their end never seen

    def note_unseen_ends(self, keys: np.ndarray) -> None:
        """TIME_WAITs of these owners (keys; 0: not counted) whose end went unseen (swept)."""
        self._unseen.update(k for k in keys.tolist() if k)

    def totals(self, keys: np.ndarray, values: np.ndarray, now: float | None = None) -> tuple[dict, list]:
        """Each workload's counts (uint64 COUNT_WORDS), from a read of the figures map
        (Probe.read_figures), and the keys of the owners to delete from the map now, whose
        counts are kept in `retired` from now on."""
        now = time.monotonic() if now is None else now
        counts, owners = summed(values)
        keys = keys.astype(np.uint64).tolist()
        for i, key in enumerate(keys):
            if key in self._unseen:
                counts[i, TW_END.start] += self._unseen[key]  # (ended, reason unknown)
        new = [i for i, key in enumerate(keys) if key not in self._labels]
        if new:
            self._labels.update(zip((keys[i] for i in new), self._namer(owners[new])))
        activity = counts[:, N.start] + counts[:, TW_END].sum(axis=1)  # lives ended, TIME_WAITs ended
        out: dict[str, np.ndarray] = {name: total.copy() for name, total in self.retired.items()}
        gone = []
        for i, (key, moved) in enumerate(zip(keys, activity.tolist())):
            label = self._labels[key]
            was, since = self._moved.get(key, (None, now))
            self._moved[key] = (moved, since if moved == was else now)
            pid = int(owners["pid"][i])
            if moved == was and now - since >= FORGET_AFTER_S and pid and not self._alive(pid):
                gone.append(key)
                self.retired[label] = self.retired.get(label, 0) + counts[i]
                del self._labels[key], self._moved[key]
                self._unseen.pop(key, None)
            out[label] = out.get(label, 0) + counts[i]
        return out, gone
