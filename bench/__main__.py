"""`make bench`: python -m bench (see bench/README.md)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from .harness import MODES, TCPSTATES, measure, run_order, stop_on_sigterm
from .sampling import enable_bpf_stats
from .table import bench_id, load_rows, save_row, table


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="length of each run (the targets: 60)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="each runs every mode once; ratios are paired within a repeat, and 4 or more "
                             "show their spread: e.g. --seconds 15 --repeats 16")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--closer", choices=["both", "client", "server"], default="both",
                        help="which side closes first: both = half the clients each way")
    parser.add_argument("--rates", default="0", help="total connections/s, comma-separated; 0 = maximum")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, of: {', '.join(MODES)}; e.g. a 10 minute RSS soak: "
                             "--seconds 600 --modes 'tcpclose --aggregates'")
    parser.add_argument("--rows", type=Path, metavar="FILE",
                        help="append each run's figures to FILE as a JSON line as it ends, e.g. "
                             "--rows bench.jsonl")
    parser.add_argument("--from", dest="from_files", type=Path, nargs="+", metavar="FILE",
                        help="run nothing: print the tables of the runs saved in these --rows files, "
                             "their repeats pooled (every ratio still paired within its own repeat)")
    args = parser.parse_args()
    console = Console(width=160)
    if args.from_files:
        for rate, rows in load_rows(args.from_files).items():
            benches = sorted({row["bench"] for row in rows})
            machines = sorted({row.get("machine", "?") for row in rows})
            console.print(f"{len(benches)} bench run(s): {', '.join(benches)}; machine: {'; '.join(machines)}")
            console.print(table(rows, rate))
        return
    stop_on_sigterm()
    sys.stdout.reconfigure(line_buffering=True)  # each run's line as it ends, also into a file
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (network namespaces and BPF): sudo make bench")
    modes = [m.strip() for m in args.modes.split(",")]
    if not set(modes) <= set(MODES):
        raise SystemExit(f"bench: --modes takes any of {', '.join(MODES)} (without untraced: no ratios)")
    if "tcpstates" in modes and not Path(TCPSTATES).exists():
        modes.remove("tcpstates")
    probe = enable_bpf_stats()  # can the kernel time BPF programs? (on in each run's window only)
    if probe is None:
        console.print("BPF stats: the kernel refused BPF_ENABLE_STATS, so the BPF columns stay empty")
    else:
        os.close(probe)
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    machine = f"{os.cpu_count()} cores ({cpu}), Linux {os.uname().release}"
    console.print(f"machine: {machine}; "
                  f"{args.clients} churn clients (closing first: {args.closer}), {args.seconds:g} s per run")
    if args.rows:  # a path that cannot be written fails now, not after the first run
        try:
            args.rows.open("a").close()
        except OSError as exc:
            raise SystemExit(f"bench: cannot write --rows {args.rows}: {exc.strerror}") from None
    invocation = bench_id()
    for rate in (float(r) for r in args.rates.split(",")):
        rows = []
        try:
            for repeat in range(args.repeats):
                for mode in run_order(modes, repeat):
                    row = measure(mode, args.seconds, args.clients, rate, args.closer) | {"repeat": repeat}
                    console.print(f"  [{repeat + 1}/{args.repeats}] {mode}: {row['rate']:,.0f} conn/s, "
                                  f"workload's user CPU {row['workload_user']:.2%}", highlight=False)
                    rows.append(row)
                    if args.rows:
                        save_row(args.rows, row | {"bench": invocation, "machine": machine, "target_rate": rate})
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the runs that ended are not lost
            if rows:
                console.print(table(rows, rate))
            raise SystemExit(f"bench: interrupted; the table above has the {len(rows)} run(s) that ended"
                             if rows else "bench: interrupted before any run ended") from None
        console.print(table(rows, rate))


if __name__ == "__main__":
    main()
