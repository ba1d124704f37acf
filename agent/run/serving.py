"""The agent's loop: read the figures the BPF side makes, and the few records it hands over,
publish a snapshot for the scrapes, refresh the CLOSE_WAITs open now and what could not be
seen, until stopped."""
from __future__ import annotations

import time

from ..kernel import procfs
from ..metrics.exposition import Exposition
from ..metrics.figures import Figures
from .control import POLL_INTERVAL_S, Stop
from .drainer import joined
from .tracer import Tracer

# what could not be seen, by the BPF side's counter names (docs/metrics.md says what each means)
LOST = ("ringbuf_drops", "socks_full", "missed_close", "recursion_misses", "tw_unlinked", "tw_full", "figures_full",
        "tw_stale_end")


# the figures maps (a batch read of each: ms) and what was lost (a map of counters and the
# programs' fdinfo): cheap to read
COUNTERS_EVERY_S = 1.0
# Publishing (a snapshot of the figures, rendered as the exposition text) costs about 0.3 s
# with 1,000 workloads: it happens every PUBLISH_EVERY_S, or less often, so that it never
# takes more than PUBLISH_SHARE of a core.
PUBLISH_EVERY_S = 1.0
PUBLISH_SHARE = 0.1


def serve_figures(tracer: Tracer, figures: Figures, exposition: Exposition, stop: Stop,
                  refresh_s: float = 10.0, duration: float | None = None, periods=None) -> None:
    """Until stopped (or `duration` seconds): every poll, the records that arrived into the
    figures; every second the BPF side's figures and the counters of what was lost; every `refresh_s`, the CLOSE_WAITs
    open now (a dump of the BPF map); a snapshot published for the scrapes as often as
    PUBLISH_EVERY_S and PUBLISH_SHARE allow; a new period of files when `periods` (--out:
    cli.periods.Periods) says so.  Without them, the tracer keeps no records (keep=False):
    memory stays what the figures hold."""
    deadline = None if duration is None else time.monotonic() + duration
    refreshed = counted = published = float("-inf")
    cost = 0.0
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        figures.add(joined(tracer.drain()))  # (none: what waited for time is settled)
        if time.monotonic() - counted >= COUNTERS_EVERY_S:
            counted = time.monotonic()
            counters = tracer.counters()
            figures.lost = {what: counters.get(what, 0) for what in LOST}
            figures.bpf = tracer.bpf_run()
            for swept in tracer.swept:
                figures.note_swept(swept)
            tracer.swept.clear()
            tracer.probe.forget_figures(figures.add_owner_figures(*tracer.probe.read_figures()))
            followed = counters["tw_linked"] - counters["tw_ended"] - tracer.timewaits_swept
            figures.set_held(*tracer.probe.read_held(), followed)
            # (evictions from the full LRU map counted in too: they are not known until the end)
            figures.lives_followed = max(0, counters["lives_started"] - counters["lives_ended"])
        if time.monotonic() - refreshed >= refresh_s:
            refreshed = time.monotonic()
            figures.set_close_waits(tracer.open_lives_now(), time.monotonic_ns())
            figures.note_kernel_counters(procfs.all_tcp_counters())
        if time.monotonic() - published >= max(PUBLISH_EVERY_S, cost / PUBLISH_SHARE):
            published = time.monotonic()
            exposition.publish(figures.snapshot())
            cost = time.monotonic() - published
        if periods is not None and periods.due():
            periods.rotate(tracer)
        exposition.alive()
        stop.wait(POLL_INTERVAL_S)
