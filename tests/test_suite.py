"""The papermill runner: validation before launch, run folders, failure statuses, the index."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from pgolf_core.config import ConfigError
from pgolf_core.report.index import build_index
from pgolf_core.suite import run_notebook, run_suite, validate_run
from tests.conftest import REPO

FIXTURE = REPO / "tests/notebooks/fixture.ipynb"
TINY = REPO / "tests/suite/tiny.yaml"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def run(tmp_path: Path, params_file: Path, **kw):
    return run_notebook(
        FIXTURE, params_file, suite="t", reports_root=tmp_path / "reports", log_output=False, **kw
    )


def test_completed_run_writes_every_output(tmp_path):
    rec = run(tmp_path, TINY, overrides={"train.seed": 7})
    assert rec.status == "completed" and rec.error is None
    files = {p.name for p in rec.run_dir.iterdir()}
    assert {
        "executed.ipynb",
        "report.html",
        "manifest.json",
        "stages.json",
        "stages.png",
        "outputs.json",
    } <= files
    html = (rec.run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html, "figures are embedded"
    assert "from pgolf_core.config import load_config" not in html, "code is hidden"
    stages = json.loads((rec.run_dir / "stages.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["pre", "q"] and all(s["verdicts"] for s in stages)
    assert stages[0]["val_bpb"] == 2.5  # the params file's notebook section reached the parameters cell
    m = json.loads((rec.run_dir / "manifest.json").read_text())
    assert m["status"] == "completed" and m["seed"] == 7 and m["params"]["train"]["seed"] == 7
    assert m["notebook_params"] == {"value": 2.5} and m["attn_backend"] == "sdpa"
    assert re.fullmatch(r"[0-9a-f]{40}", m["git"]["commit"]) and isinstance(m["git"]["dirty"], bool)
    assert m["packages"]["torch"] and m["hardware"]["python"] and m["seconds"] > 0
    executed = nbformat.read(rec.run_dir / "executed.ipynb", as_version=4)
    assert executed.metadata.papermill.parameters["run_dir"] == rec.run_dir.as_posix()


@pytest.mark.parametrize(
    "notebook_section, status, error",
    [
        ("fail_at: 1", "failed", "RuntimeError: deliberate failure at step 1"),
        ("sleep_s: 30", "timeout", "CellTimeoutError"),
        ("die: true", "dead_kernel", "DeadKernelError"),
    ],
)
def test_failures_keep_partial_output_and_are_marked(tmp_path, notebook_section, status, error):
    p = params(tmp_path, f"data:\n  source: smoke\nnotebook:\n  {notebook_section}\n")
    rec = run(tmp_path, p, timeout=5 if status == "timeout" else None)
    assert rec.status == status and error in rec.error
    m = json.loads((rec.run_dir / "manifest.json").read_text())
    assert m["status"] == status and error in m["error"]
    nb = nbformat.read(rec.run_dir / "executed.ipynb", as_version=4)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "step 0" in text and (rec.run_dir / "stages.json").is_file(), (
        "cells before the failure kept their output"
    )
    assert (rec.run_dir / "report.html").is_file()
    index = (tmp_path / "reports" / "index.html").read_text()
    assert f"st-{status}" in index and rec.run_id in index


def test_unknown_notebook_parameter_is_refused_before_launch(tmp_path):
    p = params(tmp_path, "notebook:\n  valeu: 3\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown parameter\(s\) \['valeu'\] for fixture\.ipynb; its parameters are: .*value",
    ):
        run(tmp_path, p)
    assert not (tmp_path / "reports").exists(), "nothing was launched"


def test_unknown_config_key_is_refused_before_launch(tmp_path):
    p = params(tmp_path, "model:\n  num_layerz: 3\n")
    with pytest.raises(ConfigError, match="model.num_layerz: unknown key"):
        validate_run(FIXTURE, p)
    with pytest.raises(ConfigError, match="set by the driver"):
        validate_run(FIXTURE, params(tmp_path, "notebook:\n  run_dir: x\n"))


def test_suite_runs_in_order_with_sources_and_groups_seeds(tmp_path):
    records = run_suite(
        REPO / "tests/suite", seeds=[1, 2], reports_root=tmp_path / "reports", log_output=False
    )
    assert [r.status for r in records] == ["completed"] * 4
    assert [r.run_id.split("-", 1)[1] for r in records] == ["first-s1", "second-s1", "first-s2", "second-s2"]
    second = json.loads((records[1].run_dir / "manifest.json").read_text())
    assert second["source_run"] == records[0].run_dir.as_posix() and second["group"] == "suite/second"
    index = json.loads((tmp_path / "reports" / "index.json").read_text())
    groups = {g["group"]: g for g in index["groups"]}
    assert set(groups) == {"suite/first", "suite/second"}
    pre = next(r for r in groups["suite/first"]["rows"] if r["stage"] == "pre")
    assert (
        pre["n"] == 2 and pre["mean"] == 2.5 and pre["std"] == 0.0 and [s for s, _ in pre["seeds"]] == [1, 2]
    )


def test_index_survives_an_unreadable_manifest(tmp_path):
    root = tmp_path / "reports"
    bad = root / "s" / "broken"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text("{not json")
    html = build_index(root).read_text()
    assert "broken" in html and "unreadable" in html
    shutil.rmtree(root)


# --------------------------------------------------------------------------------------------------
# notebook parameters: plain values of the declared type, never code
# --------------------------------------------------------------------------------------------------

#: a value that papermill writes as ``str(tuple)`` between quotes: the quote closes and the call runs
PAYLOAD = "!!pairs [a: \" + str(__import__('pathlib').Path(r'{marker}').touch()) + \"]"


def test_crafted_parameter_would_run_code_and_is_refused(tmp_path):
    """A YAML !!pairs value becomes a list of tuples; papermill's injected cell then calls the payload."""
    from papermill.translators import PythonTranslator

    from pgolf_core.suite import split_params

    marker = tmp_path / "pwned"
    p = params(tmp_path, f"data:\n  source: smoke\nnotebook:\n  value: {PAYLOAD.format(marker=marker)}\n")
    _, nb = split_params(p)
    cell = PythonTranslator.codify(nb)  # what papermill would inject into the parameters cell
    assert "touch()" in cell
    exec(compile(cell, "injected", "exec"), {})  # noqa: S102 - proves the payload is live
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ConfigError, match=r"p\.yaml: notebook\.value\[0\]: got a tuple .*!!pairs"):
        run(tmp_path, p)
    assert not marker.exists() and not (tmp_path / "reports").exists(), "nothing was launched"


@pytest.mark.parametrize(
    "section, message",
    [
        ("value: !!set {a: null}", r"notebook\.value: got a set"),
        ("value: !!binary aGk=", r"notebook\.value: got a bytes"),
        ("value: 2024-01-01", r"notebook\.value: got a date"),
        ("value: {1: x}", r"notebook\.value: key 1 is a int; mapping keys must be strings"),
        ('value: "2.5"', r"notebook\.value: got str '2\.5'; the notebook declares float"),
        ("fail_at: 1.5", r"notebook\.fail_at: got float 1\.5; the notebook declares int"),
        ("die: 1", r"notebook\.die: got int 1; the notebook declares bool"),
        ("value: " + "[" * 40 + "]" * 40, "nested deeper than 16 levels"),
    ],
)
def test_notebook_values_must_be_plain_and_of_the_declared_type(tmp_path, section, message):
    p = params(tmp_path, f"notebook:\n  {section}\n")
    with pytest.raises(ConfigError, match=message):
        validate_run(FIXTURE, p)
    ok = params(tmp_path, "notebook:\n  value: 3\n")
    assert validate_run(FIXTURE, ok)[1] == {"value": 3}  # an int is a valid float


def test_suite_entry_parameters_are_checked_against_the_notebook(tmp_path):
    """nproc: "eight" and stages: [q_bogus] failed only after training; now they are refused up front."""
    nb = REPO / "notebooks/00_train.ipynb"
    train = REPO / "params/smoke/train.yaml"
    with pytest.raises(ConfigError, match=r"suite\.yaml: runs\.t: parameters\.nproc: got str 'eight'; .*int"):
        validate_run(nb, train, parameters={"nproc": "eight"}, parameters_source="suite.yaml: runs.t")
    with pytest.raises(ConfigError, match=r"p\.yaml: notebook\.stages: unknown stage\(s\) \['q_bogus'\]"):
        validate_run(nb, params(tmp_path, f"extends: {train}\nnotebook:\n  stages: [q, q_bogus]\n"))
    with pytest.raises(ConfigError, match=r"notebook\.nproc: got int 0; expected a process count"):
        validate_run(nb, params(tmp_path, f"extends: {train}\nnotebook:\n  nproc: 0\n"))
    suite = tmp_path / "s"
    suite.mkdir()
    bad = "{nproc: !!set {8: }}"
    entry = f"{{name: t, notebook: notebooks/00_train.ipynb, params: {train}, parameters: {bad}}}"
    (suite / "suite.yaml").write_text(f"runs:\n  - {entry}\n")
    with pytest.raises(ConfigError, match=r"suite\.yaml: runs\.t\.parameters\.nproc: got a set"):
        run_suite(suite, reports_root=tmp_path / "reports")
    assert not (tmp_path / "reports").exists()


def test_suite_names_and_run_ids_must_be_plain_names(tmp_path):
    """`pgolf run --suite ../..` wrote outside reports/; suite names, run ids and entry names are
    plain now."""
    reports = tmp_path / "deep" / "reports"
    for kw in ({"suite": "../.."}, {"suite": "/tmp"}, {"run_id": "../escape"}, {"run_id": ".hidden"}):
        with pytest.raises(ConfigError, match="expected a plain name"):
            run_notebook(FIXTURE, TINY, reports_root=reports, log_output=False, **kw)
    assert not (tmp_path / "deep").exists() and not (tmp_path / "escape").exists()
    suite = tmp_path / "s"
    suite.mkdir()
    (suite / "suite.yaml").write_text(f"runs:\n  - {{name: ../x, notebook: {FIXTURE}, params: {TINY}}}\n")
    with pytest.raises(ConfigError, match=r"suite\.yaml: run name '\.\./x': expected a plain name"):
        run_suite(suite, reports_root=reports)


def test_code_files_outside_the_project_are_refused(tmp_path):
    """A quant.code_files glob such as ../x was counted (and exported); it is a config error now."""
    p = params(tmp_path, "quant:\n  code_files: ['../secret/*.py']\n")
    with pytest.raises(
        ConfigError, match=r"p\.yaml: quant\.code_files: '\.\./secret/\*\.py' leaves the project"
    ):
        validate_run(FIXTURE, p)


def test_two_runs_started_in_one_second_get_two_folders(tmp_path, monkeypatch):
    """The run id had one-second resolution: two runs in one second shared a folder (one manifest, mixed
    stages). Now ids carry microseconds and a random suffix and folders are created exclusively."""
    import time

    import papermill

    frozen = time.gmtime(1_800_000_000)
    monkeypatch.setattr(time, "gmtime", lambda t=None: frozen)  # both runs start "in the same second"
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **kw: None)  # no kernel: only the folders
    a = run(tmp_path, TINY, overrides={"train.seed": 1})
    b = run(tmp_path, TINY, overrides={"train.seed": 2})
    assert a.run_dir != b.run_dir and a.run_id.startswith("fixture-tiny-20270115T080000")
    seeds = [json.loads((r.run_dir / "manifest.json").read_text())["seed"] for r in (a, b)]
    assert seeds == [1, 2]


def test_run_folders_are_created_exclusively_with_retry(tmp_path, monkeypatch):
    """Two ids that collide (frozen clock and random suffix) do not share a folder: the second retries."""
    import secrets
    import time

    from pgolf_core.report import runs

    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.25)
    suffixes = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(suffixes))
    first = runs.create_run_dir(tmp_path, lambda: f"x-{runs.stamp()}")
    second = runs.create_run_dir(tmp_path, lambda: f"x-{runs.stamp()}")
    assert first[0] == "x-20270115T080000.250000Z.aaaa" and second[0] == "x-20270115T080000.250000Z.bbbb"
    assert first[1].is_dir() and second[1].is_dir()
    with pytest.raises(ConfigError, match="a run folder of that id exists"):  # an explicit id is never shared
        run_notebook(FIXTURE, TINY, suite=tmp_path.name, reports_root=tmp_path.parent, run_id=first[0])


def test_index_names_a_corrupt_stages_file_and_runs_go_on(tmp_path, fake_papermill):
    """One corrupt stages.json made `pgolf index` crash and every later run exit 1."""
    rec = run(tmp_path, TINY)
    (rec.run_dir / "stages.json").write_text('{"stages": [{"stage": "pre"')  # truncated by a crash
    other = tmp_path / "reports" / "t" / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"run_id": "other", "status": "completed"}))
    (other / "stages.json").write_text(json.dumps({"stages": [{"stage": "pre", "bogus": 1}]}))
    html = build_index(tmp_path / "reports").read_text()
    assert "2 unreadable record(s)" in html
    assert f"t/{rec.run_id}/stages.json: JSONDecodeError" in html and "t/other/stages.json: TypeError" in html
    again = run(tmp_path, TINY)  # a later run completes and rebuilds the index
    assert again.status == "completed"
    index = json.loads((tmp_path / "reports" / "index.json").read_text())
    assert {r["run_id"]: r["status"] for r in index["runs"]} == {
        rec.run_id: "unreadable",
        "other": "unreadable",
        again.run_id: "completed",
    }


# --------------------------------------------------------------------------------------------------
# interruption, reruns, --only (papermill replaced by a recorder: these are about the driver)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_papermill(monkeypatch):
    """Record each execution's parameters; raise what ``fail[name]`` says for an entry's run folder."""
    import papermill

    calls, fail = [], {}

    def execute(notebook, output, parameters, **kw):
        calls.append(parameters)
        for name, exc in fail.items():
            if f"-{name}" in parameters["run_dir"]:
                raise exc
        Path(parameters["run_dir"], "outputs.json").write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    return calls, fail


def test_interrupted_suite_records_every_run_and_resume_continues_it(tmp_path, fake_papermill, capsys):
    """Ctrl-C left manifests "running"; now the interrupted run says so and a rerun says what
    it reuses, continues or redoes."""
    from pgolf_core.suite import RunInterrupted

    calls, fail = fake_papermill
    reports = tmp_path / "reports"
    fail["second"] = KeyboardInterrupt()
    with pytest.raises(RunInterrupted, match=r"second recorded as interrupted; `pgolf suite .* --resume`"):
        run_suite(REPO / "tests/suite", reports_root=reports, log_output=False)
    manifests = {
        p.parent.name.split("-", 1)[1]: json.loads(p.read_text())
        for p in reports.glob("suite/*/manifest.json")
    }
    assert {k: m["status"] for k, m in manifests.items()} == {"first": "completed", "second": "interrupted"}
    assert "interrupted (Ctrl-C or SIGTERM)" in manifests["second"]["error"]
    fail.clear()
    lines = []
    assert run_suite(REPO / "tests/suite", reports_root=reports, dry_run=True, echo=lines.append) == []
    assert lines[0].startswith("redo   first: earlier run ")
    assert lines[0].endswith("(--resume would reuse it)")
    assert "(interrupted); new folder (--resume would continue it)" in lines[1]
    lines.clear()
    calls.clear()
    records = run_suite(REPO / "tests/suite", reports_root=reports, resume=True, echo=lines.append)
    assert lines[0].startswith("reuse  first: completed: ")
    assert lines[1].startswith("resume second: continues ")
    assert [r.reused for r in records] == [True, False] and len(calls) == 1
    assert calls[0]["source_run"] == records[0].run_dir.as_posix()  # reads the reused source
    assert json.loads((records[1].run_dir / "manifest.json").read_text())["status"] == "completed"
    assert len(list(reports.glob("suite/*-second"))) == 1, "resumed in its own folder, no new one"


def test_only_reuses_the_source_run_and_refuses_unknown_entries(tmp_path, fake_papermill):
    """--only second once retrained its source silently; --only with a typo ran nothing and exited 0."""
    calls, _ = fake_papermill
    reports = tmp_path / "reports"
    with pytest.raises(ConfigError, match=r"--only secnd: no such entry; the entries are: first, second"):
        run_suite(REPO / "tests/suite", reports_root=reports, only=["secnd"])
    lines = []
    records = run_suite(REPO / "tests/suite", reports_root=reports, only=["second"], echo=lines.append)
    assert lines[0] == "new    first: source of the selected entries, run first (it has no run yet)"
    assert [r.run_id.split("-", 1)[1] for r in records] == ["first", "second"]
    assert calls[1]["source_run"] == records[0].run_dir.as_posix()
    calls.clear()
    lines.clear()
    again = run_suite(REPO / "tests/suite", reports_root=reports, only=["second"], echo=lines.append)
    assert lines[0] == f"reuse  first: source of the selected entries: {records[0].run_dir} (completed)"
    assert len(calls) == 1 and calls[0]["source_run"] == records[0].run_dir.as_posix()
    assert again[1].run_dir != records[1].run_dir


def test_run_an_analysis_notebook_on_an_existing_run(tmp_path, fake_papermill, capsys):
    """`pgolf run NB PARAMS --source RUN_DIR` passes the run folder; a folder that is not one is refused."""
    from pgolf_core.cli import main

    calls, _ = fake_papermill
    first = run(tmp_path, TINY)
    args = ["run", str(FIXTURE), str(TINY), "--suite", "t", "--reports", str(tmp_path / "reports")]
    assert main([*args, "--source", str(first.run_dir)]) == 0
    assert calls[-1]["source_run"] == str(first.run_dir)
    assert main([*args, "--source", str(tmp_path)]) == 2
    assert "not a report folder (no manifest.json, train/config.yaml)" in capsys.readouterr().err


def test_a_killed_drivers_run_is_settled_as_interrupted(tmp_path, fake_papermill):
    """kill -9 leaves a manifest "running" for ever; the next run (or `pgolf index`) settles it, and a
    run whose driver is alive is never resumed into."""
    import os
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rec = run(tmp_path, TINY)
    path = rec.run_dir / "manifest.json"
    m = json.loads(path.read_text())
    path.write_text(json.dumps({**m, "status": "running", "driver": {**m["driver"], "pid": dead.pid}}))
    build_index(tmp_path / "reports")
    shown = json.loads((tmp_path / "reports" / "index.json").read_text())["runs"][0]
    assert shown["status"] == "interrupted" and f"pid {dead.pid}" in shown["error"]
    run(tmp_path, TINY)  # the next run settles the file itself
    settled = json.loads(path.read_text())
    assert settled["status"] == "interrupted" and "ended without recording a status" in settled["error"]
    live = {**settled, "status": "running", "driver": {**m["driver"], "pid": os.getpid()}}
    path.write_text(json.dumps(live))
    run(tmp_path, TINY)
    assert json.loads(path.read_text())["status"] == "running", "a live driver's run is left alone"
