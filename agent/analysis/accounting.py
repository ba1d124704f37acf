"""What a run could not see, from the BPF side's counters: every run accounts for it
(in the summary, summary.json, report.html and the bench's table)."""
from __future__ import annotations

from ..record.runinfo import RunInfo


def evicted(run: RunInfo) -> int:
    """Lives the BPF side lost track of: the LRU map evicts silently, so they are
    the lives started, less those ended, less those still open, plus those that
    never fitted."""
    c = run.counters
    gone = c.get("lives_started", 0) - c.get("lives_ended", 0) - run.open_lives
    return max(gone, 0) + c.get("socks_full", 0)


def timewaits_evicted(run: RunInfo) -> int:
    """Timewait sockets the BPF side did not follow to their end: those linked, less those
    ended, less those still open (the stale entries swept, whose end went unseen), plus those
    neither tw_slots nor the tws map had room for."""
    c = run.counters
    gone = c.get("tw_linked", 0) - c.get("tw_ended", 0) - run.open_timewaits
    return max(gone, 0) + c.get("tw_full", 0)


def unseen(run: RunInfo) -> dict[str, int]:
    """What the run could not see, from the BPF counters (all zero is the good case)."""
    c = run.counters
    return {
        "ring-buffer drops": c.get("ringbuf_drops", 0),
        "lives evicted (map full or a missed close)": evicted(run),
        "lives begun before tracing": c.get("partial", 0),
        "transitions the kernel skipped (BPF recursion)": c.get("recursion_misses", 0),
        "lives whose close was skipped (ended at their last transition seen)": c.get("missed_close", 0),
        "timewait sockets no close claimed": c.get("tw_unlinked", 0),
        "timewait sockets not followed to their end (map full or swept)": timewaits_evicted(run),
        "timewait ends read while their entry changed (dropped)": c.get("tw_stale_end", 0),
    }
