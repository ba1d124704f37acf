"""The run: one typed object that *is* run.json (and the `run` line of a recording).

Every stage reads the run through these fields; what a stage adds at the end
of a run (the BPF counters, the kernel's TcpExt counters, the per-process
counts of --aggregates) is a field here, not a key a stage invents.  A
recording made by an older tcpclose lacks some fields: they read as their
defaults.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass
class RunInfo:
    started_at: float  # epoch seconds
    ended_at: float
    counters: dict[str, int] = field(default_factory=dict)  # the BPF side's (bpf/tcpclose.h C_x), and recursion_misses
    open_lives: int = 0  # lives still followed in BPF when tracing ended
    open_timewaits: int = 0  # timewait sockets still followed when tracing ended
    timewaits_swept: int = 0  # followed timewaits dropped as stale (kernel.probe.TW_STALE_AFTER_NS)
    hz: int | None = None  # the kernel's jiffies per second
    timewait_method: str | None = None  # "timers", "diag" or "none": how TIME_WAIT ends were measured
    timewait_method_why: str = ""  # why not "timers"
    programs: dict[str, dict[str, int]] = field(default_factory=dict)  # per BPF program: run_cnt, run_time_ns, ...
    netns: str | None = None  # the network namespace whose sockets and counters were read
    tcpext: dict = field(default_factory=dict)  # {"start"|"end": {netns: {"name", "counters"}}}
    sysctls: dict[str, str | None] = field(default_factory=dict)
    kernel_release: str | None = None
    # present only where they apply (absent from run.json otherwise)
    aggregates: list[dict] | None = None  # per-process counts: --aggregates, or a run too big to analyse whole
    analysis_skipped: dict | None = None  # why a run was counted per process only (older runs: a memory guard)
    transitions: dict | None = None  # --transitions: what the stream offered, lost and wrote
    recording_stopped: str | None = None  # --record stopped early: where and why (a full disk)
    listen_queues: list[dict] | None = None  # listeners near full at the end (analysis.queues.pressed)
    lives_pending: int | None = None  # of a run still tracing: lives held, not in its figures yet (run.kept)
    lives_carried: int | None = None  # of a period of agent -o, ended: lives whose rows the next period has
    pods: dict[str, str] = field(default_factory=dict)  # container (runtime:id) -> Kubernetes pod "namespace/name"
    cut_short: bool = False  # a recording the tracer did not finish: bounded by its events
    # lives whose row was made before what it waited for came (analysis.stream.Stream.settled_early)
    rows_settled_early: int = 0

    _OPTIONAL = ("aggregates", "analysis_skipped", "transitions", "recording_stopped", "listen_queues", "lives_pending",
                 "lives_carried")

    @property
    def traced_s(self) -> float:
        return self.ended_at - self.started_at

    @property
    def timewait_followed(self) -> bool:
        """Were TIME_WAIT ends seen (timers or sock_diag), not only their starts?"""
        return self.timewait_method in ("timers", "diag")

    @property
    def counted_only(self) -> bool:
        """Per-process counts only: no per-connection rows to analyse."""
        return self.aggregates is not None

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self._OPTIONAL and value is None or f.name in ("cut_short", "rows_settled_early") and not value:
                continue
            out[f.name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "RunInfo":
        """From run.json or a recording's run line; unknown keys are ignored, missing ones default."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
