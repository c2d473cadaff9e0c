"""The four notebooks: committed clean, parameters declared, and the whole suite run under papermill."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from pgolf_core.config import ConfigError, load_config
from pgolf_core.stages import STAGES
from pgolf_core.suite import DRIVER_PARAMS, load_suite, notebook_parameters, run_suite, validate_run
from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
SUITES = sorted(p.parent for p in (REPO / "params").glob("*/suite.yaml"))


def test_there_are_four_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "00_train.ipynb",
        "10_quant_gap.ipynb",
        "20_ttt_ablation.ipynb",
        "30_ngram_cache.ipynb",
        "40_submission.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    """No outputs, execution counts, injected parameters or papermill metadata (nbstripout --verify)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: a cell has outputs"
        assert "injected-parameters" not in cell.metadata.get("tags", [])
        assert "papermill" not in cell.metadata and "execution" not in cell.metadata
    assert "papermill" not in nb.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_one_parameters_cell_with_the_driver_parameters(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    declared = notebook_parameters(path)
    assert set(DRIVER_PARAMS) <= set(declared)
    default = declared["params_file"]["default"].strip("\"'")
    load_config(REPO / default)  # the defaults are a runnable smoke configuration


@pytest.mark.parametrize("suite", SUITES, ids=lambda p: p.name)
def test_every_suite_entry_validates_before_launch(suite, monkeypatch):
    """Each suite's params pass the config schema and the notebooks' parameter cells (incl. sweeps)."""
    monkeypatch.chdir(REPO)
    spec = load_suite(suite)
    for entry in spec.runs:
        validate_run(entry.notebook, suite / entry.params, parameters=entry.parameters)


def test_a_bad_sweep_variant_is_refused_before_launch(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    p = tmp_path / "p.yaml"
    p.write_text(
        f"extends: {REPO / 'params/smoke/train.yaml'}\nnotebook:\n  schemes:\n"
        "    - {name: x, quant: {attn: {bitz: 6}}}\n"
    )
    with pytest.raises(
        ConfigError, match=r"(?s)notebook\.schemes\[0\] \('x'\).*quant\.attn\.bitz: unknown key"
    ):
        validate_run(REPO / "notebooks/10_quant_gap.ipynb", p)


FAST = """
data: {{source: local, root: {root}, tokenizer: {root}/tokenizer.model, val_max_tokens: 2048}}
model: {{num_layers: 2, model_dim: 64, num_heads: 4, num_kv_heads: 2}}
train: {{iterations: 16, train_batch_tokens: 2048, train_seq_len: 128, grad_accum_steps: 1, warmup_steps: 0,
        warmdown_iters: 6, max_wallclock_seconds: 0, val_loss_every: 8, train_log_every: 4, ema_decay: 0.9,
        device: cpu, progress: false}}
eval: {{batch_tokens: 4096, stride: 64, probe_tokens: 512}}
quant: {{scheme: groups, keep_float_max_numel: 1024, attn: {{bits: 6}}, mlp: {{bits: 6}}, calib_batches: 2}}
ttt: {{chunk_tokens: 512, epochs: 1, lora_chunk_tokens: 64, lora_window: 128, phased_prefix_docs: 2,
      prequant_epochs: 1}}
ngram: {{table_rows: 512}}
"""


# The smoke suite's frontier entry on the fast shape: varlen, a window on layer 0, the key offset on 1,
# AsymLogit, progressive context (64 then 128 tokens), the tilt stage and the per-group compressor; no
# EMA, no sliding window, no TTT.
FRONTIER = """extends: train.yaml
model: {logit_softcap_asym: true, rotary: {dims: 8},
        attention: {window: {size: 33, layers: [0]}, key_offset: {enabled: true, layers: [1]},
                    varlen: {enabled: true, max_doc_len: 64}}}
train: {ema_decay: 0.0, seq_schedule_mode: steps, seq_change_warmup_steps: 2,
        seq_schedule: [{seq_len: 64, until: 0.5}, {seq_len: 128, until: 1.0}]}
eval: {stride: 0, tilt: {enabled: true}}
quant: {compressor: pergroup}
"""


@pytest.fixture(scope="module")
def fast_suite(smoke_dir, smoke_caseops_dir, tmp_path_factory):
    """The smoke suite's notebooks with tiny params: every notebook, under a minute or two."""
    root = tmp_path_factory.mktemp("fast")
    suite = root / "fast"
    suite.mkdir()
    (suite / "train.yaml").write_text(FAST.format(root=smoke_dir))
    caseops = FAST.format(root=smoke_caseops_dir).replace("2048}", "2048, caseops: true}", 1)
    (suite / "train_caseops.yaml").write_text(caseops)
    (suite / "train_frontier.yaml").write_text(FRONTIER)
    (suite / "quant_gap.yaml").write_text(
        "extends: train.yaml\nnotebook:\n  schemes:\n"
        "    - {name: base, quant: {scheme: baseline_int8}}\n"
        "    - {name: int6 gptq, quant: {scheme: groups, mlp: {bits: 6, gptq: true}}}\n"
    )
    (suite / "ttt_ablation.yaml").write_text(
        "extends: train.yaml\nnotebook:\n  variants:\n"
        "    - {name: no TTT, ttt: {enabled: false}}\n"
        "    - {name: chunk SGD, ttt: {enabled: true, mode: chunk}}\n"
        "    - {name: pre-quant (NON-COMPLIANT), ttt: {prequant_ablation: true}}\n"
    )
    (suite / "ngram_cache.yaml").write_text(
        "extends: train.yaml\nnotebook:\n  settings:\n"
        "    - {name: fixed, ngram: {max_order: 3, alpha_rule: fixed}}\n"
        "    - {name: hedge, ngram: {max_order: 3, alpha_rule: hedge}}\n"
    )
    (suite / "submission.yaml").write_text(
        f"extends: train.yaml\nnotebook:\n  sota_bpb: 9.0\n  out_dir: {root / 'record'}\n"
    )
    spec = (REPO / "params/smoke/suite.yaml").read_text()
    (suite / "suite.yaml").write_text(spec)
    reports = root / "reports"
    cwd = Path.cwd()
    try:
        import os

        os.chdir(REPO)
        records = run_suite(suite, reports_root=reports, log_output=False)
    finally:
        os.chdir(cwd)
    return records, reports


def test_fast_suite_every_notebook_completes_with_reports(fast_suite):
    records, reports = fast_suite
    assert [r.status for r in records] == ["completed"] * 7, [r.error for r in records]
    for r in records:
        files = {p.name for p in r.run_dir.iterdir()}
        assert {"executed.ipynb", "report.html", "manifest.json", "stages.json", "outputs.json"} <= files
        html = (r.run_dir / "report.html").read_text()
        pngs = [p for p in r.run_dir.iterdir() if p.suffix == ".png"]
        assert len(pngs) >= (1 if r.run_id.endswith("submission") else 2), r.run_id
        assert html.count("data:image/png;base64,") >= len(pngs), f"{r.run_id}: every figure is embedded"
        manifest = json.loads((r.run_dir / "manifest.json").read_text())
        assert manifest["status"] == "completed" and manifest["attn_backend"] == "sdpa"
        assert manifest["outputs"]["train_seconds"] > 0
    index = (reports / "index.html").read_text()
    assert all(r.run_id in index for r in records) and "report.html" in index


def test_fast_suite_training_report_has_every_stage_with_verdicts(fast_suite):
    records, _ = fast_suite
    stages = json.loads((records[0].run_dir / "stages.json").read_text())
    names = [s["stage"] for s in stages["stages"]]
    assert names == ["pre", "ema", "q", "q_sw"] and set(names) <= set(STAGES)
    for s in stages["stages"]:
        checks = {v["check"] for v in s["verdicts"]}
        assert {"T1", "T1b", "T2", "T3", "T4", "T5", "T4 full", "T9", "T10", "T6"} <= checks, (
            s["stage"],
            checks,
        )
        assert s["compliant"]
    assert {"T7", "T6 quant"} <= {v["check"] for v in stages["stages"][2]["verdicts"]}
    assert stages["artifact"]["total_bytes"] == stages["stages"][2]["artifact_bytes"]
    assert (records[0].run_dir / "artifact.bin").is_file()


def test_fast_suite_ablation_marks_the_pre_quant_ttt_non_compliant(fast_suite):
    records, _ = fast_suite
    ttt = json.loads((records[2].run_dir / "stages.json").read_text())["stages"]
    verdicts = {s["stage"]: s for s in ttt}
    assert verdicts["no TTT"]["compliant"] and verdicts["chunk SGD"]["compliant"]
    cheat = verdicts["pre-quant (NON-COMPLIANT)"]
    failed = {v["check"] for v in cheat["verdicts"] if v["passed"] is False}
    assert not cheat["compliant"] and {"T1", "T5"} <= failed and "NON-COMPLIANT" in cheat["notes"]
    html = (records[2].run_dir / "report.html").read_text()
    assert "NON-COMPLIANT" in html


def test_fast_suite_ngram_and_quant_records(fast_suite):
    records, _ = fast_suite
    quant = json.loads((records[1].run_dir / "stages.json").read_text())["stages"]
    assert [s["stage"] for s in quant] == ["q[base]", "q[int6 gptq]"]
    assert all(any(v["check"] == "T7" and v["passed"] for v in s["verdicts"]) for s in quant)
    ngram = json.loads((records[3].run_dir / "stages.json").read_text())["stages"]
    assert [s["stage"] for s in ngram] == ["model only", "fixed", "hedge"]
    for s in ngram:
        t2 = next(v for v in s["verdicts"] if v["check"] == "T2")
        assert t2["passed"] and t2["measured"] <= 1e-6


def test_fast_suite_submission_notebook_tests_and_exports(fast_suite):
    records, _ = fast_suite
    out = json.loads((records[4].run_dir / "outputs.json").read_text())
    assert "a t-test needs at least 2 seeds" in out["significance"]  # the suite ran one seed
    assert out["export"].startswith("wrote ") and "files" in out["export"]
    folder = Path(out["export"].split()[1])
    assert json.loads((folder / "submission.json").read_text())["seeds"] == [1337]
    stages = json.loads((records[4].run_dir / "stages.json").read_text())
    assert [s["stage"] for s in stages["stages"]] == ["q_sw seed 1337"] and stages["group"] == "fast/train"


def test_fast_suite_caseops_training_scores_over_the_original_bytes(fast_suite, smoke_caseops_dir):
    """The CaseOps entry trains and evaluates end to end; every stage divides by the sidecar (the
    original text's bytes), the plain run's by the byte tables; the manifest records data.caseops."""
    from pgolf_core.data.loader import load_validation_bytes
    from pgolf_core.data.shards import list_shards

    records, _ = fast_suite
    run = records[5]
    assert run.run_id.endswith("train_caseops") and run.status == "completed"
    manifest = json.loads((run.run_dir / "manifest.json").read_text())
    assert manifest["params"]["data"]["caseops"] is True
    plain_manifest = json.loads((records[0].run_dir / "manifest.json").read_text())
    assert plain_manifest["params"]["data"]["caseops"] is False
    stages = json.loads((run.run_dir / "stages.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["pre", "ema", "q", "q_sw"]
    side = load_validation_bytes(list_shards(smoke_caseops_dir / "fineweb_val_*.bin"), 128, 2048)
    for s in stages:
        assert s["bytes_source"] == "sidecar" and s["tokens"] == 2048 and s["bytes"] == int(side[1:].sum())
        # T10 recounts decoded text, which for CaseOps still holds the markers: the CaseOps recount
        # (original text) belongs to the T10 verdict; every other check passes
        assert {v["check"] for v in s["verdicts"] if v["passed"] is False} <= {"T10"}, s["stage"]
    plain = json.loads((records[0].run_dir / "stages.json").read_text())["stages"]
    assert {s["bytes_source"] for s in plain} == {"luts"}


def test_fast_suite_frontier_training_tilts_and_packs_per_group(fast_suite):
    """The frontier entry trains with varlen, windows, the key offset, AsymLogit and a length schedule,
    packs the artifact per group and scores q_tilt (q's windows plus the tilt) with every check passing."""
    records, _ = fast_suite
    run = records[6]
    assert run.run_id.endswith("train_frontier") and run.status == "completed"
    model = json.loads((run.run_dir / "manifest.json").read_text())["params"]["model"]
    assert model["logit_softcap_asym"] and model["attention"]["varlen"]["enabled"]
    assert model["attention"]["key_offset"]["layers"] == [1]
    log = (run.run_dir / "train" / "train.log").read_text()
    # 16 steps, thresholds inclusive: progress 8/16 = 0.5 is still the first stage, 9/16 the second
    assert "step:9 seq_len 64 -> 128 (progress 0.562)" in log, log
    out = json.loads((run.run_dir / "stages.json").read_text())
    stages = {s["stage"]: s for s in out["stages"]}
    assert list(stages) == ["pre", "q", "q_tilt"]
    assert out["artifact"]["compressor"].startswith("pergroup")
    assert all(s["compliant"] for s in stages.values())
    assert {"T1", "T1b", "T2", "T5"} <= {v["check"] for v in stages["q_tilt"]["verdicts"] if v["passed"]}
    assert stages["q_tilt"]["tokens"] == stages["q"]["tokens"] == 2048
    # the smoke validation text repeats itself: some 16-token contexts recur (21 of the first 2,048
    # targets are gated), and a hint that is right lowers their loss by up to beta = 2.625 nats
    gated = int(re.search(r"([\d,]+) of 2,048 targets tilted", stages["q_tilt"]["notes"])[1].replace(",", ""))
    assert gated > 0 and stages["q_tilt"]["val_bpb"] < stages["q"]["val_bpb"]
