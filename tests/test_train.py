"""The training loop on CPU: files, resume, warmup restore, NaN stop, wallclock cap, 2-process gloo."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pgolf_core.checkpoint import load_checkpoint
from pgolf_core.config import load_config
from pgolf_core.runfolder import RunError
from pgolf_core.train import Trainer, TrainingDiverged, train
from tests.conftest import REPO

TINY = [
    "model.num_layers=2",
    "model.model_dim=64",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "train.train_seq_len=64",
    "train.train_batch_tokens=1024",
    "train.grad_accum_steps=1",
    "train.warmup_steps=0",
    "train.iterations=12",
    "train.warmdown_iters=4",
    "train.val_loss_every=0",
    "train.train_log_every=1",
    "train.max_wallclock_seconds=0",
    "train.progress=false",
    "data.val_max_tokens=2048",
    "eval.batch_tokens=1024",
]


def tiny_overrides(smoke_dir: Path, run_dir: Path, run_id: str, *extra: str) -> list[str]:
    return [
        "data.source=local",
        f"data.root={smoke_dir}",
        f"data.tokenizer={smoke_dir / 'tokenizer.model'}",
        f"train.run_dir={run_dir}",
        f"train.run_id={run_id}",
        *TINY,
        *extra,
    ]


def tiny_cfg(smoke_dir, run_dir, run_id, *extra):
    return load_config(REPO / "params/smoke/train.yaml", tiny_overrides(smoke_dir, run_dir, run_id, *extra))


def final_weights(run_dir: Path, run_id: str, which: str = "final_raw") -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / run_id / "checkpoints" / f"{which}.pt")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), f"{k} differs: max |diff| {(v - b[k]).abs().max().item()}"


def test_run_writes_config_metrics_log_checkpoints_and_result(smoke_dir, tmp_path):
    cfg = tiny_cfg(smoke_dir, tmp_path, "r1", "train.ema_decay=0.9", "train.val_loss_every=6")
    result = train(cfg)
    root = tmp_path / "r1"
    assert result.status == "completed" and result.steps == 12 and not result.stopped_early
    assert set(result.stages) == {"pre", "ema"} and result.attn_backend == "sdpa"
    assert load_config(root / "config.yaml") == cfg
    events = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "val"] == [0, 6, 12]
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(1, 13))
    assert [e["stage"] for e in events if e["event"] == "stage"] == ["pre", "ema"]
    for e in events:
        if e["event"] == "stage":
            assert e["tokens"] == 2048 and e["bytes"] > 4000 and 0 < e["bpb"] < 12
    manifest = json.loads((root / "run.json").read_text())
    assert (
        manifest["status"] == "completed"
        and manifest["attn_backend"] == "sdpa"
        and manifest["world_size"] == 1
    )
    assert "matrix" in manifest["optimizer_groups"]
    assert (
        json.loads((root / "result.json").read_text())["stages"]["pre"]["bpb"] == result.stages["pre"]["bpb"]
    )
    assert {p.name for p in (root / "checkpoints").iterdir()} == {"last.pt", "final_raw.pt", "final_ema.pt"}
    log = (root / "train.log").read_text()
    assert "attention backend sdpa" in log and "stage pre: val_loss" in log
    raw, ema = final_weights(tmp_path, "r1"), final_weights(tmp_path, "r1", "final_ema")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)


def test_compile_warmup_steps_are_undone(smoke_dir, tmp_path):
    """Warmup steps prime compilation, then the initial weights, optimizer and data order come back."""
    train(tiny_cfg(smoke_dir, tmp_path, "plain"))
    train(tiny_cfg(smoke_dir, tmp_path, "warm", "train.warmup_steps=3"))
    assert_same_weights(final_weights(tmp_path, "plain"), final_weights(tmp_path, "warm"))


def test_wallclock_cap_stops_early_and_still_runs_final_stages(smoke_dir, tmp_path):
    cfg = tiny_cfg(smoke_dir, tmp_path, "cap", "train.iterations=100000", "train.max_wallclock_seconds=1.0")
    result = train(cfg)
    assert result.stopped_early and 0 < result.steps < 100000
    assert 1.0 <= result.train_seconds < 30 and "pre" in result.stages


def test_nan_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(smoke_dir, tmp_path, monkeypatch):
    cfg = tiny_cfg(smoke_dir, tmp_path, "nan", "train.checkpoint_every=4")
    original = Trainer._forward_backward

    def poisoned(self):
        loss = original(self)
        return loss * float("nan") if self.step == 6 else loss

    monkeypatch.setattr(Trainer, "_forward_backward", poisoned)
    with pytest.raises(
        TrainingDiverged,
        match=r"non-finite training loss \(nan\) at step 7; stopping\. "
        r"the last finite checkpoint is .*last\.pt \(step 4\)",
    ):
        train(cfg)
    state = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert json.loads((tmp_path / "nan" / "run.json").read_text())["status"] == "diverged"


def test_resume_refuses_a_checkpoint_from_another_config(smoke_dir, tmp_path):
    train(tiny_cfg(smoke_dir, tmp_path, "a", "train.iterations=2"))
    with pytest.raises(
        RunError, match=r"written by a different config \(model.num_layers: 2 -> 3\); use a new"
    ):
        train(tiny_cfg(smoke_dir, tmp_path, "a", "train.iterations=2", "model.num_layers=3"))


def _cli(overrides: list[str], nproc: int = 1) -> list[str]:
    launch = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    return [
        *launch,
        "-m",
        "pgolf_core.train",
        str(REPO / "params/smoke/train.yaml"),
        *[a for o in overrides for a in ("--set", o)],
    ]


def test_killed_run_resumes_to_the_uninterrupted_weights(smoke_dir, tmp_path):
    """SIGKILL a subprocess run after its first checkpoints; starting it again ends bit-identical."""
    extra = (
        "train.iterations=40",
        "train.checkpoint_every=2",
        "train.train_batch_tokens=8192",
        "train.train_seq_len=128",
    )
    train(tiny_cfg(smoke_dir, tmp_path, "whole", *extra))
    cmd = _cli(tiny_overrides(smoke_dir, tmp_path, "killed", *extra))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    last = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and load_checkpoint(last)["step"] >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(last)["step"]
    assert 6 <= killed_at < 40
    lock = tmp_path / "killed" / "run.lock"
    assert json.loads(lock.read_text())["pid"] == proc.pid  # SIGKILL: nothing could clean up
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, timeout=600)
    log = (tmp_path / "killed" / "train.log").read_text()
    assert f"resumed from {last} at step {killed_at}" in log
    assert f"took over the stale lock run.lock of pid {proc.pid} on " in log and not lock.exists()
    assert_same_weights(final_weights(tmp_path, "whole"), final_weights(tmp_path, "killed"))
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
        if '"train"' in x
    ]
    assert steps == list(range(1, 41)), "metrics of redone steps are not duplicated"


def test_two_gloo_processes_equal_one_process_on_the_same_global_batch(smoke_dir, tmp_path):
    """torchrun 2 ranks x 1 micro-batch == 1 rank x 2 micro-batches: same data, bit-identical weights.

    The loader gives rank r the r-th span of one chunk, exactly the r-th micro-batch of a single
    process; halving a loss is exact, a + b = b + a, and Muon's shared buffer adds zeros: so the
    averaged gradients, the clip and every update agree bit for bit on CPU.
    """
    train(tiny_cfg(smoke_dir, tmp_path, "one", "train.grad_accum_steps=2", "optim.grad_clip_norm=0.5"))
    cmd = _cli(
        tiny_overrides(smoke_dir, tmp_path, "two", "train.grad_accum_steps=1", "optim.grad_clip_norm=0.5"),
        nproc=2,
    )
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert_same_weights(final_weights(tmp_path, "one"), final_weights(tmp_path, "two"))
    r1 = json.loads((tmp_path / "one" / "result.json").read_text())["stages"]["pre"]
    r2 = json.loads((tmp_path / "two" / "result.json").read_text())["stages"]["pre"]
    assert r1["tokens"] == r2["tokens"] and r1["bytes"] == r2["bytes"]
    assert r1["bpb"] == pytest.approx(r2["bpb"], abs=1e-6)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2


def test_smoke_training_beats_the_unigram_floor(smoke_dir, smoke_manifest, tmp_path):
    """120 steps of the smoke model (4x128, 4,096-token batches; ~45 s on 2 cores) end far below unigram bpb.

    Unigram bpb of the smoke validation split under the training unigram distribution: 3.533.
    Measured on the dev VM: final val bpb 2.661 (the full params/smoke/train.yaml, 200 steps of 8,192
    tokens, reaches 2.305 in 173 s).
    """
    cfg = load_config(
        REPO / "params/smoke/train.yaml",
        [
            "data.source=local",
            f"data.root={smoke_dir}",
            f"data.tokenizer={smoke_dir / 'tokenizer.model'}",
            f"train.run_dir={tmp_path}",
            "train.run_id=smoke",
            "train.progress=false",
            "train.iterations=120",
            "train.train_batch_tokens=4096",
            "train.train_seq_len=128",
            "train.val_loss_every=0",
        ],
    )
    unigram = smoke_manifest["unigram_bpb"]
    assert unigram == pytest.approx(3.533, abs=0.01)
    result = train(cfg)
    assert result.stages["pre"]["bpb"] < unigram - 0.8, (result.stages["pre"]["bpb"], unigram)


def test_gptq_calibration_and_late_qat_are_wired_into_training(smoke_dir, tmp_path):
    """QAT switches on when the LR multiplier drops; GPTQ Hessians are collected and timed into training."""
    cfg = tiny_cfg(
        smoke_dir,
        tmp_path,
        "q",
        "quant.scheme=groups",
        "quant.mlp.gptq=true",
        "quant.mlp.bits=6",
        "quant.qat=true",
        "quant.qat_start_lr_mult=0.6",
        "quant.calib_batches=2",
    )
    result = train(cfg)
    log = (tmp_path / "q" / "train.log").read_text()
    qat_step = int(re.search(r"step:(\d+) QAT on", log).group(1))
    assert (
        qat_step == 10
    )  # warmdown over the last 4 of 12 steps: mult (12 - 10) / 4 = 0.5 < 0.6 first at step 10
    assert "gptq calibration:" in log
    hessians = load_checkpoint(tmp_path / "q" / "checkpoints" / "hessians.pt")
    assert any(k.endswith("weight") for k in hessians) and all(
        h.shape[0] == h.shape[1] for h in hessians.values()
    )
    manifest = json.loads((tmp_path / "q" / "run.json").read_text())
    assert manifest["calib_seconds"] > 0
    assert result.train_seconds == pytest.approx(manifest["train_seconds"] + manifest["calib_seconds"])


# --------------------------------------------------------------------------------------------------
# the end of a run is left to a caller that evaluates the same stages (the notebooks' pipeline)
# --------------------------------------------------------------------------------------------------


def test_final_stages_can_be_left_to_the_caller(smoke_dir, tmp_path):
    """final_stages=False: the same weights and Hessian-free files, no final evaluation in training."""
    full = train(tiny_cfg(smoke_dir, tmp_path, "full", "train.iterations=4", "train.ema_decay=0.9"))
    bare = train(
        tiny_cfg(smoke_dir, tmp_path, "bare", "train.iterations=4", "train.ema_decay=0.9"), final_stages=False
    )
    assert set(full.stages) == {"pre", "ema"} and bare.stages == {} and bare.status == "completed"
    for which in ("final_raw", "final_ema"):
        assert_same_weights(final_weights(tmp_path, "full", which), final_weights(tmp_path, "bare", which))
    events = [json.loads(x) for x in (tmp_path / "bare" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "val"] == [4]  # the loop's last validation stays
    assert not [e for e in events if e["event"] == "stage"]
    assert "stage pre" not in (tmp_path / "bare" / "train.log").read_text()


# --------------------------------------------------------------------------------------------------
# one writer per run folder; every end of a run recorded; finite checkpoints only
# --------------------------------------------------------------------------------------------------


def _cli_here(capsys, smoke_dir, run_dir, run_id, *extra) -> tuple[int, str]:
    """``pgolf train`` in this process: (exit code, stderr)."""
    from pgolf_core.launch import train_main

    sets = [a for o in tiny_overrides(smoke_dir, run_dir, run_id, *extra) for a in ("--set", o)]
    capsys.readouterr()
    rc = train_main([str(REPO / "params/smoke/train.yaml"), *sets])
    return rc, capsys.readouterr().err


def assert_one_line(err: str, *fragments: str) -> None:
    assert err.count("\n") == 1 and err.startswith("pgolf train: error: "), err
    assert "Traceback" not in err and all(f in err for f in fragments), err


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(smoke_dir, tmp_path, capsys):
    import socket

    from pgolf_core.runfolder import RunLock

    root = tmp_path / "busy"
    root.mkdir()
    holder = RunLock(root)
    assert holder.acquire() is None  # as a running `pgolf train` holds it
    try:
        rc, err = _cli_here(capsys, smoke_dir, tmp_path, "busy", "train.iterations=2")
        assert rc == 2
        assert_one_line(err, f"another training run (pid {os.getpid()} on {socket.gethostname()} since ")
        assert sorted(p.name for p in root.iterdir()) == ["checkpoints", "run.lock"]  # nothing written
    finally:
        holder.release()
    assert not (root / "run.lock").exists()
    # a lock file that nobody holds (its owner was killed): taken over, with a line in the log
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": "h", "started": "then"}))
    assert train(tiny_cfg(smoke_dir, tmp_path, "busy", "train.iterations=2")).status == "completed"
    log = (root / "train.log").read_text()
    assert f"took over the stale lock run.lock of pid {dead.pid} on h since then" in log
    assert not (root / "run.lock").exists()


def _poison_weights_after(monkeypatch, step: int) -> None:
    """The update that ends step ``step`` leaves NaN weights (the loss computed before it was finite)."""
    original = Trainer._optimizer_step

    def poisoned(self):
        original(self)
        if self.step + 1 == step:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(Trainer, "_optimizer_step", poisoned)


def test_checkpoints_hold_finite_weights_only(smoke_dir, tmp_path, monkeypatch):
    _poison_weights_after(monkeypatch, 8)
    cfg = tiny_cfg(smoke_dir, tmp_path, "poison", "train.checkpoint_every=4")
    with pytest.raises(
        TrainingDiverged,
        match=r"non-finite weights after step 8; .* last finite checkpoint is .*last\.pt \(step 4\)",
    ):
        train(cfg)
    state = load_checkpoint(tmp_path / "poison" / "checkpoints" / "last.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    manifest = json.loads((tmp_path / "poison" / "run.json").read_text())
    assert manifest["status"] == "diverged" and "non-finite weights after step 8" in manifest["error"]


def test_divergence_on_the_last_step_fails_the_run(smoke_dir, tmp_path, monkeypatch, capsys):
    """NaN weights from the final update: exit 1, status diverged, no result; never "completed"."""
    _poison_weights_after(monkeypatch, 12)
    rc, err = _cli_here(capsys, smoke_dir, tmp_path, "last", "train.checkpoint_every=4")
    assert rc == 1
    assert_one_line(err, "non-finite weights after step 12", "last finite checkpoint is", "(step 8)")
    assert json.loads((tmp_path / "last" / "run.json").read_text())["status"] == "diverged"
    assert not (tmp_path / "last" / "result.json").exists()


def test_a_non_finite_final_evaluation_is_a_divergence(smoke_dir, tmp_path, monkeypatch):
    """Finite weights, NaN final numbers (e.g. an overflow in evaluation): diverged as well."""
    original = Trainer.validate

    def nan_at_the_end(self):
        res = original(self)
        if self.step == self.cfg.train.iterations:
            return dataclasses.replace(res, loss=float("nan"), bpb=float("nan"))
        return res

    monkeypatch.setattr(Trainer, "validate", nan_at_the_end)
    with pytest.raises(
        TrainingDiverged, match=r"non-finite final result after step 12 \(last validation val_bpb nan\)"
    ):
        train(tiny_cfg(smoke_dir, tmp_path, "nanval"))
    assert json.loads((tmp_path / "nanval" / "run.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize(
    "exc, status, reason",
    [
        (KeyboardInterrupt(), "interrupted", "KeyboardInterrupt"),
        (
            __import__("pgolf_core.data.shards", fromlist=["ShardError"]).ShardError(
                "x.bin: truncated header"
            ),
            "failed",
            "ShardError: x.bin: truncated header",
        ),
        (
            RuntimeError("CUDA error: an illegal memory access\nmore detail"),
            "failed",
            "RuntimeError: CUDA error: an",
        ),
    ],
)
def test_a_crash_mid_run_is_recorded_never_left_running(
    smoke_dir, tmp_path, monkeypatch, exc, status, reason
):
    original = Trainer.train_step

    def crash(self, elapsed):
        if self.step == 3:
            raise exc
        return original(self, elapsed)

    monkeypatch.setattr(Trainer, "train_step", crash)
    with pytest.raises(type(exc)):
        train(tiny_cfg(smoke_dir, tmp_path, "crash"))
    manifest = json.loads((tmp_path / "crash" / "run.json").read_text())
    assert manifest["status"] == status and manifest["error"].startswith(reason) and manifest["steps"] == 3
    assert "\n" not in manifest["error"] and not (tmp_path / "crash" / "run.lock").exists()


def test_a_full_disk_during_a_checkpoint_is_one_line(smoke_dir, tmp_path, monkeypatch, capsys):
    """ENOSPC inside torch.save surfaces as torch's zip-writer error; pgolf names the file and the cause."""
    import errno

    import pgolf_core.checkpoint as ckpt

    class FullDisk:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

    real = ckpt.atomic_write
    monkeypatch.setattr(ckpt, "atomic_write", lambda path, write: real(path, lambda f: write(FullDisk(f))))
    rc, err = _cli_here(capsys, smoke_dir, tmp_path, "full", "train.checkpoint_every=4")
    assert rc == 2
    assert_one_line(err, "last.pt: could not write the checkpoint: No space left on device (ENOSPC)")
    ckpts = tmp_path / "full" / "checkpoints"
    assert not list(ckpts.iterdir())  # neither a checkpoint nor its temporary file
    assert json.loads((tmp_path / "full" / "run.json").read_text())["status"] == "failed"


def test_orphan_temporary_files_of_pgolf_writes_are_removed_on_start(smoke_dir, tmp_path):
    root = tmp_path / "orph"
    (root / "checkpoints").mkdir(parents=True)
    orphans = [root / "checkpoints" / ".last.pt.k2j_9x0a.tmp", root / ".run.json.abcdefgh.tmp"]
    kept = [root / ".notes.txt.abcdefgh.tmp", root / "checkpoints" / ".mine.tmp", root / "data.tmp"]
    for p in orphans + kept:
        p.write_bytes(b"x")
    train(tiny_cfg(smoke_dir, tmp_path, "orph", "train.iterations=2"))
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in kept)
    log = (root / "train.log").read_text()
    assert "removed orphan temporary file checkpoints/.last.pt.k2j_9x0a.tmp" in log


class Pickled:  # torch.save stores it by reference: loading it would need to run code
    pass


def _dataset(smoke_dir: Path, out: Path, train_tokens: int, val_tokens: int) -> list[str]:
    from pgolf_core.data.shards import read_shard, write_shard

    out.mkdir()
    val = read_shard(smoke_dir / "fineweb_val_000000.bin")
    write_shard(out / "fineweb_val_000000.bin", val[:val_tokens])
    write_shard(out / "fineweb_train_000000.bin", val[:train_tokens])
    return [f"data.root={out}"]


@pytest.mark.parametrize(
    "case",
    [
        "empty_train",
        "empty_val",
        "vocab",
        "cuda",
        "resume_config",
        "truncated_ckpt",
        "pickled_ckpt",
        "run_id",
    ],
)
def test_bad_inputs_are_one_line_errors(smoke_dir, tmp_path, capsys, case):
    extra: list[str] = ["train.iterations=2"]
    run_id, expect = "bad", []
    if case == "empty_train":
        extra += _dataset(smoke_dir, tmp_path / "d", 0, 5000)
        expect = [f"{tmp_path / 'd' / 'fineweb_train_*.bin'}: all 1 training shard(s) hold 0 tokens"]
    elif case == "empty_val":
        extra += _dataset(smoke_dir, tmp_path / "d", 5000, 0)
        val = tmp_path / "d" / "fineweb_val_*.bin"
        expect = [f"{val}: validation split (0 tokens in 1 shard(s)) is empty: "]
    elif case == "vocab":
        extra.append("model.vocab_size=512")
        expect = ["tokenizer.model: tokenizer vocab 1024 != model.vocab_size 512"]
    elif case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra.append("train.device=cuda")
        expect = ["train.device='cuda' but this machine has no usable CUDA device"]
    elif case == "resume_config":
        train(tiny_cfg(smoke_dir, tmp_path, run_id, *extra))
        extra.append("train.ema_decay=0.5")
        expect = [
            "last.pt was written by a different config (train.ema_decay: 0.97 -> 0.5); use a new train.run_id"
        ]
    elif case in ("truncated_ckpt", "pickled_ckpt"):
        train(tiny_cfg(smoke_dir, tmp_path, run_id, *extra))
        last = tmp_path / run_id / "checkpoints" / "last.pt"
        if case == "truncated_ckpt":
            last.write_bytes(last.read_bytes()[:1000])
            expect = [f"{last}: not a readable checkpoint (truncated or corrupt: "]
        else:
            torch.save({"step": 1, "obj": Pickled()}, last)
            expect = [f"{last}: holds a pickled Python object (tests.test_train.Pickled)"]
    elif case == "run_id":
        run_id, expect = "../escape", ["train.run_id='../escape': expected a plain folder name"]
    rc, err = _cli_here(
        capsys, smoke_dir, tmp_path / "runs" if case == "run_id" else tmp_path, run_id, *extra
    )
    assert rc == 2
    assert_one_line(err, *expect)
    assert "weights_only=False" not in err
    if case == "run_id":
        assert not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists()
