"""Variants of the BPF program compared in turns on one churn, timed by the kernel.

  sudo .venv/bin/python -m bench.turns [--slice S] [--rounds R] TREE[::ARGS] TREE2[::ARGS] ...

Each TREE is a checkout of tcpclose (a git worktree holding the variant); ARGS are
`tcpclose trace` arguments (e.g. /tmp/variant::--aggregates).  One churn (bench.churn,
as make bench runs it) goes on the whole time, with BPF stats on; the variants take
turns, attached one at a time for S seconds each, in the given order in even rounds
and reversed in odd ones.  It prints, per turn and as a median per variant, the
state-change program's ns a run as the kernel timed it.

What it is for: the workload's rate moves by several per cent from run to run on a
busy host (make bench's "untraced again": up to 9 % between two untraced runs, at
times far more), so it cannot tell two variants 5 % apart, while the
kernel's timing of the program can.  Two tracers attached at once cannot either: the
second one in the tracepoint's chain always finds code and data in cache, about 150 ns
a run cheaper on the development VM's AMD host.  Turns on one churn avoid both; alternating the
order spreads a drift of the machine's speed over every variant.

Besides the state-change program's ns a run, each turn shows all the variant's programs
(the timer programs that follow timewait sockets too) as ns per state transition: what
the whole variant costs the workload, since one loopback connection is 10 transitions.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import harness, sampling
from agent.demo.namespace import Namespace

CLIENTS = 4
CHURN_SECONDS = 24 * 3600  # the clients are ended by this command, not by their clock


def parse_variant(spec: str) -> tuple[Path, list[str]]:
    """TREE[::ARGS] as the tree's path and its `tcpclose trace` arguments."""
    tree, _, args = spec.partition("::")
    if not (Path(tree) / "agent" / "__main__.py").is_file():
        raise SystemExit(f"{tree!r} is not a tcpclose checkout (no agent/__main__.py): "
                         "make one with 'git worktree add DIR COMMIT'")
    return Path(tree), args.split()


def state_ns_per_run(run: dict) -> float | None:
    """The state-change program's ns a run over a traced turn, from its run.json."""
    state = run.get("programs", {}).get(sampling.STATE_PROGRAM, {})
    return state["run_time_ns"] / state["run_cnt"] if state.get("run_cnt") else None


def all_ns_per_transition(run: dict) -> float | None:
    """Every program's run time over a traced turn, per run of the state-change program."""
    programs = run.get("programs", {})
    transitions = programs.get(sampling.STATE_PROGRAM, {}).get("run_cnt")
    if not transitions:
        return None
    return sum(p.get("run_time_ns", 0) for p in programs.values()) / transitions


def take_turn(tree: Path, args: list[str], seconds: float) -> tuple[float | None, float | None]:
    """Trace with the variant in `tree` for `seconds`: its state-change program's ns a run
    and all its programs' ns per transition."""
    out = Path(tempfile.mkdtemp(prefix="tcpclose-turn-"))
    try:
        tracer = subprocess.Popen([sys.executable, "-m", "agent", "trace", "-o", str(out), *args], cwd=tree,
                                  stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        line = tracer.stderr.readline()
        if not line.startswith("Tracing"):
            tracer.kill()
            raise SystemExit(f"{tree}: tcpclose did not start: {line}{tracer.stderr.read()}")
        time.sleep(seconds)
        tracer.send_signal(signal.SIGINT)
        tracer.communicate()
        run = json.loads((out / "run.json").read_text())
        return state_ns_per_run(run), all_ns_per_transition(run)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.turns", description=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python -m bench.turns --rounds 6 "
                                            "/work/main::--aggregates /tmp/variant::--aggregates")
    parser.add_argument("variants", nargs="+", metavar="TREE[::ARGS]")
    parser.add_argument("--slice", type=float, default=12, help="seconds each turn is attached (default 12)")
    parser.add_argument("--rounds", type=int, default=4, help="turns of each variant (default 4)")
    args = parser.parse_args()
    harness.stop_on_sigterm()
    if os.geteuid() != 0:
        raise SystemExit("bench.turns loads BPF programs and makes a network namespace: run it with sudo")
    variants = [parse_variant(spec) for spec in args.variants]
    stats_fd = sampling.enable_bpf_stats()
    if stats_fd is None:
        raise SystemExit("the kernel refused BPF_ENABLE_STATS (Linux 5.8+): no timing to compare")
    ns = Namespace("tcpclose-bench")
    servers, clients = [], []
    timings: dict[str, list[float]] = {spec: [] for spec in args.variants}
    totals: dict[str, list[float]] = {spec: [] for spec in args.variants}
    try:
        servers = harness.start_servers(ns)
        clients = harness.start_clients(ns, CLIENTS, CHURN_SECONDS, "both", stdout=subprocess.DEVNULL)
        for round_ in range(args.rounds):
            for spec in harness.run_order(args.variants, round_):
                ns_run, ns_all = take_turn(*variants[args.variants.index(spec)], args.slice)
                if ns_run is not None:
                    timings[spec].append(ns_run)
                    totals[spec].append(ns_all)
                timed = (f"{ns_run:6.0f} ns a run  {ns_all:6.0f} ns a transition, all programs"
                         if ns_run is not None else "not timed (no run.json programs)")
                print(f"round {round_ + 1}  {spec:40}  {timed}", flush=True)
    finally:
        harness.stop_clients(clients)
        harness.stop_servers(servers)
        ns.delete()
        os.close(stats_fd)
    for spec, values in timings.items():
        if values:
            print(f"{spec:40}  median {statistics.median(values):6.0f} ns a run  "
                  f"(turns: {', '.join(f'{v:.0f}' for v in values)});  all programs: median "
                  f"{statistics.median(totals[spec]):6.0f} ns a transition "
                  f"(turns: {', '.join(f'{v:.0f}' for v in totals[spec])})")


if __name__ == "__main__":
    main()
