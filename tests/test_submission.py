"""Significance statistics by hand, and the exported records folder of a smoke run group."""

from __future__ import annotations

import base64
import json
import lzma
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgolf_core import submission as sub
from pgolf_core.challenge import BYTE_CAP
from pgolf_core.code_bytes import RUNTIME_CODE_FILES, counted_files
from pgolf_core.code_pack import ENTRY_SCRIPT, minify, unarchive
from pgolf_core.submission import SubmissionRefused, export_submission, margin_bpb, significance
from pgolf_core.suite import run_suite
from tests.conftest import REPO


def test_significance_matches_a_hand_computed_t_test():
    """n = 3: mean 1.050, s = 0.001, threshold 1.0611 - 0.002 = 1.0591.

    t = (1.050 - 1.0591) / (0.001 / sqrt 3) = -15.7617; with 2 degrees of freedom the Student CDF has
    the closed form 1/2 + t / (2 sqrt(2 + t^2)), so p = 0.0020006 < 0.01: the bar is met.
    """
    sig = significance([1.0500, 1.0510, 1.0490], sota=1.0611, margin=0.002)
    t = (1.0500 - 1.0591) / (0.001 / math.sqrt(3))
    assert sig.t == pytest.approx(t, rel=1e-9) and sig.t == pytest.approx(-15.7617, abs=1e-4)
    assert sig.p == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-9)
    assert sig.p == pytest.approx(0.0020006, abs=1e-7)
    assert (sig.n, sig.mean, sig.threshold) == (3, pytest.approx(1.05), pytest.approx(1.0591))
    assert sig.std == pytest.approx(0.001) and sig.bar_met
    assert "MEETS the record bar" in sig.summary()


def test_significance_not_met_when_too_close_or_too_noisy():
    """mean 1.059 is only 0.0001 under the bar: t = -0.1732, p = 1/2 - 0.1732 / (2 sqrt 2.03) = 0.4392."""
    sig = significance([1.0580, 1.0600, 1.0590], sota=1.0611, margin=0.002)
    assert sig.p == pytest.approx(0.5 + sig.t / (2 * math.sqrt(2 + sig.t**2)), rel=1e-9)
    assert sig.p == pytest.approx(0.4392, abs=1e-4) and not sig.bar_met
    assert not significance(
        [1.0, 1.2, 0.9], sota=1.2, margin=0.002
    ).bar_met  # far below on average, too noisy
    one = significance([1.0], sota=1.2, margin=0.002)
    assert one.p is None and not one.bar_met and "at least 2 seeds" in one.summary()
    same = significance([1.05, 1.05], sota=1.2, margin=0.002)
    assert same.p == 0.0 and same.bar_met  # zero spread, clearly below: scipy's nan resolved by the sign


def test_margin_in_bpb_uses_the_runs_tokens_per_byte():
    """0.005 nats/token in bpb = 0.005 / ln 2 * tokens / bytes: 0.00193 at sp8192's 3.73 bytes per token."""
    assert margin_bpb(1000, 3730) == pytest.approx(0.005 / math.log(2) / 3.73)
    assert margin_bpb(1000, 3730) == pytest.approx(0.001934, abs=1e-6)


FAST_TRAIN = """
data: {{source: local, root: {root}, tokenizer: {root}/tokenizer.model, val_max_tokens: 2048}}
model: {{num_layers: 2, model_dim: 64, num_heads: 4, num_kv_heads: 2}}
train: {{iterations: 12, train_batch_tokens: 2048, train_seq_len: 128, grad_accum_steps: 1, warmup_steps: 0,
        warmdown_iters: 4, max_wallclock_seconds: 0, val_loss_every: 0, train_log_every: 4, device: cpu, progress: false}}
eval: {{batch_tokens: 4096, stride: 64, probe_tokens: 256}}
quant: {{scheme: groups, keep_float_max_numel: 1024, attn: {{bits: 6}}, mlp: {{bits: 6}}}}
"""  # noqa: E501 (YAML fixture text)


@pytest.fixture(scope="module")
def group_runs(smoke_dir, tmp_path_factory):
    """The training notebook of a tiny config over seeds 1 and 2: one run group."""
    import os

    root = tmp_path_factory.mktemp("group")
    suite = root / "tiny"
    suite.mkdir()
    (suite / "train.yaml").write_text(FAST_TRAIN.format(root=smoke_dir))
    (suite / "suite.yaml").write_text(
        "seeds: [1, 2]\nruns:\n  - {name: train, notebook: notebooks/00_train.ipynb, params: train.yaml}\n"
    )
    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        records = run_suite(suite, reports_root=root / "reports", log_output=False)
    finally:
        os.chdir(cwd)
    assert [r.status for r in records] == ["completed", "completed"], [r.error for r in records]
    return root / "reports", records


def export(reports, out, **kw):
    return export_submission(
        "tiny/train",
        out,
        name="Tiny",
        author="Ada",
        github_id="ada",
        blurb="A test.",
        reports_root=reports,
        code_root=REPO,
        **kw,
    )


def test_export_writes_the_challenge_records_folder(group_runs, tmp_path):
    reports, records = group_runs
    res = export(reports, tmp_path / "rec", sota_bpb=9.0, date="2026-11-21T00:00:00Z")
    out = res.out_dir
    s = json.loads((out / "submission.json").read_text())
    for key, typ in {
        "name": str,
        "author": str,
        "github_id": str,
        "blurb": str,
        "date": str,
        "track": str,
        "val_bpb": float,
        "val_loss": float,
        "bytes_total": int,
        "bytes_code": int,
        "seeds": list,
        "seed_results": list,
    }.items():
        assert isinstance(s[key], typ), key
    assert (s["name"], s["author"], s["github_id"], s["track"], s["seeds"]) == (
        "Tiny",
        "Ada",
        "ada",
        "10min_16mb",
        [1, 2],
    )
    finals = []
    for r in records:
        st = json.loads((r.run_dir / "stages.json").read_text())["stages"]
        finals.append(next(x for x in st if x["stage"] == "q_sw"))
    assert s["val_bpb"] == pytest.approx(sum(f["val_bpb"] for f in finals) / 2, abs=1e-8)
    assert [x["stage"] for x in s["seed_results"]] == ["q_sw", "q_sw"]
    # bytes: the packed train_gpt.py (every counted code file, the entry script, the config), plus the
    # largest model blob
    wrapper = (out / "train_gpt.py").read_bytes()
    assert s["code_packing"] == "packed" and s["bytes_code"] == len(wrapper)
    biggest = max((r.run_dir / "artifact.bin").stat().st_size for r in records)
    assert s["bytes_total"] == s["bytes_code"] + biggest < BYTE_CAP
    assert {
        "README.md",
        "train_gpt.py",
        "train_seed1.log",
        "train_seed2.log",
        "stages_seed1.json",
        "stages_seed2.json",
    } == {p.name for p in out.iterdir()} - {"submission.json"}
    packed = unpacked_files(wrapper)
    counted = {f.as_posix() for f in counted_files(RUNTIME_CODE_FILES, REPO)}
    assert set(packed) == counted | {"train_gpt.py", "config.yaml"} and "pgolf_core/cli.py" not in packed
    config = yaml.safe_load(packed["config.yaml"])
    assert (config["model"]["num_layers"], config["train"]["seed"]) == (2, 1)
    for name in ("pgolf_core/model/gpt.py", "train_gpt.py"):  # minified: compiles, no docstrings left
        source = packed[name].decode()
        assert source == minify((REPO / name).read_text() if name != "train_gpt.py" else ENTRY_SCRIPT)
        assert '"""' not in source and "#" not in source.split("\n")[0]
        compile(source, name, "exec")
    raw = sum((REPO / f).stat().st_size for f in counted)
    print(f"counted code: {len(counted)} files, {raw:,} B raw -> {len(wrapper):,} B packed")
    assert len(wrapper) < raw / 4  # measured 2026-12-02: 733,071 -> about 126,000
    readme = (out / "README.md").read_text()
    assert "## Significance" in readme and "one-sided t" in readme and "MEETS the record bar" in readme
    assert "| seed | pre | q | q_sw |" in readme and "`model.num_layers: 9 -> 2`" in readme
    assert "unpacks into `_pgolf_code_<hash>/`" in readme
    assert s["significance"]["bar_met"] is True and s["significance"]["p"] < 0.01


def raw_packing(monkeypatch) -> None:
    real_load = sub.load_config

    def raw(path):
        cfg = real_load(path)
        return cfg.model_copy(update={"quant": cfg.quant.model_copy(update={"code_packing": "raw"})})

    monkeypatch.setattr(sub, "load_config", raw)


def unpacked_files(wrapper: bytes) -> dict[str, bytes]:
    blob = re.search(rb"b85decode\('([^']+)'\)", wrapper)[1]
    return unarchive(lzma.decompress(base64.b85decode(blob)))


def test_raw_export_ships_the_files(group_runs, tmp_path, monkeypatch):
    reports, _ = group_runs
    raw_packing(monkeypatch)
    res = export(reports, tmp_path / "raw")
    out, s = res.out_dir, res.submission
    code = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml")]
    assert s["code_packing"] == "raw" and s["bytes_code"] == sum(p.stat().st_size for p in code)
    assert (out / "pgolf_core" / "model" / "gpt.py").is_file()
    assert not (out / "pgolf_core" / "cli.py").exists()
    assert (out / "train_gpt.py").read_text() == ENTRY_SCRIPT and (out / "config.yaml").is_file()


def run_entry(folder: Path) -> tuple[str, list[dict]]:
    proc = subprocess.run(
        [sys.executable, "train_gpt.py"], check=False, cwd=folder, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '"event": "stages"' in proc.stdout and (folder / "runs" / "record" / "artifact.bin").is_file()
    return proc.stdout, json.loads((folder / "runs" / "record" / "stages.json").read_text())["stages"]


def test_exported_entry_scripts_train_and_score_alike_from_the_folder(group_runs, tmp_path, monkeypatch):
    """train_gpt.py runs from the exported folder alone: the packed wrapper (the minified code it
    unpacks) gives the same stage numbers as the raw folder's readable code, and counts its own size."""
    reports, _ = group_runs
    packed = export(reports, tmp_path / "packed").out_dir
    raw_packing(monkeypatch)
    raw = export(reports, tmp_path / "raw").out_dir
    out_raw, stages_raw = run_entry(raw)
    assert f"pgolf_core from {raw / 'pgolf_core'}" in out_raw  # the folder's own copy, not the checkout
    out_packed, stages_packed = run_entry(packed)
    (unpacked,) = packed.glob("_pgolf_code_*")
    assert f"pgolf_core from {unpacked / 'pgolf_core'}" in out_packed
    assert json.loads((unpacked / "PACKED.json").read_text()) == {
        "wrapper": "train_gpt.py",
        "bytes": (packed / "train_gpt.py").stat().st_size,
    }
    size = (packed / "train_gpt.py").stat().st_size
    assert f"code {size:,}" in out_packed  # T7 counts the shipped wrapper, not the unpacked files
    assert [st["stage"] for st in stages_packed] == [st["stage"] for st in stages_raw]
    for a, b in zip(stages_packed, stages_raw, strict=True):
        assert (a["val_bpb"], a["val_loss"], a["tokens"], a["bytes"]) == (
            b["val_bpb"],
            b["val_loss"],
            b["tokens"],
            b["bytes"],
        ), a["stage"]


def test_export_refuses_non_compliant_over_cap_failed_and_unknown(group_runs, tmp_path, monkeypatch):
    reports, records = group_runs
    stages_path = records[1].run_dir / "stages.json"
    original = stages_path.read_text()
    data = json.loads(original)
    q = next(s for s in data["stages"] if s["stage"] == "q")
    q["verdicts"].append(
        {"check": "T1", "passed": False, "reason": "scores moved", "measured": 1.0, "limit": 0.0}
    )
    stages_path.write_text(json.dumps(data))
    try:
        with pytest.raises(SubmissionRefused, match=r"non-compliant: seed 2 stage q: T1: scores moved"):
            export(reports, tmp_path / "a")
    finally:
        stages_path.write_text(original)
    real_load = sub.load_config

    def tight_cap(path):  # the runs' own quant.byte_cap is the cap (the export once used a constant)
        cfg = real_load(path)
        return cfg.model_copy(update={"quant": cfg.quant.model_copy(update={"byte_cap": 1000})})

    monkeypatch.setattr(sub, "load_config", tight_cap)
    with pytest.raises(
        SubmissionRefused,
        match=r"over the byte cap: code [\d,]+ \+ largest model [\d,]+ = [\d,]+ bytes > 1,000",
    ):
        export(reports, tmp_path / "b")
    monkeypatch.undo()
    manifest_path = records[0].run_dir / "manifest.json"
    m = manifest_path.read_text()
    manifest_path.write_text(m.replace('"status": "completed"', '"status": "failed"'))
    try:
        with pytest.raises(SubmissionRefused, match="has runs that did not complete"):
            export(reports, tmp_path / "c")
    finally:
        manifest_path.write_text(m)
    with pytest.raises(SubmissionRefused, match=r"no completed run of group 'nope'.*tiny/train"):
        export_submission(
            "nope", tmp_path / "d", name="x", author="x", github_id="x", blurb="x", reports_root=reports
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_export_replaces_only_a_folder_pgolf_exported(group_runs, tmp_path, monkeypatch, capsys):
    """--force once deleted the working directory; now a folder without pgolf's marker, the working
    directory, the project, a folder above it and a home directory are refused, and the files survive."""
    from pgolf_core.cli import main

    reports, _ = group_runs
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    with pytest.raises(
        SubmissionRefused, match=r"mine: exists, is not empty and has no submission\.json with gen"
    ):
        export(reports, mine, overwrite=True)
    assert (mine / "precious.txt").read_text() == "keep me"
    for target, why in [(REPO, "the (project root|working directory)"), (REPO.parent, "a folder above the")]:
        with pytest.raises(SubmissionRefused, match=f"refusing to write into {why}"):
            export(reports, target, overwrite=True)
    home = tmp_path / "home"
    home.mkdir()
    (home / "precious.txt").write_text("keep me")
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(SubmissionRefused, match="refusing to write into a home directory"):
        export(reports, home, overwrite=True)
    monkeypatch.chdir(mine)  # `pgolf export G --out . --force` from a folder of one's own
    args = [
        "export",
        "tiny/train",
        "--out",
        ".",
        "--force",
        "--name",
        "x",
        "--author",
        "x",
        "--github-id",
        "x",
        "--blurb",
        "x",
        "--reports",
        str(reports),
    ]
    assert main(args) == 2
    assert "refusing to write into the working directory" in capsys.readouterr().err
    assert (mine / "precious.txt").is_file() and (home / "precious.txt").is_file()
    monkeypatch.chdir(REPO)
    rec = export(reports, tmp_path / "rec").out_dir  # a folder pgolf wrote: replaced with --force only
    assert json.loads((rec / "submission.json").read_text())["generator"] == "pgolf export"
    with pytest.raises(SubmissionRefused, match=r"rec: exists \(written by pgolf\); pass --force"):
        export(reports, rec)
    (rec / "stale.txt").write_text("from an earlier export")
    assert export(reports, rec, overwrite=True).out_dir == rec and not (rec / "stale.txt").exists()
    assert not list(tmp_path.glob(".rec.*")), "no staging folder left behind"
