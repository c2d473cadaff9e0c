"""The run's sections besides the model (data, optim, train, eval, quant, ttt, ngram, report) and the
``RunConfig`` tree that holds them all."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from pgolf_core.challenge import BYTE_CAP, TRAIN_SECONDS, WORLD_SIZE
from pgolf_core.code_bytes import RUNTIME_CODE_FILES  # the default quant.code_files (counted-file policy)
from pgolf_core.config.eval_sections import EvalConfig, NgramConfig, TTTConfig
from pgolf_core.config.model import ModelConfig
from pgolf_core.config.section import Section

TOKENIZER_FOR_VARIANT = {
    "sp1024": "fineweb_1024_bpe.model",
    "sp8192": "fineweb_8192_bpe.model",
    "sp8192_caseops": "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model",
}


class DataConfig(Section):
    """Where the shards and the tokenizer live. Relative paths resolve against the working directory."""

    source: Literal["official", "smoke", "local"] = Field(
        "official",
        description="official: the published FineWeb export (pgolf data fetch); smoke: the embedded "
        "smoke corpus (pgolf data smoke); local: any shards you exported (root and tokenizer required)",
    )
    variant: Literal["sp1024", "sp8192", "sp8192_caseops"] = Field(
        "sp1024", description="official export variant (sp8192_caseops: the canonical CaseOps export, #1729)"
    )
    caseops: bool = Field(
        False,
        description="CaseOps data (#1729): case-transformed shards and a CaseOps tokenizer (markers at ids "
        "4-7); bpb over the ORIGINAL bytes from the validation sidecar fineweb_val_bytes_*.bin, not the "
        "tokenizer byte tables (CaseOps reclaims ~0.005 nats/token, #1736)",
    )
    root: str | None = Field(None, description="folder with the shards; None derives it from source/variant")
    tokenizer: str | None = Field(
        None, description="SentencePiece .model; None derives it from source/variant"
    )
    train_pattern: str = Field("fineweb_train_*.bin", description="glob of train shards inside root")
    val_pattern: str = Field("fineweb_val_*.bin", description="glob of validation shards inside root")
    train_shards: int = Field(80, ge=0, description="official: train shards to fetch (0: none)")
    val_max_tokens: int = Field(0, ge=0, description="cap on validation tokens (0: the whole split)")

    @model_validator(mode="after")
    def _local_needs_paths(self) -> DataConfig:
        if self.source == "local" and (self.root is None or self.tokenizer is None):
            raise ValueError("data.source 'local' needs both data.root and data.tokenizer")
        if self.source == "official" and (self.variant == "sp8192_caseops") != self.caseops:
            raise ValueError(
                "data.variant 'sp8192_caseops' and data.caseops go together: set both (CaseOps data) or "
                "neither"
            )
        return self

    def root_path(self) -> Path:
        if self.root is not None:
            return Path(self.root)
        if self.source == "smoke":
            return Path("data/smoke_caseops" if self.caseops else "data/smoke")
        return Path("data/datasets") / f"fineweb10B_{self.variant}"

    def tokenizer_path(self) -> Path:
        if self.tokenizer is not None:
            return Path(self.tokenizer)
        if self.source == "smoke":
            return self.root_path() / "tokenizer.model"
        return Path("data/tokenizers") / TOKENIZER_FOR_VARIANT[self.variant]


class OptimConfig(Section):
    """Muon for block matrices, Adam(W) for embeddings / head / small tensors (baseline values)."""

    matrix_lr: float = Field(0.04, ge=0)
    tied_embed_lr: float = Field(0.05, ge=0)
    embed_lr: float = Field(0.6, ge=0, description="token embedding LR when embeddings are untied")
    head_lr: float = Field(0.008, ge=0, description="untied LM head LR")
    scalar_lr: float = Field(0.04, ge=0, description="small / control tensors and auxiliary projections")
    table_lr: float = Field(
        0.0, ge=0, description="bigram / value-embedding tables (0: the token embedding LR)"
    )
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    muon_momentum_warmup_start: float = Field(0.85, ge=0, lt=1)
    muon_momentum_warmup_steps: int = Field(500, ge=0)
    muon_backend_steps: int = Field(5, gt=0, description="Newton-Schulz iterations")
    muon_coefficients: Literal["quintic", "polar_express"] = Field(
        "quintic", description="polar_express: #1787+"
    )
    muon_row_norm: bool = Field(False, description="MuonEq-R: normalize rows before Newton-Schulz (#1285)")
    muon_banked: bool = Field(
        False,
        description="banked parallel Muon (#399): reduce-scatter of Muon's gradients, Newton-Schulz on each "
        "rank's shard, all-gather of the updates; same result as Muon; Muon's matrices leave DDP",
    )
    muon_weight_decay: float = Field(0.0, ge=0, description="decoupled: p *= 1 - lr * wd")
    embed_weight_decay: float = Field(0.0, ge=0)
    adam_weight_decay: float = Field(0.0, ge=0, description="scalar / head / table groups")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    grad_clip_norm: float = Field(0.0, ge=0, description="global-norm clip of the averaged gradient (0: off)")


class SeqStage(Section):
    """One stage of the progressive training context (train.seq_schedule, #2014)."""

    seq_len: int = Field(gt=0, description="rows of this many tokens (varlen: the document-segment cap)")
    until: float = Field(gt=0, le=1, description="the stage lasts while training progress <= until")


class TrainConfig(Section):
    """The training loop. Baseline: 524,288 tokens/step of 1024-token sequences, 600 s cap."""

    seed: int = 1337
    iterations: int = Field(20000, ge=0)
    train_batch_tokens: int = Field(524288, gt=0, description="global tokens per optimizer step")
    train_seq_len: int = Field(1024, gt=0)
    grad_accum_steps: int = Field(
        0, ge=0, description=f"0: {WORLD_SIZE} // world_size, as the challenge baseline"
    )
    warmup_steps: int = Field(20, ge=0, description="compile-warmup steps whose state is restored afterwards")
    warmdown_iters: int = Field(
        1200, ge=0, description="linear LR warmdown length in steps (wallclock-aware under a cap)"
    )
    warmdown_frac: float = Field(
        0.0, ge=0, le=1, description="> 0: warmdown over this fraction of training (#1394+)"
    )
    min_lr: float = Field(
        0.0, ge=0, le=1, description="floor of the LR multiplier in frac warmdown (#1787: 0.1)"
    )
    max_wallclock_seconds: float = Field(
        TRAIN_SECONDS, ge=0, description="training time cap, eval excluded (0: none)"
    )
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of weights (0: off; records use 0.997)")
    val_loss_every: int = Field(1000, ge=0, description="periodic validation (0: only at the end)")
    train_log_every: int = Field(200, ge=0)
    checkpoint_every: int = Field(
        0, ge=0, description="steps between resumable checkpoints (0: only the final one)"
    )
    resume: bool = Field(True, description="continue from runs/<run_id>/checkpoints/last.pt when present")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = Field(True, description="torch.compile the model on CUDA (never on CPU)")
    autocast: bool = Field(True, description="bf16 autocast on CUDA (CPU runs in fp32)")
    tok_emb_bf16: bool = Field(
        True,
        description="on CUDA under bf16 autocast, store the token embedding (tied head) in bf16 as the "
        "challenge's train_gpt.py does (its Adam then updates bf16 weights); CPU and fp32 runs keep fp32",
    )
    seq_schedule: list[SeqStage] = Field(
        default_factory=list,
        description="progressive context (#2014: 1024 until 0.1, 2048 until 0.7, 3072 until 1.0): the "
        "active length is the first stage whose until >= progress (empty: train_seq_len throughout)",
    )
    seq_schedule_mode: Literal["wallclock", "steps"] = Field(
        "wallclock",
        description="progress = elapsed / (cap - quant.calib_reserve_seconds) (#2014), or step / iterations",
    )
    seq_change_warmup_steps: int = Field(
        32, ge=0, description="after each length change the LR multiplier also ramps (k+1)/N (#2014: 32)"
    )
    progress: bool = Field(True, description="tqdm bar on rank 0")
    run_dir: str = Field("runs", description="runs/<run_id>/ holds config, metrics, logs, checkpoints")
    run_id: str | None = Field(None, description="None: a timestamped id")

    @model_validator(mode="after")
    def _batch(self) -> TrainConfig:
        if self.train_batch_tokens % self.train_seq_len:
            raise ValueError(
                f"train.train_batch_tokens ({self.train_batch_tokens}) must be a multiple of "
                f"train.train_seq_len ({self.train_seq_len})"
            )
        self._check_seq_schedule()
        return self

    def _check_seq_schedule(self) -> None:
        stages = self.seq_schedule
        for i, st in enumerate(stages):
            key = f"train.seq_schedule[{i}]"
            if self.train_batch_tokens % st.seq_len:
                raise ValueError(
                    f"{key}.seq_len ({st.seq_len}) must divide train.train_batch_tokens "
                    f"({self.train_batch_tokens}): rows keep the batch's tokens at every length"
                )
            if st.seq_len > self.train_seq_len:
                raise ValueError(
                    f"{key}.seq_len ({st.seq_len}) exceeds train.train_seq_len ({self.train_seq_len}); "
                    "expected train_seq_len to be the longest stage (the varlen row length)"
                )
            if i and st.until <= stages[i - 1].until:
                raise ValueError(
                    f"{key}.until ({st.until}) must exceed the previous stage's ({stages[i - 1].until}): "
                    "thresholds increase"
                )
        if stages and stages[-1].until != 1.0:
            raise ValueError(
                f"train.seq_schedule[{len(stages) - 1}].until is {stages[-1].until}; expected the last "
                "stage to end at 1.0 (the whole run)"
            )
        if stages and self.seq_schedule_mode == "wallclock" and self.max_wallclock_seconds <= 0:
            raise ValueError(
                "train.seq_schedule_mode wallclock needs train.max_wallclock_seconds > 0; "
                "set a cap or seq_schedule_mode: steps"
            )


class QuantGroupConfig(Section):
    """How one tensor group (attn, mlp, embed, gate) is quantized."""

    bits: int = Field(8, ge=2, le=8, description="signed per-row integers in [-(2^(b-1)-1), 2^(b-1)-1]")
    clip: Literal["percentile", "search", "sdclip"] = Field(
        "percentile",
        description="percentile of |w| per row; search: min-MSE quantile (#374 GPTQ-lite); "
        "sdclip: k*std(row) (#1394)",
    )
    percentile: float = Field(99.99984, gt=0, le=100, description="clip percentile (the baseline's)")
    sdclip_k: float = Field(
        12.85, gt=0, description="sdclip: clip = k * std(row) (#1394: 12.85 int6, 20 int8)"
    )
    gptq: bool = Field(False, description="Hessian-aware GPTQ rounding (#1019 on)")


class QuantConfig(Section):
    """Post-training quantization and the artifact (baseline: the challenge's per-row int8 + zlib-9)."""

    scheme: Literal["baseline_int8", "groups"] = Field(
        "baseline_int8",
        description="baseline_int8: the challenge's exact export; groups: per-group settings below",
    )
    attn: QuantGroupConfig = QuantGroupConfig()
    mlp: QuantGroupConfig = QuantGroupConfig()
    embed: QuantGroupConfig = QuantGroupConfig()
    gate: QuantGroupConfig = QuantGroupConfig()
    keep_float_max_numel: int = Field(
        65536, ge=0, description="float tensors this small stay fp16 (control tensors fp32)"
    )
    quant_gates: bool = Field(
        False,
        description="groups: attention-gate weights skip the fp16 passthrough, per-row intN with the "
        "gate settings (#1736 QuantGate, ~40 KB)",
    )
    search_quantiles: list[float] = Field(
        default_factory=lambda: [0.999, 0.9995, 0.9999, 0.99999, 1.0], description="clip search candidates"
    )
    gptq_block_size: int = Field(128, gt=0)
    gptq_damp: float = Field(
        0.01, ge=0, description="damping: fraction of mean(diag H) added to the diagonal"
    )
    gptq_act_order: bool = Field(True, description="quantize columns in order of decreasing diag(H)")
    awq_top_k: int = Field(
        0,
        ge=0,
        description="AWQ-lite (#1908: 1): column blocks of the whole model, by activation-RMS saliency, "
        "rounded at awq_bits inside the same GPTQ pass (0: off; needs Hessians)",
    )
    awq_group_size: int = Field(64, gt=0, description="AWQ-lite: columns per candidate block")
    awq_bits: int = Field(
        8,
        ge=2,
        le=8,
        description="AWQ-lite: bits of the protected columns; tensors below this are candidates",
    )
    calib_source: Literal["train", "self"] = Field(
        "train", description="Hessians from training batches or self-generated text; never validation"
    )
    calib_batches: int = Field(
        64, gt=0, description="train: calibration batches per rank (#1394: 64, #1626+: 16, #2135: 32)"
    )
    calib_seqs: int = Field(64, gt=0, description="self: generated sequences")
    calib_temperature: float = Field(0.8, gt=0, description="self: sampling temperature (#1019)")
    calib_reserve_seconds: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        12.0,
        description="taken off the training cap so calibration fits in it; auto: sized from a measured "
        "Hessian pass (pgolf_core.quant.calib.reserve_seconds; #2135 reserved 0.5 s for a 6.9 s pass)",
    )
    lqer_top_k: int = Field(
        0,
        ge=0,
        description="LQER: low-rank error correction of the K tensors with the largest ||W - W^||_F "
        "(0: off; #1851/#2135: 3, #2060: 4)",
    )
    lqer_rank: int = Field(4, gt=0, description="LQER rank (#1855/#2135: 4, #2060: 2)")
    lqer_group: int = Field(
        64, gt=0, description="INT4 group size of the flattened B factor (#1855: 64, #2060/#2135: 32)"
    )
    qat: bool = Field(
        False, description="fake-quantize weights in training (STE), matching the export scheme"
    )
    qat_start_lr_mult: float = Field(
        0.15, ge=0, le=1, description="QAT switches on once the LR multiplier drops below this"
    )
    compressor: Literal["auto", "zlib", "lzma", "brotli", "pergroup"] = Field(
        "zlib",
        description="auto: try all, keep the smallest; pergroup: #1855's role streams with reordered "
        "rows (lrzip where installed, else brotli)",
    )
    lrzip: Literal["auto", "off"] = Field(
        "auto",
        description="pergroup: lrzip -z -L 9 (ZPAQ) when the binary is installed (auto), or always brotli; "
        "never required, recorded in the artifact header",
    )
    byte_shuffle: Literal["auto", "off", "on"] = Field(
        "off", description="byte-shuffle / per-group streams before compressing"
    )
    prune_to_cap: bool = Field(
        False,
        description="selective +-1 pruning (#1019, from #609): when code + model exceed byte_cap, zero "
        "the +-1 codes whose loss adds the least (Hessian-weighted) error until it fits",
    )
    prune_max_probes: int = Field(24, gt=0, description="pruning: most encodes tried in the search")
    code_files: list[str] = Field(
        default_factory=lambda: list(RUNTIME_CODE_FILES),
        description="globs of the code counted in the artifact (default: every module a run loads to "
        "train and score)",
    )
    code_packing: Literal["packed", "raw"] = Field(
        "packed",
        description="how the counted code ships and counts: packed, one self-extracting train_gpt.py "
        "(minified, lzma, base85; pgolf_core/code_pack.py), or raw, the files as they are",
    )
    byte_cap: int = Field(BYTE_CAP, gt=0, description="decimal artifact cap: code + compressed model")


class ReportConfig(Section):
    """Rendering of reports."""

    title: str = ""
    dpi: int = Field(120, gt=0)


SECTIONS = ("data", "model", "optim", "train", "quant", "eval", "ttt", "ngram", "report")


class RunConfig(Section):
    """The whole tree. Built only through ``load_config`` / ``config_from_dict``."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    quant: QuantConfig = QuantConfig()
    eval: EvalConfig = EvalConfig()
    ttt: TTTConfig = TTTConfig()
    ngram: NgramConfig = NgramConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _cross(self) -> RunConfig:
        seq = self.eval.seq_len or self.train.train_seq_len
        if self.eval.stride > seq:
            raise ValueError(
                f"eval.stride ({self.eval.stride}) must not exceed the eval sequence length ({seq})"
            )
        self._rope_fixed_over_the_schedule()
        return self

    def _rope_fixed_over_the_schedule(self) -> None:
        """Rows change length with train.seq_schedule (varlen rows do not): the NTK rescale must not
        follow them, or each stage trains another RoPE base (#1512's model, trained at 4096 with the
        rescale built for 1024, broke when evaluated at 2048)."""
        stages, rope = self.train.seq_schedule, self.model.rotary.train_seq_len
        longest = max((st.seq_len for st in stages), default=0)
        if self.model.attention.varlen.enabled or not rope or rope >= longest:
            return
        raise ValueError(
            f"model.rotary.train_seq_len ({rope}) is below train.seq_schedule's longest seq_len "
            f"({longest}): RoPE's base would change with the active length; set it to {longest} or 0"
        )

    @property
    def eval_seq_len(self) -> int:
        return self.eval.seq_len or self.train.train_seq_len
