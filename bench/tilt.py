"""Token-only n-gram tilt: tokens/s of the hint builder (the part #2135 runs inside the eval timer).

    .venv/bin/python bench/tilt.py                     # 10,000,000 tokens, 3 runs
    .venv/bin/python bench/tilt.py --tokens 2000000 --runs 1

#2135 took 167-201 s for the 47,851,520 validation targets on the pod (Python plus a small C state
machine): about 240,000-290,000 tokens/s. The target here is at least 800,000 tokens/s on one core.

The stream: Zipf-distributed tokens over V = 8192 (exponent 1.1) in which 15% of the text is copied
from earlier spans (20-400 tokens), so order-16 contexts repeat the way boilerplate and quotes do in
web text; the gated fraction is printed next to #2135's 1.31%. Single-threaded; the VM is shared, so
the load average is printed before and after. Copy the table into bench/README.md.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from pgolf_core.eval.tilt import ORDER, THRESHOLD, build_hints  # noqa: E402

TARGET_TOKENS_PER_S = 800_000
POD_2135 = (47_851_520 / 201.0, 47_851_520 / 167.0)


def text_like_stream(n: int, vocab: int = 8192, copy_frac: float = 0.15, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = ranks**-1.1
    out = rng.choice(vocab, size=n, p=p / p.sum()).astype(np.int64)
    pos = 1000
    while pos < n:
        pos += int(rng.integers(100, 2000))
        length = int(rng.integers(20, 400))
        if pos + length >= n or rng.random() > copy_frac * 2:
            continue
        src = int(rng.integers(0, pos - length))
        out[pos : pos + length] = out[src : src + length]
        pos += length
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    x = text_like_stream(args.tokens)
    load0 = os.getloadavg()[0]
    times, gated = [], 0
    for _ in range(args.runs):
        t = time.perf_counter()
        h = build_hints(x, ORDER, THRESHOLD)
        times.append(time.perf_counter() - t)
        gated = h.gated_count
    load1 = os.getloadavg()[0]
    rates = [args.tokens / s for s in times]
    med = statistics.median(rates)
    print(
        f"{datetime.date.today()} {platform.processor() or platform.machine()}, load {load0:.2f} -> "
        f"{load1:.2f}"
    )
    print("| stream | tokens | runs | tokens/s (median, range) | seconds | gated | vs #2135 pod |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| text-like, V=8192 | {args.tokens:,} | {args.runs} | {med:,.0f} "
        f"({min(rates):,.0f}-{max(rates):,.0f}) "
        f"| {statistics.median(times):.2f} | {gated / args.tokens:.2%} "
        f"| {med / POD_2135[1]:.1f}-{med / POD_2135[0]:.1f}x |"
    )
    print(f"target {TARGET_TOKENS_PER_S:,} tokens/s: {'met' if med >= TARGET_TOKENS_PER_S else 'NOT met'}")


if __name__ == "__main__":
    main()
