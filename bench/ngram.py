"""Legal n-gram cache throughput: tokens/s of the cache + each mixer on i.i.d. uniform tokens, V = 1024.

    .venv/bin/python bench/ngram.py                     # 1,000,000 tokens, 5 runs per case
    .venv/bin/python bench/ngram.py --tokens 200000 --runs 3

The contrast: the illegal PR #909 block ran at a median 91,347 tokens/s
(81,810-94,752) on this 2-core VM, single-threaded, entropy step included. Here, per case: tokens/s of
``NgramScorer.score_stream`` over the whole stream (median and range over runs; table allocation, the
model's entropy where the mixer needs it, lookups, mixing, updates and events all inside the timer;
the uniform "model" itself costs nothing), its mean NLL against the floor ln V - 4 SE (T3), and the
normalization error max |sum_v p(v) - 1| of the full predictive rows at 64 positions spread over the
stream, with the largest gap between a scored NLL and -ln p(x) of those rows.

Single-threaded (BLAS/OpenMP pinned to one thread) and single process. The VM is shared: the load
average is printed before and after; measure when it is near 0. Copy the table into bench/README.md.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy loads its BLAS: single-threaded, like the #909 anchor

import argparse  # noqa: E402
import datetime  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from pgolf_core.config import NgramConfig  # noqa: E402
from pgolf_core.ngram import NgramScorer, UniformModel  # noqa: E402

ANCHOR_909 = 91_347  # tokens/s: the illegal #909 n-gram block measured on this VM

CASES = [  # (label, alpha_rule, full_rows)
    ("cache + fixed alpha", "fixed", False),
    ("cache + entropy alpha", "entropy", False),
    ("cache + Hedge (model, mix, cache)", "hedge", False),
    ("cache + fixed alpha, full [n, V] rows", "fixed", True),
    ("cache + Hedge, full [n, V] rows", "hedge", True),
]


def bench_case(tokens: np.ndarray, cfg: NgramConfig, full_rows: bool, runs: int) -> dict:
    V = 1024
    scorer = NgramScorer(UniformModel(V), cfg, full_rows=full_rows)
    rates, score = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        score = scorer.score_stream(tokens)
        rates.append((tokens.size - 1) / (time.perf_counter() - t0))
    nll = score.nll[1:]
    se = float(nll.std(ddof=1) / math.sqrt(nll.size))
    positions = np.linspace(1, tokens.size - 1, 64).astype(np.int64)
    P = scorer.predictive(tokens, positions)
    gap = np.abs(score.nll[positions] + np.log(P[np.arange(positions.size), tokens[positions]]))
    return {
        "median": statistics.median(rates),
        "lo": min(rates),
        "hi": max(rates),
        "mean_nll": float(nll.mean()),
        "floor": math.log(V) - 4 * se,
        "z": (float(nll.mean()) - math.log(V)) / se,
        "norm_err": float(np.abs(P.sum(axis=1) - 1).max()),
        "gap": float(gap.max()),
        "table_bytes": scorer.cache.table_bytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--full-rows-runs", type=int, default=3, help="runs of the full-row cases")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tokens = np.random.default_rng(args.seed).integers(0, 1024, args.tokens)
    cfg = NgramConfig(enabled=True)
    print(
        f"# {datetime.date.today()}  {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, "
        f"numpy {np.__version__}; load average before: {os.getloadavg()[0]:.2f}"
    )
    print(
        f"# {args.tokens:,} i.i.d. uniform tokens, V = 1024, orders 2..{cfg.max_order}, {cfg.table_rows:,} "
        "rows, "
        f"min_count {cfg.min_count}, smoothing {cfg.smoothing}, segment {cfg.segment_tokens}; "
        f"ln V = {math.log(1024):.5f}"
    )
    print(
        "| case | tokens/s median | range | runs | mean NLL (nats) | floor ln V - 4 SE | z | max abs(sum p - "
        "1) "
        "| max NLL gap | table bytes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, rule, full_rows in CASES:
        runs = args.full_rows_runs if full_rows else args.runs
        r = bench_case(tokens, cfg.model_copy(update={"alpha_rule": rule}), full_rows, runs)
        print(
            f"| {label} | {r['median']:,.0f} | {r['lo']:,.0f}-{r['hi']:,.0f} | {runs} | {r['mean_nll']:.5f} "
            "| "
            f"{r['floor']:.5f} | {r['z']:+.1f} | {r['norm_err']:.1e} | {r['gap']:.1e} | {r['table_bytes']:,} "
            "|",
            flush=True,
        )
    print(
        f"| PR #909 block (illegal) | {ANCHOR_909:,} | 81,810-94,752 | | 6.9119 | | -25.9 "
        f"| up to 345 | | 335,544,320 |"
    )
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
