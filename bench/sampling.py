"""What a run costs, sampled while it runs: CPU of a process and of the machine, peak and
current RSS, and the kernel's own timing of BPF programs (in a window after each traced run's measured period)."""
from __future__ import annotations

import collections
import ctypes
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK")
RSS_EVERY_S = 5.0


SYS_BPF = 321  # x86_64
BPF_ENABLE_STATS, BPF_STATS_RUN_TIME = 32, 0
STATE_PROGRAM = "tracepoint__sock__inet_sock_set_state"


def enable_bpf_stats() -> int | None:
    """Make the kernel time every BPF program run while the returned fd is open (Linux 5.8+):
    bpf(BPF_ENABLE_STATS), which needs no sysctl change and ends with this process.
    None where the kernel refuses; the BPF columns then stay empty."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.c_uint32(BPF_STATS_RUN_TIME)
    fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    return fd if fd >= 0 else None


STATS_WINDOW_S = 10.0  # BPF stats on for this long, in a tail after each traced run's measured period


class StatsWindow(threading.Thread):
    """BPF stats on (enable_bpf_stats) from now for `length` seconds, off after: the timing's
    own overhead (two clock reads a program run) weighs on the workload in this window only,
    which the bench runs after the period it measures, and the programs' run_time_ns cover
    the window."""

    def __init__(self, length: float):
        super().__init__(daemon=True)
        self.length = length
        self.seconds = None  # how long the stats were on; None: the kernel refused them
        self.start()

    def run(self):
        fd = enable_bpf_stats()
        if fd is None:
            return
        began = time.monotonic()
        time.sleep(self.length)
        os.close(fd)
        self.seconds = time.monotonic() - began


def bpf_cost(programs: dict[str, dict[str, int]], window: StatsWindow) -> dict:
    """BPF ns/transition (the state-change program), BPF cores (all programs) and each
    program's ns a run and runs a second, over the window."""
    state = programs.get(STATE_PROGRAM, {})
    if window.seconds is None or not state.get("run_cnt"):
        return {}
    # each program's share (a timer program runs for every kernel timer, a state one per transition)
    each = {name.split("__")[-1]: {"ns_per_run": round(p["run_time_ns"] / p["run_cnt"], 1),
                                   "runs_per_s": round(p["run_cnt"] / window.seconds)}
            for name, p in programs.items() if p.get("run_cnt")}
    return {"bpf_ns_per_transition": state["run_time_ns"] / state["run_cnt"],
            "bpf_cores": sum(p.get("run_time_ns", 0) for p in programs.values()) / 1e9 / window.seconds,
            "bpf_programs": each}


def cpu_s(pid: int) -> tuple[float, float]:
    """(user, user + system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return utime / CLK_TCK, (utime + stime) / CLK_TCK


def machine_cpu() -> tuple[float, float, float]:
    """(busy, stolen, user) CPU seconds of the whole machine since boot, from /proc/stat.
    Busy is user, nice, system, irq and softirq (a guest's time is inside user; BPF
    programs run in whatever they interrupt, in kernel mode: never in user); stolen is
    the time the hypervisor gave to other guests; user is user and nice."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK, (user + nice) / CLK_TCK


def status_mib(pid: int, field: str) -> float:
    """VmHWM (peak RSS) or VmRSS of a process, in MiB; NaN once it has exited."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")  # a zombie: its memory is gone


REPORT_TIMEOUT_S = 900  # a tracer still writing its files after this is killed
PEAK_EVERY_S = 0.1  # adds up to this much to "Ctrl-C to files"
STDERR_TAIL = 20  # lines of what a tracer said last, kept for the bench to print when it failed


def wait_peak_rss(proc: subprocess.Popen) -> tuple[float, str]:
    """Wait for a tracer to write its files and exit (killed after REPORT_TIMEOUT_S); its
    peak RSS in MiB over its whole life, the end-of-run analysis included, and the last
    STDERR_TAIL lines it wrote (what it said if its end failed: the files are then those
    of its last interval, and its counts far short).

    Read from its own VmHWM (a high-water mark, so no peak falls between two reads) until
    it exits.  Not the ru_maxrss of wait4(): a child started by fork or vfork and exec
    starts with its parent's high-water mark there, and the bench's own reached hundreds
    of MiB reading tcpstates' output, which made --aggregates look 600 MiB big."""
    tail: collections.deque = collections.deque(maxlen=STDERR_TAIL)
    stderr = threading.Thread(target=lambda: tail.extend(proc.stderr), daemon=True)  # it may print a lot
    stderr.start()
    deadline = time.monotonic() + REPORT_TIMEOUT_S
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, status_mib(proc.pid, "VmHWM"))  # NaN once it has exited: max() keeps peak
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(PEAK_EVERY_S)
    stderr.join()
    return peak or float("nan"), "".join(tail)


class RssSampler(threading.Thread):
    """The tracer's RSS every RSS_EVERY_S while the workload runs: is it flat?"""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()
        self.start()

    def run(self):
        while not self.stop.wait(RSS_EVERY_S):
            self.samples.append(status_mib(self.pid, "VmRSS"))

    def growth(self) -> tuple[float, float]:
        """(RSS after the first minute, RSS at the end) in MiB, one sample each: the growth
        once warmed up (TIME_WAITs live 60 s, so the first minute fills the per-socket maps)."""
        self.stop.set()
        self.join()
        first = int(60 / RSS_EVERY_S) - 1
        if len(self.samples) <= first + 1:
            return float("nan"), float("nan")
        return self.samples[first], self.samples[-1]

    def levels(self) -> tuple[float, float]:
        """(the median of the second minute's samples, the median of the last minute's) in MiB,
        once stopped (growth()); NaN for a run under two minutes.  A tracer's RSS swings by
        tens of MiB between its steps, every second or so, so one sample says little of its
        level: these are the growth that does not depend on where a sample fell."""
        minute = int(60 / RSS_EVERY_S)
        if len(self.samples) < 2 * minute:
            return float("nan"), float("nan")
        return float(np.median(self.samples[minute:2 * minute])), float(np.median(self.samples[-minute:]))
