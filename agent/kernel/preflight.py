"""What must hold before tracing, checked without loading anything: each failure is one
line naming the fix (agent/errors.py), before a file is made or clang runs."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import HeadersMissing, NotRoot, TracepointMissing

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
TRACEPOINTS = ("sock/inet_sock_set_state", "tcp/tcp_send_reset", "tcp/tcp_receive_reset")
TIMER_TRACEPOINTS = ("timer/timer_start", "timer/timer_expire_entry", "timer/timer_cancel")
TW_TIMER_SYMBOL = "tw_timer_handler"  # the callback of every timewait socket's timer
MODULES_DIR = Path("/lib/modules")
KALLSYMS = Path("/proc/kallsyms")


def check_privileges() -> None:
    if os.geteuid() != 0:
        raise NotRoot("tracing needs root (CAP_BPF and CAP_PERFMON): run it with sudo")


def _tracefs_events() -> Path | None:
    roots = [root for root in TRACEFS_ROOTS if (root / "events").is_dir()]
    return roots[0] / "events" if roots else None


def check_tracepoints() -> None:
    events = _tracefs_events()
    if events is None:
        raise TracepointMissing(
            "tracefs is not mounted: run 'sudo mount -t tracefs nodev /sys/kernel/tracing' (or 'sudo make setup')"
        )
    for tp in TRACEPOINTS:
        if not (events / tp).is_dir():
            raise TracepointMissing(
                f"this kernel has no tracepoint {tp.replace('/', ':')}: tcpclose needs Linux 4.16 or later "
                "(use the VM in vagrant/)"
            )


def check_headers() -> None:
    release = os.uname().release
    build = MODULES_DIR / release / "build"
    if not build.exists():
        raise HeadersMissing(
            f"no kernel headers at {build}: install linux-headers-{release}, "
            "or run 'sudo make setup' to link the nearest distribution headers"
        )


def tw_timer_address() -> tuple[int | None, str]:
    """The address of tw_timer_handler, or None and the reason it cannot be used."""
    events = _tracefs_events()
    missing = [tp for tp in TIMER_TRACEPOINTS if events is None or not (events / tp).is_dir()]
    if missing:
        return None, f"no timer tracepoint {missing[0].replace('/', ':')}"
    try:
        with open(KALLSYMS, encoding="ascii", errors="replace") as symbols:
            for line in symbols:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == TW_TIMER_SYMBOL:
                    address = int(parts[0], 16)
                    if address == 0:  # kernel.kptr_restrict hides addresses
                        return None, f"{KALLSYMS} hides addresses (kernel.kptr_restrict)"
                    return address, ""
    except OSError as exc:
        return None, f"cannot read {KALLSYMS}: {exc.strerror}"
    return None, f"{TW_TIMER_SYMBOL} is not in {KALLSYMS}"
