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
from pgolf_core.cli_data import add_data_parser


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
    from pgolf_core.suite_spec import check_params

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

    p = argparse.ArgumentParser(prog="pgolf", description="Parameter Golf research suite.")
    p.add_argument("--version", action="version", version=f"pgolf {__version__}")
    p.add_argument("--debug", action="store_true", help="show an error's traceback (anywhere on the line)")
    sub = p.add_subparsers(
        dest="group", required=True, metavar="{data,train,run,suite,index,compare,export,config}"
    )

    add_data_parser(sub)

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
