"""Run comparison: curves of several runs in one figure, per-stage deltas to a reference run, seed
statistics per configuration, the index's comparison section, and one-line errors for bad run folders.

The fake report folders carry real numbers: config A (group t/baseline) over seeds 1 and 2, config B
(group t/wider) with seed 1; the expected deltas and statistics are worked out by hand below.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pgolf_core.cli import main
from pgolf_core.report.compare import CompareError, compare_data, read_run, resolve_run
from pgolf_core.report.compare_page import curves_figure, write_compare
from pgolf_core.report.index import build_index, group_deltas
from pgolf_core.stages import StageRecord, Verdict, write_stages

A1 = {"pre": 2.30, "q": 2.32, "q_sw": 2.29}
A2 = {"pre": 2.34, "q": 2.36, "q_sw": 2.33}
B1 = {"pre": 2.25, "q": 2.28, "q_ttt": 2.20}


def make_run(
    root: Path,
    run_id: str,
    group: str,
    seed: int,
    bpb: dict[str, float],
    *,
    suite: str = "t",
    speed: float = 1.0,
    failing: dict[str, str] | None = None,
    extra: dict[str, float] | None = None,
    steps: int = 200,
    val_every: int | None = None,
    tau: float = 0.2,
) -> Path:
    """reports/<suite>/<run_id>/ with a manifest, stages.json (bpb per stage; ``failing``: stage ->
    the check it fails) and train/metrics.jsonl: a train log every 10 steps, validation every 50.
    ``speed``: seconds per step (wallclock differs between configurations); the curves fall towards the
    run's pre bpb with time constant ``tau * steps``."""
    run_dir = root / suite / run_id
    (run_dir / "train").mkdir(parents=True)
    manifest = {
        "run_id": run_id,
        "suite": suite,
        "group": group,
        "seed": seed,
        "status": "completed",
        "notebook": "notebooks/00_train.ipynb",
        "started_utc": f"2026-01-01T00:00:{seed:02d}Z",
        "source_run": "",
        "attn_backend": "sdpa",
        "outputs": {
            "train_seconds": steps * speed,
            "eval_seconds": 41.5,
            "artifact_bytes": 15_812_345,
            "steps": steps,
        },
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    records = []
    for stage, value in {**bpb, **(extra or {})}.items():
        verdicts = [
            Verdict("T4 full", True, "every target scored once"),
            Verdict("T8 eval", None, "time limit defined on 8xH100 SXM, not checked here"),
        ]
        if failing and stage in failing:
            verdicts.append(Verdict(failing[stage], False, f"{failing[stage]} failed in this fake run"))
        records.append(
            StageRecord(
                stage,
                value,
                value * 1.6,
                32768,
                78957,
                1.0,
                verdicts=verdicts,
                notes="an ablation stage with a long explanation " * 3 if extra else "",
            )
        )
    write_stages(run_dir / "stages.json", records)
    lines, final = [], bpb.get("pre", 2.3)
    for step in range(0, steps + 1, 10):
        if step:
            loss = 1.6 * final + 4.0 * math.exp(-step / (steps * tau)) + 0.01 * (seed % 7)
            lines.append(
                {
                    "event": "train",
                    "step": step,
                    "train_loss": loss,
                    "lr_mult": 1.0,
                    "tokens": step * 8192,
                    "train_time_s": step * speed,
                }
            )
        if step % (val_every or steps // 4) == 0:
            val = final + 2.0 * math.exp(-step / (steps * tau))
            lines.append(
                {
                    "event": "val",
                    "step": step,
                    "val_loss": val * 1.6,
                    "val_bpb": val,
                    "train_time_s": step * speed,
                    "eval_s": 0.5,
                }
            )
    (run_dir / "train" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return run_dir


def make_three(root: Path) -> list[Path]:
    return [
        make_run(root, "a-s1", "t/baseline", 1, A1),
        make_run(root, "a-s2", "t/baseline", 2, A2),
        make_run(root, "b-s1", "t/wider", 1, B1, speed=1.5, failing={"q_ttt": "T5"}),
    ]


def _rows(data, stage):
    return {row["run"]: row for row in next(s for s in data["stages"] if s["stage"] == stage)["rows"]}


def test_deltas_to_the_first_run_and_seed_statistics(tmp_path):
    root = tmp_path / "reports"
    make_three(root)
    runs = [read_run(s, root) for s in ("t/a-s1", "t/a-s2", "t/b-s1")]
    data = compare_data(runs)
    assert data["reference"] == "t/baseline seed 1" and data["reference_group"] == "t/baseline"
    assert [s["stage"] for s in data["stages"]] == ["pre", "q", "q_sw", "q_ttt"]  # standard order
    pre = _rows(data, "pre")
    assert pre["t/baseline seed 1"]["delta"] == 0 and pre["t/baseline seed 1"]["is_reference"]
    assert pre["t/baseline seed 2"]["delta"] == pytest.approx(0.04)
    assert pre["t/wider seed 1"]["delta"] == pytest.approx(-0.05)
    q_sw, q_ttt = _rows(data, "q_sw"), _rows(data, "q_ttt")
    assert set(q_sw) == {"t/baseline seed 1", "t/baseline seed 2"}  # B has no q_sw
    ttt = q_ttt["t/wider seed 1"]
    assert ttt["delta"] is None and not ttt["compliant"] and ttt["failed"] == ["T5"]  # reference lacks q_ttt

    groups = {g["group"]: {r["stage"]: r for r in g["rows"]} for g in data["groups"]}
    a, b = groups["t/baseline"], groups["t/wider"]
    assert a["pre"]["n"] == 2 and a["pre"]["mean"] == pytest.approx(2.32)
    assert a["pre"]["std"] == pytest.approx(math.sqrt(((2.30 - 2.32) ** 2 + (2.34 - 2.32) ** 2) / 1))
    assert a["pre"]["delta"] == 0 and a["pre"]["se"] is None  # the reference itself
    assert b["pre"]["n"] == 1 and b["pre"]["std"] is None
    assert b["pre"]["delta"] == pytest.approx(2.25 - 2.32) and b["pre"]["se"] is None  # one seed: no se
    assert b["q"]["delta"] == pytest.approx(2.28 - 2.34)
    assert "q_ttt" in b and b["q_ttt"]["delta"] is None and not b["q_ttt"]["compliant"]


def test_reference_run_and_group_standard_error(tmp_path):
    root = tmp_path / "reports"
    make_three(root)
    # --reference not among the runs: it is read and compared too, first
    _, data = write_compare(["t/a-s1", "t/a-s2"], tmp_path / "c.html", reference="t/b-s1", reports_root=root)
    assert [r["label"] for r in data["runs"]] == ["t/wider seed 1", "t/baseline seed 1", "t/baseline seed 2"]
    pre = _rows(data, "pre")
    assert pre["t/baseline seed 1"]["delta"] == pytest.approx(0.05)
    assert pre["t/baseline seed 2"]["delta"] == pytest.approx(0.09)
    groups = {g["group"]: g for g in data["groups"]}
    assert groups["t/wider"]["is_reference"] and not groups["t/baseline"]["is_reference"]
    # a second seed of B: the difference of means gets its standard error sqrt(sA^2/nA + sB^2/nB)
    make_run(root, "b-s2", "t/wider", 2, {"pre": 2.27, "q": 2.30, "q_ttt": 2.22})
    runs = [read_run(s, root) for s in ("t/a-s1", "t/a-s2", "t/b-s1", "t/b-s2")]
    wider = next(g for g in compare_data(runs)["groups"] if g["group"] == "t/wider")
    b = {r["stage"]: r for r in wider["rows"]}
    s_a, s_b = math.sqrt(2 * 0.02**2), math.sqrt(2 * 0.01**2)  # sample stds of (2.30, 2.34), (2.25, 2.27)
    assert b["pre"]["mean"] == pytest.approx(2.26) and b["pre"]["delta"] == pytest.approx(2.26 - 2.32)
    assert b["pre"]["se"] == pytest.approx(math.sqrt(s_a**2 / 2 + s_b**2 / 2))


def test_group_deltas_without_the_reference_group():
    groups = [
        {
            "group": "x",
            "runs": 1,
            "rows": [
                {"stage": "pre", "n": 1, "mean": 2.0, "std": None, "seeds": [(1, 2.0)], "compliant": True}
            ],
        }
    ]
    row = group_deltas(groups, "absent")[0]["rows"][0]
    assert row["delta"] is None and row["se"] is None and row["ref_compliant"] is None


def test_curve_figure_holds_every_run_in_each_panel(tmp_path):
    root = tmp_path / "reports"
    make_three(root)
    runs = [read_run(s, root) for s in ("t/a-s1", "t/a-s2", "t/b-s1")]
    data = compare_data(runs)
    fig = curves_figure(data["runs"])
    labels = ["t/baseline seed 1", "t/baseline seed 2", "t/wider seed 1"]
    axes = fig.axes
    assert len(axes) == 4
    for ax in axes:
        assert [ln.get_label() for ln in ax.get_lines()] == labels
    # bottom right: val bpb against seconds; B takes 1.5 s per step, so its last point is at 300 s
    val_seconds = {ln.get_label(): ln for ln in axes[3].get_lines()}
    assert val_seconds["t/wider seed 1"].get_xdata()[-1] == pytest.approx(300.0)
    assert val_seconds["t/baseline seed 1"].get_xdata()[-1] == pytest.approx(200.0)
    assert list(axes[2].get_lines()[0].get_xdata()) == [0, 50, 100, 150, 200]  # val bpb per step
    # same colour within a group, another line style per seed, another colour for B
    a1, a2, b1 = axes[0].get_lines()
    assert a1.get_color() == a2.get_color() != b1.get_color() and a1.get_linestyle() != a2.get_linestyle()
    # the y range fits the points after the first tenth of the steps (10 + 0.1 * 190): from step 30 on
    loss = {m["step"]: m["train_loss"] for m in data["runs"][0]["metrics"] if m["event"] == "train"}
    assert loss[30] <= axes[0].get_ylim()[1] < loss[20] and "train loss (nats/token) vs step" in fig.clipped


def test_cli_writes_one_self_contained_page_and_its_data(tmp_path, capsys):
    root = tmp_path / "reports"
    dirs = make_three(root)
    out = tmp_path / "cmp" / "report.html"
    assert main(["compare", str(dirs[0]), "t/a-s2", "t/b-s1", "--out", str(out), "--reports", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "reference  t/baseline seed 1" in printed and printed.strip().endswith(str(out))
    html = out.read_text()
    assert html.count("data:image/png;base64,") == 1 and "<script" not in html and 'src="http' not in html
    assert "&minus;0.05000" in html or "\u22120.05000" in html  # B's pre delta
    assert "<span>NON-COMPLIANT:</span> T5</span>" in html and "reference has no q_ttt" in html
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["page"] == "report.html" and side["runs"][0]["label"] == "t/baseline seed 1"
    assert [g["group"] for g in side["groups"]] == ["t/baseline", "t/wider"]


def test_default_output_goes_under_the_reports_root_and_the_index_links_it(tmp_path, capsys):
    root = tmp_path / "reports"
    make_three(root)
    assert main(["compare", "t/a-s1", "t/b-s1", "--reports", str(root)]) == 0
    page = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert page.parent == root / "_compare" and page.is_file()
    index = (root / "index.html").read_text()
    assert f'href="_compare/{page.name}"' in index


def test_index_compares_configurations_to_the_baseline(tmp_path):
    root = tmp_path / "reports"
    make_three(root)
    make_run(root, "other-s1", "u/only", 1, {"pre": 3.0}, suite="u")  # one configuration: nothing to compare
    make_run(
        root,
        "ablation",
        "t/ablation",
        1,
        {},
        extra={"no TTT": 2.31, "pre-quant TTT": 2.1},
        failing={"pre-quant TTT": "T1"},
    )  # no standard stage: not in the comparison
    html = build_index(root).read_text()
    section = html[html.index("<h2>Comparison</h2>") : html.index("<h2>Configurations")]
    assert "suite t: &Delta; to t/baseline" in section
    assert "suite u" not in section and "t/ablation" not in section
    assert "\u22120.07000" in section  # B's pre mean 2.25 vs A's 2.32
    assert "pgolf compare t/a-s1 t/a-s2 t/b-s1 --out " in section  # the baseline first: the reference
    runs = html[html.index("<h2>Runs</h2>") :]
    assert "<th>q_ngram</th>" not in runs and "<th>q_ttt</th>" in runs  # only stages some run has
    assert '2 further stage(s),\n<span class="bad">1 NON-COMPLIANT: pre-quant TTT</span>' in runs
    assert "an ablation stage with a long explanation " * 3 in runs  # notes in full, not cut at 90


def test_one_line_errors_for_bad_run_folders(tmp_path, capsys):
    root = tmp_path / "reports"
    dirs = make_three(root)

    def error(*argv) -> str:
        assert main(["compare", *argv, "--reports", str(root), "--out", str(tmp_path / "x.html")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("pgolf: error: ")
        return err

    assert "run 't/nope': no run folder at t/nope or " in error("t/a-s1", "t/nope")
    (root / "t" / "empty").mkdir()
    assert "empty: not a report run folder (no manifest.json)" in error("t/empty")
    (dirs[1] / "manifest.json").write_text("{truncated")
    assert "a-s2/manifest.json: JSONDecodeError" in error("t/a-s1", "t/a-s2")
    (dirs[2] / "stages.json").write_text('{"stages": [{"stage": "pre"}]}')
    assert "b-s1/stages.json: TypeError" in error("t/b-s1")
    metrics = dirs[0] / "train" / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good.replace("\n", "\nnot json\n", 1))
    assert "metrics.jsonl line 2: not a JSON object" in error("t/a-s1")
    with pytest.raises(CompareError, match=r"x\.png: expected a file name ending in \.html"):
        write_compare(["t/a-s1"], tmp_path / "x.png", reports_root=root)


def test_a_truncated_last_metrics_line_is_left_out_and_noted(tmp_path):
    root = tmp_path / "reports"
    run_dir = make_three(root)[0]
    metrics = run_dir / "train" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"event": "train", "st')  # killed mid-write
    run = read_run("t/a-s1", root)
    assert run["metrics_note"] == "metrics.jsonl line 26 is truncated and left out"
    assert len(run["metrics"]) == 25


def test_an_analysis_run_shows_its_source_runs_curves(tmp_path):
    root = tmp_path / "reports"
    src = make_three(root)[0]
    ana = root / "t" / "ttt"
    ana.mkdir()
    manifest = {
        "run_id": "ttt",
        "suite": "t",
        "group": "t/ttt",
        "seed": 1,
        "status": "completed",
        "source_run": f"reports/t/{src.name}",
    }  # as the driver writes it: relative to the repo
    (ana / "manifest.json").write_text(json.dumps(manifest))
    run = read_run(str(ana), root)
    assert run["metrics_file"] == src / "train" / "metrics.jsonl" and len(run["metrics"]) == 25
    assert run["metrics_note"] == f"curves of its source run {src.name}"
    assert resolve_run(str(ana), root) == ana


def test_index_marks_caseops_runs_and_their_byte_source(tmp_path):
    root = tmp_path / "reports"
    plain = make_run(root, "plain-s1", "t/plain", 1, {"pre": 2.5})
    cased = make_run(root, "caseops-s1", "t/caseops", 1, {"pre": 2.4})
    for run_dir, caseops in ((plain, False), (cased, True)):
        manifest = json.loads((run_dir / "manifest.json").read_text())
        manifest["params"] = {"data": {"caseops": caseops}}
        (run_dir / "manifest.json").write_text(json.dumps(manifest))
    html = build_index(root).read_text()
    rows = {rid: html[html.index(f"t/{rid}</span>") :][:900] for rid in ("plain-s1", "caseops-s1")}
    assert "CaseOps" in rows["caseops-s1"] and "CaseOps" not in rows["plain-s1"]
    assert "bpb over the original bytes" in rows["caseops-s1"]
