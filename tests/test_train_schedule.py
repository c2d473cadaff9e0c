"""The run's schedule (pgolf_core/train_schedule.py): the progressive context of #2014 (stages, both
progress modes, the LR re-warm), its config checks, RoPE independent of the active length, the switches
in a tiny CPU training (batch shapes, the logged switch, warmup, resume), and the calibration reserve."""

from __future__ import annotations

import json
import re

import pytest
import torch

from pgolf_core.config import ConfigError, config_from_dict
from pgolf_core.config.sections import SeqStage
from pgolf_core.data.loader import DistributedTokenLoader
from pgolf_core.dist import DistInfo
from pgolf_core.model import build_model
from pgolf_core.model.rotary import Rotary
from pgolf_core.quant.calib import RESERVE_MARGIN_S
from pgolf_core.runfolder import RunError
from pgolf_core.train import Trainer, train
from pgolf_core.train_schedule import RunSchedule, calib_reserve, needs_hessians, rewarm_factor, stage_at
from tests.test_train import assert_same_weights, final_weights, tiny_cfg

MODEL = {"vocab_size": 64, "num_layers": 2, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1}
PR2014 = [
    {"seq_len": 1024, "until": 0.1},
    {"seq_len": 2048, "until": 0.7},
    {"seq_len": 3072, "until": 1.0},
]


def stages(*pairs) -> list[SeqStage]:
    return [SeqStage(seq_len=n, until=u) for n, u in pairs]


def schedule(train: dict, quant: dict | None = None, model: dict | None = None) -> tuple[RunSchedule, list]:
    """A RunSchedule over a tiny CPU model; returns it and the list its log lines go to."""
    cfg = config_from_dict({"model": {**MODEL, **(model or {})}, "train": train, "quant": quant or {}})
    lines: list[str] = []
    net = build_model(cfg.model, device="cpu")
    gptq = needs_hessians(cfg)
    return RunSchedule(cfg, net, DistInfo(), gptq, lines.append), lines


# --------------------------------------------------------------------------------------------------
# progress -> length, the re-warm
# --------------------------------------------------------------------------------------------------


def test_the_active_stage_is_the_first_whose_threshold_reaches_the_progress():
    """Thresholds are inclusive: exactly at 0.1 the #2014 run still trains at 1024."""
    st = stages((1024, 0.1), (2048, 0.7), (3072, 1.0))
    progress = [0.0, 0.05, 0.1, 0.1000001, 0.5, 0.7, 0.70001, 0.99, 1.0, 1.3]
    assert [st[stage_at(st, p)].seq_len for p in progress] == [
        *(1024,) * 3, *(2048,) * 3, *(3072,) * 4,
    ]  # fmt: skip


def test_wallclock_progress_is_elapsed_over_the_cap_less_the_calibration_reserve():
    """#2014: 600 s cap - 4 s GPTQ reserve = 596 s; the 2048 stage starts just after 59.6 s."""
    sched, lines = schedule(
        {"seq_schedule": PR2014, "train_seq_len": 3072, "train_batch_tokens": 98304, "warmdown_iters": 0},
        {"scheme": "groups", "mlp": {"gptq": True}, "calib_reserve_seconds": 4.0},
    )
    assert sched.reserve == 4.0 and sched.train.max_wallclock_seconds == 596.0
    assert sched.rows == 1024 and sched.progress(7, 59.6) == pytest.approx(0.1)
    sched.before_step(7, 59.6)
    assert sched.length == 1024 and not lines
    sched.before_step(8, 59.7)
    assert (sched.length, sched.rows) == (2048, 2048)
    assert lines == ["step:8 seq_len 1024 -> 2048 (progress 0.100)"]
    sched.before_step(9, 596.0 * 0.9)
    assert sched.length == 3072 and lines[-1] == "step:9 seq_len 2048 -> 3072 (progress 0.900)"


def test_on_the_clock_every_rank_takes_the_stage_of_the_rank_furthest_on(monkeypatch):
    """Two ranks read their own clocks: the one still at 1024 switches with the one past 10 %."""
    import pgolf_core.train_schedule as ts

    train = {"seq_schedule": PR2014, "train_seq_len": 3072, "train_batch_tokens": 98304}
    cfg = config_from_dict({"model": MODEL, "train": train})
    lines: list[str] = []
    sched = RunSchedule(cfg, build_model(cfg.model, device="cpu"), DistInfo(0, 2), False, lines.append)
    other = [True, True, False]  # the other rank: stage 1 is due there
    monkeypatch.setattr(ts, "any_rank", lambda flags, dist, device: [a or b for a, b in zip(flags, other)])
    sched.before_step(5, 59.0)  # 59 / 600 here: still stage 0 on this rank
    assert sched.length == 2048 and lines == ["step:5 seq_len 1024 -> 2048 (progress 0.098)"]


def test_steps_progress_is_step_over_iterations_and_ignores_the_clock():
    sched, lines = schedule(
        {
            "seq_schedule": [{"seq_len": 32, "until": 0.25}, {"seq_len": 64, "until": 1.0}],
            "seq_schedule_mode": "steps",
            "iterations": 100,
            "train_seq_len": 64,
            "train_batch_tokens": 1024,
        }
    )
    sched.before_step(25, 1e6)
    assert sched.length == 32  # 25 / 100 = 0.25: inclusive, and the elapsed time plays no part
    sched.before_step(26, 0.0)
    assert sched.length == 64 and lines == ["step:26 seq_len 32 -> 64 (progress 0.260)"]


def test_rewarm_factor_ramps_k_plus_one_over_n_after_a_change():
    assert [rewarm_factor(k, 4) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [rewarm_factor(k, 32) for k in (0, 15, 31, 32)] == [1 / 32, 0.5, 1.0, 1.0]
    assert rewarm_factor(None, 32) == 1.0 and rewarm_factor(0, 0) == 1.0


def test_lr_multiplier_is_rewarmed_after_each_change_and_qat_reads_the_plain_multiplier():
    """Steps 0-6 at 32 (6 / 12 = 0.5 is inclusive), the change at step 7, then 1/3, 2/3, 1 times the
    warmdown multiplier (1 until its 4 last steps: 4/4 at step 8, then 3/4 ...). QAT at 0.6 switches on
    from the warmdown's 2/4 at step 10, never from the ramp's 1/3."""
    sched, lines = schedule(
        {
            "seq_schedule": [{"seq_len": 32, "until": 0.5}, {"seq_len": 64, "until": 1.0}],
            "seq_schedule_mode": "steps",
            "seq_change_warmup_steps": 3,
            "iterations": 12,
            "warmdown_iters": 4,
            "max_wallclock_seconds": 0.0,
            "train_seq_len": 64,
            "train_batch_tokens": 1024,
        },
        {"qat": True, "qat_start_lr_mult": 0.6, "keep_float_max_numel": 0},
    )
    mults, qat = [], []
    for step in range(12):
        mults.append(sched.before_step(step, 0.0))
        qat.append(sched.qat_on)
    expected = [1.0] * 7 + [1 / 3, 2 / 3, 0.75, 0.5, 0.25]
    assert mults == pytest.approx(expected, abs=1e-12)
    assert qat == [False] * 10 + [True] * 2
    assert lines == ["step:7 seq_len 32 -> 64 (progress 0.583)", "step:10 QAT on (lr multiplier 0.500 < 0.6)"]


def test_warmup_covers_every_length_and_loops_state_the_run_reaches():
    """#2014's loops started at 0.35: 1024 without, 2048 with and without, 3072 with."""
    train = {"seq_schedule": PR2014, "train_seq_len": 3072, "train_batch_tokens": 98304}
    loops = {"residual": {"loops": {"start": 0, "end": 0, "count": 1, "enable_frac": 0.35}}}
    sched, _ = schedule(train, model=loops)
    assert sched.warmup_shapes() == [(1024, False), (2048, False), (2048, True), (3072, True)]
    # steps mode under a wallclock cap: loops and lengths on different clocks, every pair may occur
    sched, _ = schedule({**train, "seq_schedule_mode": "steps"}, model=loops)
    assert sched.warmup_shapes() == [(n, on) for n in (1024, 2048, 3072) for on in (False, True)]
    sched, _ = schedule({}, model=loops)
    assert sched.warmup_shapes() == [(1024, False), (1024, True)]
    assert schedule({})[0].warmup_shapes() == [(1024, False)]


def test_varlen_keeps_the_rows_and_caps_the_segments_at_the_active_length():
    """Rows stay train_seq_len; the stage's length is where a long document is cut (the segments the
    model attends within); evaluation sees the configured cap."""
    sched, _ = schedule(
        {"seq_schedule": [{"seq_len": 8, "until": 0.5}, {"seq_len": 32, "until": 1.0}], "train_seq_len": 32},
        model={"attention": {"varlen": {"enabled": True, "max_doc_len": 16}}},
    )
    ids = torch.full((1, 32), 5)  # one document longer than every cap
    model = sched.model

    def segment_lengths() -> list[int]:
        cu = model.segments(ids).cu_seqlens.tolist()
        return [b - a for a, b in zip(cu, cu[1:]) if b > a]

    attn_caps = {m.max_doc_len for m in model.modules() if hasattr(m, "max_doc_len")}
    assert sched.rows == 32 and segment_lengths() == [8, 8, 8, 8] and attn_caps == {8}
    with sched.configured():
        assert segment_lengths() == [16, 16]
    sched.use_shape(32, False)
    assert sched.rows == 32 and segment_lengths() == [32]
    sched.end()
    assert segment_lengths() == [16, 16] and model.cfg.attention.varlen.max_doc_len == 16


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "train, model, message",
    [
        (
            {"seq_schedule": [{"seq_len": 48, "until": 1.0}]},
            {},
            "train.seq_schedule[0].seq_len (48) must divide train.train_batch_tokens (524288)",
        ),
        (
            {"seq_schedule": [{"seq_len": 2048, "until": 1.0}]},
            {},
            "train.seq_schedule[0].seq_len (2048) exceeds train.train_seq_len (1024)",
        ),
        (
            {"seq_schedule": [{"seq_len": 512, "until": 0.5}, {"seq_len": 1024, "until": 0.5}]},
            {},
            "train.seq_schedule[1].until (0.5) must exceed the previous stage's (0.5): thresholds increase",
        ),
        (
            {"seq_schedule": [{"seq_len": 512, "until": 0.5}, {"seq_len": 1024, "until": 0.9}]},
            {},
            "train.seq_schedule[1].until is 0.9; expected the last stage to end at 1.0",
        ),
        ({"seq_schedule": [{"seq_len": 0, "until": 1.0}]}, {}, "train.seq_schedule.0.seq_len: Input should"),
        ({"seq_schedule": [{"seq_len": 512, "until": 1.5}]}, {}, "train.seq_schedule.0.until: Input should"),
        (
            {"seq_schedule": [{"seq_len": 512, "until": 1.0}], "max_wallclock_seconds": 0.0},
            {},
            "train.seq_schedule_mode wallclock needs train.max_wallclock_seconds > 0",
        ),
        (
            {"seq_schedule": [{"seq_len": 512, "until": 0.5}, {"seq_len": 1024, "until": 1.0}]},
            {"rotary": {"train_seq_len": 512}},
            "model.rotary.train_seq_len (512) is below train.seq_schedule's longest seq_len (1024)",
        ),
        ({"seq_schedule_mode": "tokens"}, {}, "train.seq_schedule_mode: got 'tokens'; expected one of"),
    ],
    ids=["divides", "longest", "increasing", "last", "positive", "until<=1", "cap", "rope", "mode"],
)
def test_bad_schedules_are_one_line_config_errors(train, model, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": train, "model": model})
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and message in lines[1], str(e.value)  # "<source>: invalid config:" + one line


def test_good_schedules_load():
    pr2014 = {"seq_schedule": PR2014, "train_seq_len": 3072, "train_batch_tokens": 786432}
    for model in ({}, {"rotary": {"train_seq_len": 3072}}, {"attention": {"varlen": {"enabled": True}}}):
        cfg = config_from_dict({"train": pr2014, "model": {**model}})
        assert [st.seq_len for st in cfg.train.seq_schedule] == [1024, 2048, 3072]
    # varlen rows keep their length, so the RoPE rescale does not move with the stage
    cfg = config_from_dict(
        {
            "train": pr2014,
            "model": {"rotary": {"train_seq_len": 1024}, "attention": {"varlen": {"enabled": True}}},
        }
    )
    assert cfg.train.seq_change_warmup_steps == 32 and cfg.train.seq_schedule_mode == "wallclock"


def test_rope_tables_do_not_depend_on_the_runtime_length_once_train_seq_len_covers_it():
    """With train_seq_len at the longest stage (or 0) the first T rows of the table are the same at every
    runtime length; built for 1024 and run at 3072 (#1512's seq4096 trap) they are not."""
    for train_seq_len in (3072, 0):
        rope = Rotary(head_dim=64, rope_dims=16, train_seq_len=train_seq_len)
        full_cos, full_sin = rope.cos_sin(3072, torch.device("cpu"))
        for t in (1024, 2048):
            cos, sin = rope.cos_sin(t, torch.device("cpu"))
            assert torch.equal(cos, full_cos[:t]) and torch.equal(sin, full_sin[:t])
    trap = Rotary(head_dim=64, rope_dims=16, train_seq_len=1024)
    short, long = trap.cos_sin(1024, torch.device("cpu"))[0], trap.cos_sin(3072, torch.device("cpu"))[0]
    assert float((short - long[:1024]).abs().max()) > 0.1


# --------------------------------------------------------------------------------------------------
# the calibration reserve
# --------------------------------------------------------------------------------------------------


def test_awq_lite_alone_collects_hessians():
    """AWQ-lite (quant.awq_top_k) reads the Hessians' activation statistics, even with no GPTQ group."""
    awq = config_from_dict({"quant": {"scheme": "groups", "awq_top_k": 1}})
    assert needs_hessians(awq) and not needs_hessians(config_from_dict({"quant": {"scheme": "groups"}}))
    assert needs_hessians(config_from_dict({"quant": {"scheme": "groups", "attn": {"gptq": True}}}))


def test_reserve_errors_are_one_line():
    cfg = config_from_dict(
        {"model": MODEL, "quant": {"scheme": "groups", "mlp": {"gptq": True}, "calib_source": "self",
                                   "calib_reserve_seconds": "auto"}}
    )  # fmt: skip
    model = build_model(cfg.model, device="cpu")
    with pytest.raises(
        RunError, match=r"^quant.calib_reserve_seconds: auto sizes the reserve .* set a number"
    ):
        calib_reserve(cfg, model, DistInfo(), True)
    with pytest.raises(RunError, match=r"leaves no training time under train.max_wallclock_seconds \(10.0\)"):
        schedule({"max_wallclock_seconds": 10.0}, {"scheme": "groups", "mlp": {"gptq": True}})
    assert calib_reserve(cfg, model, DistInfo(), False) == (0.0, "none")


# --------------------------------------------------------------------------------------------------
# tiny CPU trainings
# --------------------------------------------------------------------------------------------------

TWO_STAGES = (
    "train.seq_schedule=[{seq_len: 32, until: 0.5}, {seq_len: 64, until: 1.0}]",
    "train.seq_schedule_mode=steps",
    "train.seq_change_warmup_steps=3",
)


def record_batches(monkeypatch) -> list[tuple[int, int]]:
    shapes: list[tuple[int, int]] = []
    original = DistributedTokenLoader.next_batch

    def spy(self, *args):
        x, y = original(self, *args)
        shapes.append(tuple(x.shape))
        return x, y

    monkeypatch.setattr(DistributedTokenLoader, "next_batch", spy)
    return shapes


def test_a_two_stage_run_switches_at_the_expected_step_with_the_scheduled_shapes(
    smoke_dir, tmp_path, monkeypatch
):
    """12 steps of 1,024 tokens: 32-token rows while step / 12 <= 0.5 (steps 0-6), then 64; the warmup
    compiles both shapes first and is undone (same weights as a run without warmup)."""
    shapes = record_batches(monkeypatch)
    result = train(tiny_cfg(smoke_dir, tmp_path, "two", *TWO_STAGES, "train.warmup_steps=1"))
    assert result.status == "completed" and result.steps == 12
    assert shapes == [(32, 32), (16, 64)] + [(32, 32)] * 7 + [(16, 64)] * 5
    log = (tmp_path / "two" / "train.log").read_text()
    assert "step:7 seq_len 32 -> 64 (progress 0.583)" in log
    assert (
        "warmup_step:1/2 (seq_len 32, loops off)" in log and "warmup_step:2/2 (seq_len 64, loops off)" in log
    )
    events = map(json.loads, (tmp_path / "two" / "metrics.jsonl").read_text().splitlines())
    lrs = [e["lr_mult"] for e in events if e["event"] == "train"]
    assert lrs[6:11] == pytest.approx([1.0, 1 / 3, 2 / 3, 0.75, 0.5])  # the ramp, then the warmdown's 3/4
    train(tiny_cfg(smoke_dir, tmp_path, "cold", *TWO_STAGES))
    assert_same_weights(final_weights(tmp_path, "two"), final_weights(tmp_path, "cold"))


def test_without_a_schedule_training_is_bitwise_unchanged(smoke_dir, tmp_path):
    """No keys, an empty schedule with the other keys set, and one stage at train_seq_len: the same
    weights bit for bit (the code before the schedule gave these too, checked when it was added)."""
    train(tiny_cfg(smoke_dir, tmp_path, "none", "train.iterations=6"))
    empty = ("train.seq_schedule=[]", "train.seq_schedule_mode=steps", "train.seq_change_warmup_steps=5")
    train(tiny_cfg(smoke_dir, tmp_path, "empty", "train.iterations=6", *empty))
    train(tiny_cfg(smoke_dir, tmp_path, "one", "train.iterations=6", *TWO_STAGES[1:],
                   "train.seq_schedule=[{seq_len: 64, until: 1.0}]"))  # fmt: skip
    base = final_weights(tmp_path, "none")
    assert_same_weights(base, final_weights(tmp_path, "empty"))
    assert_same_weights(base, final_weights(tmp_path, "one"))


def test_an_interrupted_scheduled_run_resumes_to_the_uninterrupted_weights(smoke_dir, tmp_path, monkeypatch):
    """Checkpoint at step 8, inside the re-warm that began at step 7: the resumed run must know the stage
    and where its ramp started (steps 8, 9 get 2/3 and 1 of the multiplier)."""
    extra = (*TWO_STAGES, "train.checkpoint_every=4")
    train(tiny_cfg(smoke_dir, tmp_path, "whole", *extra))
    original = Trainer.train_step

    def killed(self, elapsed):
        if self.step == 9:
            raise KeyboardInterrupt
        return original(self, elapsed)

    monkeypatch.setattr(Trainer, "train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(smoke_dir, tmp_path, "again", *extra))
    monkeypatch.setattr(Trainer, "train_step", original)
    shapes = record_batches(monkeypatch)
    train(tiny_cfg(smoke_dir, tmp_path, "again", *extra))
    log = (tmp_path / "again" / "train.log").read_text()
    assert re.search(r"resumed from .*last\.pt at step 8", log) and shapes == [(16, 64)] * 4
    assert_same_weights(final_weights(tmp_path, "whole"), final_weights(tmp_path, "again"))


def test_an_auto_reserve_is_measured_recorded_and_taken_off_the_cap(smoke_dir, tmp_path):
    cfg = tiny_cfg(
        smoke_dir,
        tmp_path,
        "auto",
        "quant.scheme=groups",
        "quant.mlp.gptq=true",
        "quant.mlp.bits=6",
        "quant.calib_batches=2",
        "quant.calib_reserve_seconds=auto",
        "train.max_wallclock_seconds=30",
        "train.iterations=4",
    )
    result = train(cfg)
    manifest = json.loads((tmp_path / "auto" / "run.json").read_text())
    reserve = manifest["calib_reserve_seconds"]
    assert result.status == "completed" and manifest["calib_seconds"] > 0
    assert RESERVE_MARGIN_S < reserve < 30
    log = (tmp_path / "auto" / "train.log").read_text()
    line = re.search(r"gptq calibration reserve ([\d.]+)s \(auto: [\d.]+ s/batch x 2 \+ [\d.]+ s measured\): "
                     r"training cap ([\d.]+)s", log)  # fmt: skip
    assert line and float(line[1]) == pytest.approx(reserve, abs=0.01)
    assert float(line[2]) == pytest.approx(30 - reserve, abs=0.01)
