"""bench.scrape: what a scrape of tcpclose agent costs with many workloads (no BPF)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_scrape_bench_serves_the_workloads_that_fit_and_folds_the_rest():
    done = subprocess.run([sys.executable, "-m", "bench.scrape", "--workloads", "30", "--processes", "60",
                           "--max-series", "1000", "--scrapes", "3"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    # --max-series 1000 holds 20 workloads (50 series each): 10 of the 30 go to "other"
    shown = re.search(r"([\d,]+) workload series of closes \(([\d,]+) workloads folded", done.stdout)
    assert shown and shown.groups() == ("21", "10"), done.stdout
    series = int(re.search(r"([\d,]+) tcpclose series in all", done.stdout).group(1).replace(",", ""))
    assert 21 * 30 < series <= 1000, done.stdout
    assert re.search(r"scrape: median [\d.]+ ms, p95 [\d.]+ ms, max [\d.]+ ms over 3 scrapes", done.stdout), done.stdout
