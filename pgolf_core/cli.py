"""The ``pgolf`` command. Every subcommand is a thin wrapper over a core function.

    pgolf data smoke            build the embedded smoke corpus (tokenizer + shards) and print its numbers
    pgolf data export DOCS      any JSONL / text documents -> challenge shards
    pgolf data fetch            download the official FineWeb shards and tokenizer (pods)
    pgolf data info DIR         check every shard's header and summarize a dataset
    pgolf data split DIR        compliance T9: canonical validation split, no validation text in training
    pgolf train PARAMS          train (in this process, or under torchrun with --nproc N)
    pgolf run NOTEBOOK PARAMS   one parameterized notebook -> reports/<suite>/<run_id>/ (--source RUN_DIR:
                                an analysis notebook on an existing training run)
    pgolf suite DIR             every notebook of DIR/suite.yaml (optionally over several seeds; --only,
                                --resume)
    pgolf index                 rebuild reports/index.html
    pgolf compare RUN...        runs side by side: overlaid curves, per-stage bpb with deltas, seed statistics
    pgolf export GROUP --out D  a run group (one config, several seeds) -> the challenge's records folder
    pgolf config show PARAMS    the fully resolved config (with --set overrides)
    pgolf config check PARAMS.. validate params files before launching anything
    pgolf config keys           every config key with its type, default and meaning

Errors a user can fix print one line, ``pgolf: error: <message>`` (exit 2); ``--debug`` shows the
traceback. Ctrl-C or SIGTERM prints ``pgolf: interrupted`` (exit 130) after recording the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pgolf_core import __version__


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


def _cmd_train(args: argparse.Namespace) -> int:
    import subprocess

    from pgolf_core.config import load_config

    load_config(args.params, args.set)  # fail on a bad config before launching anything
    sets = [a for s in args.set for a in ("--set", s)]
    if args.nproc == 1:
        from pgolf_core.train import main as train_main

        return train_main([args.params, *sets])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.nproc}",
        "-m",
        "pgolf_core.train",
        args.params,
        *sets,
    ]
    print("launching:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def _print_records(records) -> int:
    for r in records:
        status = "reused" if getattr(r, "reused", False) else r.status
        print(f"{status:<12} {r.run_dir}" + (f"  ({r.error.splitlines()[0]})" if r.error else ""))
    bad = [r for r in records if r.status != "completed"]
    return 1 if bad else 0


def _stream_notebook_output() -> None:
    """papermill logs each cell's output (log_output=True); show it live, as `papermill --log-output` does."""
    import logging

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("papermill")
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _cmd_run(args: argparse.Namespace) -> int:
    from pgolf_core.config import parse_overrides
    from pgolf_core.suite import run_notebook

    flat = {k: v for k, v in _flatten(parse_overrides(args.set)).items()}
    _stream_notebook_output()
    rec = run_notebook(
        args.notebook,
        args.params,
        suite=args.suite,
        reports_root=args.reports,
        overrides=flat or None,
        timeout=args.timeout,
        source_run=args.source or "",
    )
    code = _print_records([rec])
    print(f"index: {Path(args.reports) / 'index.html'}")
    return code


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cmd_suite(args: argparse.Namespace) -> int:
    from pgolf_core.suite import run_suite

    _stream_notebook_output()
    records = run_suite(
        args.dir,
        seeds=args.seeds,
        reports_root=args.reports,
        only=args.only,
        resume=args.resume,
        dry_run=args.dry_run,
    )
    if args.dry_run:
        return 0
    code = _print_records(records)
    print(f"index: {Path(args.reports) / 'index.html'}")
    return code


def _cmd_export(args: argparse.Namespace) -> int:
    from pgolf_core.submission import export_submission

    res = export_submission(
        args.group,
        args.out,
        name=args.name,
        author=args.author,
        github_id=args.github_id,
        blurb=args.blurb,
        reports_root=args.reports,
        sota_bpb=args.sota_bpb,
        sota_loss=args.sota_loss,
        track=args.track,
        overwrite=args.force,
    )
    sub = res.submission
    print(
        f"wrote {res.out_dir}: val_bpb {sub['val_bpb']:.8f} over seeds {sub['seeds']}, "
        f"{sub['bytes_total']:,} bytes (code {sub['bytes_code']:,})"
    )
    if res.significance is not None:
        print(res.significance.summary())
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    import json

    from pgolf_core.report.index import build_index
    from pgolf_core.report.runs import settle_stale_runs

    for folder in settle_stale_runs(args.reports):
        print(f"settled {folder}: its driver is gone, recorded as interrupted")
    out = build_index(args.reports)
    runs = json.loads((out.parent / "index.json").read_text(encoding="utf-8"))["runs"]
    for r in runs:
        if r.get("status") == "unreadable":
            print(f"unreadable: {r['error']}")
    print(out)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from pgolf_core.report.compare_page import write_compare
    from pgolf_core.report.index import build_index

    out, data = write_compare(args.runs, args.out, args.reference, args.reports)
    for r in data["runs"]:
        print(f"{'reference' if r['label'] == data['reference'] else 'run':<10} {r['label']}: {r['path']}")
    if out.resolve().is_relative_to(Path(args.reports).resolve()):
        build_index(args.reports)  # the index links the comparisons under the reports root
    print(out)
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    from pgolf_core.config import load_config, to_yaml

    print(to_yaml(load_config(args.params, args.set)), end="")
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    from pgolf_core.config import ConfigError
    from pgolf_core.suite import check_params

    bad = 0
    for p in args.params:
        try:
            print(f"ok   {check_params(p)}")
        except ConfigError as e:
            bad += 1
            print(f"FAIL {e}", file=sys.stderr)
    return 1 if bad else 0


def _cmd_config_keys(args: argparse.Namespace) -> int:
    from pgolf_core.config import describe_schema

    for key, typ, default, desc in describe_schema():
        print(f"{key:<36} {typ:<28} {default!r:<24} {desc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pgolf_core.data.fetch import OFFICIAL_VARIANTS, REMOTE_ROOT
    from pgolf_core.data.smoke import (
        SMOKE_CASEOPS_DIR,
        SMOKE_DIR,
        SMOKE_SHARD_TOKENS,
        SMOKE_VAL_DOCS,
        SMOKE_VOCAB,
    )

    p = argparse.ArgumentParser(prog="pgolf", description="Parameter Golf research suite.")
    p.add_argument("--version", action="version", version=f"pgolf {__version__}")
    p.add_argument("--debug", action="store_true", help="show an error's traceback (anywhere on the line)")
    sub = p.add_subparsers(
        dest="group", required=True, metavar="{data,train,run,suite,index,compare,export,config}"
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

    t = sub.add_parser("train", help="train a model from a params file (writes runs/<run_id>/)")
    t.add_argument("params", help="a YAML file under params/")
    t.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.iterations=50"
    )
    t.add_argument(
        "--nproc", type=int, default=1, help="processes on this node (torchrun when > 1; default 1)"
    )
    t.set_defaults(fn=_cmd_train)

    r = sub.add_parser("run", help="run one notebook with one params file (papermill) into reports/")
    r.add_argument("notebook", help="a notebook under notebooks/")
    r.add_argument("params", help="a YAML params file (RunConfig + optional 'notebook:' section)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    r.add_argument("--suite", default="adhoc", help="report subfolder (default: %(default)s)")
    r.add_argument("--reports", default="reports", help="reports root (default: %(default)s)")
    r.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds")
    r.add_argument(
        "--source",
        metavar="RUN_DIR",
        help="an analysis notebook reads this existing report folder (its train/), e.g. "
        "reports/smoke/<run_id> of the training notebook, instead of training again",
    )
    r.set_defaults(fn=_cmd_run)

    su = sub.add_parser("suite", help="run every notebook of a suite folder (its suite.yaml) into reports/")
    su.add_argument("dir", help="e.g. params/smoke or params/h100x8")
    su.add_argument("--seeds", type=int, nargs="+", help="run the suite once per seed (train.seed)")
    su.add_argument(
        "--only",
        nargs="+",
        metavar="ENTRY",
        help="run only these entries of suite.yaml (a source they read is reused when it has a "
        "completed run of the same config, else run first)",
    )
    su.add_argument(
        "--resume",
        action="store_true",
        help="reuse completed runs of the same config and continue interrupted or failed ones "
        "in their folders (the plan printed first says what happens to each entry)",
    )
    su.add_argument("--dry-run", action="store_true", help="validate everything, print the plan, run nothing")
    su.add_argument("--reports", default="reports", help="reports root (default: %(default)s)")
    su.set_defaults(fn=_cmd_suite)

    ix = sub.add_parser("index", help="rebuild reports/index.html from the run folders")
    ix.add_argument("--reports", default="reports")
    ix.set_defaults(fn=_cmd_index)

    cm = sub.add_parser(
        "compare", help="runs side by side: curves, per-stage bpb with deltas, seed statistics"
    )
    cm.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="report run folders: reports/<suite>/<run_id> or <suite>/<run_id>",
    )
    cm.add_argument("--reference", metavar="RUN", help="deltas are to this run (default: the first RUN)")
    cm.add_argument("--out", help="the HTML page (default: <reports>/_compare/compare-<time>.html)")
    cm.add_argument("--reports", default="reports", help="reports root (default: %(default)s)")
    cm.set_defaults(fn=_cmd_compare)

    ex = sub.add_parser("export", help="write a records/<date>_<name>/ submission folder from a run group")
    ex.add_argument("group", help="a run group as the index shows it, e.g. h100x8/record_1493")
    ex.add_argument("--out", required=True, help="records/<date>_<name>/")
    ex.add_argument("--name", required=True, help="the record's name")
    ex.add_argument("--author", required=True)
    ex.add_argument("--github-id", required=True)
    ex.add_argument("--blurb", required=True, help="one paragraph: what this record does")
    ex.add_argument("--sota-bpb", type=float, help="test significance against this state of the art (bpb)")
    ex.add_argument("--sota-loss", type=float, help="or against a val_loss in nats (same tokenizer only)")
    ex.add_argument("--track", default="10min_16mb")
    ex.add_argument("--reports", default="reports")
    ex.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    ex.set_defaults(fn=_cmd_export)

    cfg = sub.add_parser("config", help="params files: show, check, list keys")
    csub = cfg.add_subparsers(dest="cmd", required=True, metavar="{show,check,keys}")
    c = csub.add_parser("show", help="print the fully resolved config")
    c.add_argument("params", help="a YAML file under params/")
    c.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. model.num_layers=11"
    )
    c.set_defaults(fn=_cmd_config_show)
    c = csub.add_parser("check", help="validate params files or suite folders (exit 1 if any is invalid)")
    c.add_argument(
        "params",
        nargs="+",
        help="params files (checked with the notebooks of the suite.yaml beside them), suite folders",
    )
    c.set_defaults(fn=_cmd_config_check)
    c = csub.add_parser("keys", help="list every config key with type, default and meaning")
    c.set_defaults(fn=_cmd_config_keys)
    return p


#: error classes whose message is the whole story (module, class): printed as one line, exit 2. Looked
#: up in sys.modules only, so that a command does not import torch to name an error it cannot raise.
ONE_LINE_ERRORS = (
    ("pgolf_core.errors", "PgolfError"),
    ("pgolf_core.config", "ConfigError"),
    ("pgolf_core.code_bytes", "CodeFilesError"),
    ("pgolf_core.outdir", "UnsafeOutputDir"),
    ("pgolf_core.submission", "SubmissionRefused"),
    ("pgolf_core.data.export", "ExportError"),
    ("pgolf_core.data.fetch", "FetchError"),
    ("pgolf_core.data.shards", "ShardError"),
    ("pgolf_core.data.tokenizer", "TokenizerError"),
    ("pgolf_core.quant.format", "ArtifactError"),
    ("pgolf_core.quant.compress", "DecompressError"),
    ("pgolf_core.train", "TrainingDiverged"),
    ("pgolf_core.compliance", "DataTripwire"),
)


def is_user_error(exc: BaseException) -> bool:
    """An error of the input or the machine (a file, a disk), not of pgolf: its message suffices."""
    for module, name in ONE_LINE_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return isinstance(exc, OSError)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _one_line(text: object, limit: int = 2000) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. Known errors print ``pgolf: error: <message>`` (exit 2), Ctrl-C / SIGTERM
    ``pgolf: interrupted ...`` (exit 130), anything else one line with its type (exit 1);
    ``--debug`` (anywhere on the line) shows the traceback instead."""
    import signal

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)  # a killed `pgolf suite` records its runs
    except ValueError:  # not the main thread (e.g. called from a test runner's worker): leave it
        previous = None
    try:
        return args.fn(args)
    except KeyboardInterrupt as e:
        if debug:
            raise
        print("pgolf: interrupted" + (f": {_one_line(e)}" if str(e) else ""), file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if is_user_error(e):
            print(f"pgolf: error: {_one_line(e)}", file=sys.stderr)
            return 2
        first = _one_line(str(e).strip().splitlines()[0] if str(e).strip() else "", 300)
        print(
            f"pgolf: internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
