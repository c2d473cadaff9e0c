"""Data-path benchmark: smoke build, shard I/O, loader, byte counting, the T9 split scan, CaseOps.

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

from pgolf_core.data import caseops
from pgolf_core.data.loader import DistributedTokenLoader
from pgolf_core.data.overlap import val_train_overlap
from pgolf_core.data.shards import read_shard, write_shard
from pgolf_core.data.sidecar import build_sidecar_tables, sidecar_bytes
from pgolf_core.data.smoke import build_smoke_dataset, smoke_documents
from pgolf_core.data.tokenizer import BOS_ID, load_tokenizer
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
    ap.add_argument("--caseops-repeat", type=int, default=4, help="smoke corpus copies for CaseOps figures")
    args = ap.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}, numpy "
        f"{np.__version__}"
    )
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
        print(
            f"loader, 8 ranks x 65,536 tokens (one rank's view): {steps * batch / t_load / 1e6:,.1f} M "
            "global tokens/s"
        )

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
            leaky[at : at + len(doc)] = doc
        leaky_path = write_shard(tmp / "fineweb_train_000001.bin", leaky)
        box = []
        t_split = timed(lambda: box.append(val_train_overlap(val, [leaky_path])), repeat=1)
        print(
            f"T9 split scan (k 64, stride 16):     {args.tokens / t_split / 1e6:,.1f} M training tokens/s "
            f"({len(box[0].leaked)} of 20 planted documents found)"
        )
        caseops_section(tmp, docs, args.caseops_repeat)


def caseops_section(tmp: Path, docs: tuple[str, ...], repeat: int) -> None:
    """The export's CaseOps work per core: the transform of every document and the byte sidecar of its
    tokens (SentencePiece's own encoding is measured apart: it is the same work as a plain export's)."""
    text_docs = list(docs) * repeat
    mb = sum(len(d.encode("utf-8")) for d in text_docs) / 1e6
    t_enc = timed(lambda: [caseops.encode(d) for d in text_docs], repeat=3)
    encoded = [caseops.encode(d) for d in text_docs]
    t_dec = timed(lambda: [caseops.decode(e) for e in encoded], repeat=3)
    build_smoke_dataset(tmp / "smoke_caseops", progress=False, caseops=True)
    sp = load_tokenizer(tmp / "smoke_caseops" / "tokenizer.model")
    tables = build_sidecar_tables(sp)
    t0 = time.perf_counter()
    ids = sp.encode(encoded[: len(docs)])
    t_sp = time.perf_counter() - t0
    streams = [np.asarray([BOS_ID, *x], dtype=np.int64) for x in ids] * repeat
    batches = [np.concatenate(streams[i : i + 512]) for i in range(0, len(streams), 512)]  # as in the export
    t_side = timed(lambda: [sidecar_bytes(b, tables) for b in batches], repeat=3)
    n_tok = sum(t.size for t in streams)
    print(f"CaseOps text: the smoke corpus x {repeat} = {mb:,.1f} MB, {n_tok / 1e6:,.1f} M tokens")
    print(f"CaseOps encode (transform):          {mb / t_enc:,.1f} MB/s of text")
    print(f"CaseOps decode (strict):             {mb / t_dec:,.1f} MB/s of text")
    rate = n_tok / t_side / 1e6
    print(f"byte sidecar, 512-document batches:  {mb / t_side:,.1f} MB/s of text ({rate:,.1f} M tokens/s)")
    print(f"transform + sidecar (export's CaseOps work): {mb / (t_enc + t_side):,.1f} MB/s of text, 1 core")
    print(f"  (for scale, SentencePiece encoding of the transformed text: {mb / repeat / t_sp:,.1f} MB/s)")


if __name__ == "__main__":
    main()
