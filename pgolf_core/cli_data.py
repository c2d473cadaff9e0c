"""The `pgolf data ...` subcommands (smoke corpus, export, official download, checks, T9 split).

Each takes the parsed arguments and returns an exit code; `pgolf_core.cli` builds the parser and turns
errors into one line. Heavy imports stay inside the commands so `pgolf --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_data_smoke(args: argparse.Namespace) -> int:
    from pgolf_core.data.export import describe_manifest, read_manifest
    from pgolf_core.data.smoke import SMOKE_CASEOPS_DIR, SMOKE_DIR, build_smoke_dataset

    out = Path(args.out or (SMOKE_CASEOPS_DIR if args.caseops else SMOKE_DIR))
    if out.exists() and not args.force:
        print(f"{out} already built (pass --force to rebuild)")
        manifest = read_manifest(out)
    else:
        manifest = build_smoke_dataset(
            out,
            vocab_size=args.vocab_size,
            val_docs=args.val_docs,
            shard_tokens=args.shard_tokens,
            overwrite=args.force,
            progress=not args.quiet,
            caseops=args.caseops,
        )
        print(f"built in {manifest['build_seconds']:.1f} s")
    print(
        "smoke corpus: CPython's pydoc topics + standard-library docstrings (a smoke test corpus, NOT "
        "FineWeb)"
    )
    print(describe_manifest(manifest, out))
    return 0


def _cmd_data_export(args: argparse.Namespace) -> int:
    from pgolf_core.data.export import describe_manifest, export_documents, iter_jsonl_texts, staged_dir
    from pgolf_core.data.tokenizer import train_tokenizer

    if (args.tokenizer is None) == (args.vocab_size is None):
        raise SystemExit(
            "pgolf data export: give exactly one of --tokenizer MODEL or --vocab-size N (train one)"
        )
    with staged_dir(args.out, overwrite=args.force) as work:
        tokenizer = args.tokenizer
        if tokenizer is None:
            # Train on the training documents only: validation text never shapes the vocabulary.
            docs = list(iter_jsonl_texts(args.docs, args.text_field))
            tokenizer = train_tokenizer(
                docs[args.val_docs :], args.vocab_size, work / "tokenizer", caseops=args.caseops
            )
        manifest = export_documents(
            iter_jsonl_texts(args.docs, args.text_field),
            tokenizer,
            work,
            val_docs=args.val_docs,
            shard_tokens=args.shard_tokens,
            corpus_name=Path(args.docs).stem,
            progress=not args.quiet,
            caseops=args.caseops,
        )
    print(describe_manifest(manifest, args.out))
    return 0


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from pgolf_core.data.fetch import fetch_official

    record = fetch_official(
        args.variant,
        args.train_shards,
        out_root=args.out,
        repo_id=args.repo_id,
        remote_root=args.remote_root,
        progress=not args.quiet,
    )
    print(
        f"{record['variant']}: {record['val_shards']} val shards ({record['tokens']['val']:,} tokens), "
        f"{record['train_shards']} train shards ({record['tokens']['train']:,} tokens) in "
        f"{Path(args.out) / 'datasets' / record['dataset']}; tokenizer {record['tokenizer']['file']}"
    )
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    from pgolf_core.data.export import MANIFEST_NAME, describe_manifest, read_manifest
    from pgolf_core.data.verify import verify_dataset

    root = Path(args.dir)
    if not any(root.glob("fineweb_*_*.bin")):
        raise SystemExit(f"pgolf data info: no fineweb_*_*.bin shards in {root}")
    for line in verify_dataset(root).lines():  # headers, ids vs the vocabulary, counts vs the manifest
        print(line)
    if (root / MANIFEST_NAME).is_file():
        print(describe_manifest(read_manifest(root), root))
    return 0


def _cmd_data_split(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pgolf_core.compliance import FINEWEB_VAL_DOCS, check_data_split
    from pgolf_core.data.export import MANIFEST_NAME, read_manifest
    from pgolf_core.data.shards import list_shards, load_tokens, read_header

    root = Path(args.dir)
    val_files, train_files = (
        list_shards(root / "fineweb_val_*.bin"),
        list_shards(root / "fineweb_train_*.bin"),
    )
    expected = args.val_docs
    if expected is None:
        # A pgolf-built dataset states its own split; anything else is taken to be the official one.
        has_manifest = (root / MANIFEST_NAME).is_file()
        expected = read_manifest(root)["splits"]["val"]["documents"] if has_manifest else FINEWEB_VAL_DOCS
        print(
            f"expected validation documents: {expected:,} "
            f"({MANIFEST_NAME if has_manifest else 'the official split'})"
        )
    total = sum(read_header(f).num_tokens for f in train_files)
    if args.max_train_tokens is not None:
        total = min(total, args.max_train_tokens)
    with tqdm(total=total, unit="tok", unit_scale=True, desc="train scan", disable=args.quiet) as bar:
        verdict = check_data_split(
            load_tokens(val_files),
            train_files,
            expected_val_docs=expected,
            expected_train_shards=args.train_shards,
            k=args.k,
            stride=args.stride,
            max_train_tokens=args.max_train_tokens,
            progress=lambda n: bar.update(n - bar.n),
        )
    print(f"{verdict.check} {verdict.label}: {verdict.reason}")
    return 0 if verdict.passed else 1


def add_data_parser(sub) -> None:
    """The `data` subcommand and its own subcommands, on the top-level subparsers ``sub``."""
    from pgolf_core.data.fetch import OFFICIAL_VARIANTS, REMOTE_ROOT
    from pgolf_core.data.smoke import (
        SMOKE_CASEOPS_DIR,
        SMOKE_DIR,
        SMOKE_SHARD_TOKENS,
        SMOKE_VAL_DOCS,
        SMOKE_VOCAB,
    )

    data = sub.add_parser("data", help="datasets: smoke corpus, export, official download, checks")
    dsub = data.add_subparsers(dest="cmd", required=True, metavar="{smoke,export,fetch,info,split}")

    s = dsub.add_parser("smoke", help="build the embedded smoke corpus (offline, deterministic)")
    s.add_argument("--out", help=f"output folder (default: {SMOKE_DIR}, with --caseops {SMOKE_CASEOPS_DIR})")
    s.add_argument(
        "--vocab-size", type=int, default=SMOKE_VOCAB, help="tokenizer vocab (default: %(default)s)"
    )
    s.add_argument(
        "--val-docs", type=int, default=SMOKE_VAL_DOCS, help="documents in validation (default: %(default)s)"
    )
    s.add_argument(
        "--shard-tokens", type=int, default=SMOKE_SHARD_TOKENS, help="tokens per shard (default: %(default)s)"
    )
    s.add_argument("--force", action="store_true", help="rebuild even if the folder exists")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--caseops", action="store_true", help="CaseOps tokenizer and shards, val byte sidecar")
    s.set_defaults(fn=_cmd_data_smoke)

    e = dsub.add_parser("export", help="JSONL documents -> challenge shards + manifest")
    e.add_argument("docs", help="JSONL file, one document per line")
    e.add_argument("--out", required=True, help="output dataset folder")
    e.add_argument("--val-docs", type=int, required=True, help="the first N documents go to validation")
    e.add_argument("--tokenizer", help="an existing SentencePiece .model (e.g. fineweb_1024_bpe.model)")
    e.add_argument(
        "--vocab-size", type=int, help="or train a tokenizer of this size on the training documents"
    )
    e.add_argument("--text-field", default="text", help="JSON field holding the text (default: %(default)s)")
    e.add_argument("--shard-tokens", type=int, default=10**8, help="tokens per shard (default: %(default)s)")
    e.add_argument("--force", action="store_true", help="replace an existing output folder")
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--caseops", action="store_true", help="CaseOps-transformed shards + val byte sidecar")
    e.set_defaults(fn=_cmd_data_export)

    f = dsub.add_parser("fetch", help="download the official FineWeb shards and tokenizer (needs network)")
    f.add_argument("--variant", choices=sorted(OFFICIAL_VARIANTS), required=True)
    f.add_argument(
        "--train-shards", type=int, default=80, help="train shards of 100M tokens (default: %(default)s)"
    )
    f.add_argument("--out", default="data", help="root folder (default: %(default)s)")
    f.add_argument("--repo-id", help="Hugging Face dataset repo (default: the variant's publisher)")
    f.add_argument("--remote-root", default=REMOTE_ROOT, help="folder inside the repo (default: %(default)s)")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(fn=_cmd_data_fetch)

    i = dsub.add_parser("info", help="check every shard header and print the dataset summary")
    i.add_argument("dir", help="dataset folder")
    i.set_defaults(fn=_cmd_data_info)

    sp = dsub.add_parser(
        "split", help="compliance T9: canonical validation split, no validation document in training"
    )
    sp.add_argument("dir", help="dataset folder")
    sp.add_argument(
        "--val-docs", type=int, help="expected validation documents (default: the manifest's, else 50,000)"
    )
    sp.add_argument("--train-shards", type=int, help="expected training shards (default: not checked)")
    sp.add_argument("--k", type=int, default=64, help="shingle length in tokens (default: %(default)s)")
    sp.add_argument(
        "--stride", type=int, default=16, help="hash every Nth training window (default: %(default)s)"
    )
    sp.add_argument("--max-train-tokens", type=int, help="scan only this many training tokens (a sample)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(fn=_cmd_data_split)
