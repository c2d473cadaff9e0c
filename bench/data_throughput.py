"""Data-path benchmark: smoke build time, shard I/O, loader throughput, byte counting, the T9 split scan.

    .venv/bin/python bench/data_throughput.py [--tokens 20000000]

Prints one line per measurement; copy the table into bench/README.md with the date and machine.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from pgolf_core.data.loader import DistributedTokenLoader
from pgolf_core.data.overlap import val_train_overlap
from pgolf_core.data.shards import read_shard, write_shard
from pgolf_core.data.smoke import build_smoke_dataset, smoke_documents
from pgolf_core.data.tokenizer import load_tokenizer
from pgolf_core.data.tokenizer_bytes import build_byte_luts, token_bytes


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20_000_000, help="synthetic shard size for I/O and loader")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        docs = smoke_documents()
        t_docs = time.perf_counter() - t0
        t_build = timed(lambda: build_smoke_dataset(tmp / "smoke", overwrite=True, progress=False), repeat=1)
        print(f"smoke corpus extraction (ast over the stdlib): {t_docs:.2f} s, {len(docs)} documents")
        print(f"smoke build (tokenizer + shards + manifest):    {t_build:.2f} s")

        rng = np.random.default_rng(0)
        tokens = rng.integers(0, 1024, size=args.tokens, dtype=np.int64)
        path = tmp / "fineweb_train_000000.bin"
        t_write = timed(lambda: write_shard(path, tokens, vocab_size=1024))
        t_read = timed(lambda: np.asarray(read_shard(path, vocab_size=1024)).sum())
        mb = path.stat().st_size / 1e6
        print(f"shard write (atomic, range-checked): {mb / t_write:,.0f} MB/s")
        print(f"shard read + vocab check:            {mb / t_read:,.0f} MB/s")

        seq, batch = 1024, 524_288
        loader = DistributedTokenLoader([path], rank=0, world_size=8)
        steps = 200
        t_load = timed(lambda: [loader.next_batch(batch, seq, 1) for _ in range(steps)], repeat=1)
        print(f"loader, 8 ranks x 65,536 tokens (one rank's view): {steps * batch / t_load / 1e6:,.1f} M global tokens/s")

        luts = build_byte_luts(load_tokenizer(tmp / "smoke" / "tokenizer.model"))
        t_bytes = timed(lambda: token_bytes(tokens[:-1], tokens[1:], luts).sum())
        print(f"byte counting (numpy tables):        {args.tokens / t_bytes / 1e6:,.0f} M tokens/s")

        # T9: 1M validation tokens against the shard, with 20 validation documents (> 256 tokens) planted in
        # it (BOS = 1 occurs by chance every ~1,024 tokens, so documents are about that long).
        val = rng.integers(0, 1024, size=1_000_000).astype(np.uint16)
        bos = np.flatnonzero(val == 1)
        long_docs = [(a, b) for a, b in zip(bos[:-1], bos[1:]) if b - a > 256][::10][:20]
        leaky = tokens.astype(np.uint16)
        for i, (a, b) in enumerate(long_docs):
            doc = val[a:b]
            at = (i + 1) * (args.tokens // 21)
            leaky[at:at + len(doc)] = doc
        leaky_path = write_shard(tmp / "fineweb_train_000001.bin", leaky)
        box = []
        t_split = timed(lambda: box.append(val_train_overlap(val, [leaky_path])), repeat=1)
        print(f"T9 split scan (k 64, stride 16):     {args.tokens / t_split / 1e6:,.1f} M training tokens/s "
              f"({len(box[0].leaked)} of 20 planted documents found)")


if __name__ == "__main__":
    main()
