"""The `pgolf` command: help, the smoke build, dataset checks, config commands, clear failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pgolf_core.cli import main
from pgolf_core.data.shards import write_shard
from tests.conftest import REPO


def run(args: list[str]) -> subprocess.CompletedProcess:
    """Run the installed console script (falls back to the module when not installed)."""
    script = Path(sys.executable).with_name("pgolf")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "pgolf_core.cli"]
    return subprocess.run(cmd + args, check=False, capture_output=True, text=True, cwd=REPO, timeout=300)


def test_help_lists_subcommands():
    out = run(["--help"])
    assert out.returncode == 0 and all(g in out.stdout for g in ("data", "train", "config"))
    out = run(["data", "--help"])
    assert out.returncode == 0 and all(c in out.stdout for c in ("smoke", "export", "fetch", "info"))


def test_data_smoke_builds_and_reports_numbers(tmp_path, capsys):
    out = tmp_path / "smoke"
    assert main(["data", "smoke", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "NOT FineWeb" in text and "bytes/token" in text and "documents" in text
    assert (out / "manifest.json").is_file() and (out / "tokenizer.model").is_file()
    assert main(["data", "smoke", "--out", str(out)]) == 0  # a second call reports, does not rebuild
    assert "already built" in capsys.readouterr().out


def test_data_info_checks_headers(smoke_dir, tmp_path, capsys):
    assert main(["data", "info", str(smoke_dir)]) == 0
    assert "headers and sizes OK" in capsys.readouterr().out
    bad = tmp_path / "bad"
    write_shard(bad / "fineweb_val_000000.bin", [1, 2, 3])
    (bad / "fineweb_val_000000.bin").write_bytes((bad / "fineweb_val_000000.bin").read_bytes()[:-1])
    assert main(["data", "info", str(bad)]) == 2
    assert "fineweb_val_000000.bin: truncated" in capsys.readouterr().err


def test_data_export_trains_a_tokenizer_from_jsonl(tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(f'{{"text": "Line {i}: the quick brown fox jumps over the lazy dog."}}\n' for i in range(60))
    )
    out = tmp_path / "ds"
    assert (
        main(
            [
                "data",
                "export",
                str(docs),
                "--out",
                str(out),
                "--val-docs",
                "5",
                "--vocab-size",
                "300",
                "--quiet",
            ]
        )
        == 0
    )
    assert "val" in capsys.readouterr().out and (out / "tokenizer.model").is_file()
    assert (
        main(["data", "export", str(docs), "--out", str(out), "--val-docs", "5", "--vocab-size", "300"]) == 2
    )
    assert "already exists" in capsys.readouterr().err


def test_config_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["config", "show", "params/smoke/train.yaml", "--set", "model.num_layers=3"]) == 0
    assert "num_layers: 3" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  iterationz: 5\n")
    assert main(["config", "check", "params/smoke/train.yaml", str(bad)]) == 1
    captured = capsys.readouterr()
    assert "ok   params/smoke/train.yaml" in captured.out and "train.iterationz: unknown key" in captured.err
    assert main(["config", "keys"]) == 0
    assert "model.num_layers" in capsys.readouterr().out


def test_train_rejects_a_bad_config_before_launching(tmp_path, capsys):
    assert main(["train", "params/h100x8/baseline.yaml", "--set", "model.num_layrs=3"]) == 2
    assert "model.num_layrs: unknown key (did you mean 'model.num_layers'?)" in capsys.readouterr().err


def test_config_check_reports_crafted_and_mistyped_notebook_values(tmp_path, capsys, monkeypatch):
    """`config check` validates the notebook section too, and each suite entry against its notebook."""
    monkeypatch.chdir(REPO)
    crafted = tmp_path / "crafted.yaml"
    crafted.write_text('notebook:\n  nproc: !!pairs [a: " + str(1) + "]\n')
    assert main(["config", "check", str(crafted)]) == 1
    assert "crafted.yaml: notebook.nproc[0]: got a tuple" in capsys.readouterr().err
    suite = tmp_path / "s"
    suite.mkdir()
    train = REPO / "params/smoke/train.yaml"
    (suite / "train.yaml").write_text(f"extends: {train}\nnotebook:\n  nproc: eight\n")
    entry = "{name: t, notebook: notebooks/00_train.ipynb, params: train.yaml}"
    (suite / "suite.yaml").write_text(f"runs:\n  - {entry}\n")
    assert main(["config", "check", str(suite / "train.yaml")]) == 1
    assert "train.yaml: notebook.nproc: got str 'eight'" in capsys.readouterr().err
    assert main(["config", "check", str(suite)]) == 1
    assert "notebook.nproc: got str 'eight'" in capsys.readouterr().err
    assert main(["config", "check", "params/smoke"]) == 0
    assert "ok   suite params/smoke: 7 entries" in capsys.readouterr().out


def test_ctrl_c_during_a_suite_records_the_run_and_prints_one_line(tmp_path):
    """SIGINT to `pgolf suite` while a notebook runs: the manifest stayed "running" and a traceback was
    printed; now exit 130, one line, the manifest ends `interrupted` with the reason, and a --dry-run
    rerun says --resume would continue it."""
    import json
    import signal
    import time

    suite = tmp_path / "s"
    suite.mkdir()
    fixture, tiny = REPO / "tests/notebooks/fixture.ipynb", REPO / "tests/suite/tiny.yaml"
    (suite / "suite.yaml").write_text(
        f"runs:\n  - {{name: slow, notebook: {fixture}, params: {tiny}, parameters: {{sleep_s: 60.0}}}}\n"
    )
    reports = tmp_path / "reports"
    script = Path(sys.executable).with_name("pgolf")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "pgolf_core.cli"]
    proc = subprocess.Popen(
        [*cmd, "suite", str(suite), "--reports", str(reports)],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    executed = None
    while time.time() < deadline:  # wait until the cells before the sleeping one have run
        found = list(reports.glob("s/*/executed.ipynb"))
        if found and "step 2" in found[0].read_text():
            executed = found[0]
            break
        time.sleep(0.2)
    assert executed is not None, "the notebook never reached its last cell"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    # (the kernel, shut down mid-cell, may log its own socket error: pgolf prints one line, last)
    assert "pgolf_core" not in err and "KeyboardInterrupt" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("pgolf: interrupted: ") and "--resume" in lines[-1]
    assert sum(ln.startswith("pgolf:") for ln in lines) == 1
    m = json.loads((executed.parent / "manifest.json").read_text())
    assert m["status"] == "interrupted" and "Ctrl-C" in m["error"] and m["finished_utc"]
    again = run(["suite", str(suite), "--reports", str(reports), "--dry-run"])
    assert again.returncode == 0 and "(interrupted); new folder (--resume would continue it)" in again.stdout


def test_errors_are_one_line_unless_debug(monkeypatch, capsys):
    """Known errors: `pgolf: error: ...` (2); unknown ones: one line naming the type (1); --debug raises."""
    from pgolf_core import cli
    from pgolf_core.errors import PgolfError

    def boom(exc):
        def fn(args):
            raise exc

        return fn

    cases = [
        (PgolfError("x.yaml: train.lr: expected a float"), 2, "pgolf: error: x.yaml: train.lr"),
        (OSError(28, "No space left on device"), 2, "pgolf: error: [Errno 28] No space"),
        (RuntimeError("bug"), 1, "pgolf: internal error: RuntimeError: bug (rerun with --debug"),
    ]
    for exc, code, text in cases:
        monkeypatch.setattr(cli, "_cmd_index", boom(exc))
        assert main(["index"]) == code
        err = capsys.readouterr().err
        assert err.startswith(text) and err.count("\n") == 1, err
    with pytest.raises(RuntimeError, match="bug"):
        main(["index", "--debug"])
