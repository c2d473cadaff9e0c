"""The typed config tree: one ``RunConfig`` loaded from YAML under params/, validated before any compute.

Sections: data, model, optim, train, quant, eval, ttt, ngram, report. Every field has a default; the
defaults are the challenge's naive baseline (records.md BASE), so an empty YAML file *is* the baseline.

Rules (style.md G1/G2):
- ``load_config`` is the only door. Unknown keys, wrong types and bad choices are rejected with an error
  that names the file, the dotted key, what was given and what is valid (with a "did you mean").
- A params file may start with ``extends: other.yaml`` (a path relative to it, or a list of them);
  bases are deep-merged first, the file's own keys win.
- Overrides (``--set model.num_layers=11``) are parsed as YAML scalars and applied last.
- Hyperparameters never come from environment variables; ``pgolf_core.dist`` alone reads torchrun's
  RANK / WORLD_SIZE / LOCAL_RANK.
- ``to_yaml(cfg)`` writes the fully resolved tree; loading it back gives an equal config.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# --------------------------------------------------------------------------------------------------
# YAML: safe loading, duplicate keys rejected, 1e-3 read as a float (YAML 1.1 wants "1.0e-3").
# --------------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A params file (or override) is invalid. The message names the file, the key and the fix."""


class _StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                f"(first at line {seen[key].start_mark.line + 1})"
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


class Section(BaseModel):
    """Base of every section: unknown keys forbidden, types strict (no "9" for 9), frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)


TOKENIZER_FOR_VARIANT = {"sp1024": "fineweb_1024_bpe.model", "sp8192": "fineweb_8192_bpe.model"}


class DataConfig(Section):
    """Where the shards and the tokenizer live. Relative paths resolve against the working directory."""

    source: Literal["official", "smoke", "local"] = Field(
        "official",
        description="official: the published FineWeb export (pgolf data fetch); smoke: the embedded "
        "smoke corpus (pgolf data smoke); local: any shards you exported (root and tokenizer required)",
    )
    variant: Literal["sp1024", "sp8192"] = Field("sp1024", description="official export variant")
    root: str | None = Field(None, description="folder with the shards; None derives it from source/variant")
    tokenizer: str | None = Field(None, description="SentencePiece .model; None derives it from source/variant")
    train_pattern: str = Field("fineweb_train_*.bin", description="glob of train shards inside root")
    val_pattern: str = Field("fineweb_val_*.bin", description="glob of validation shards inside root")
    train_shards: int = Field(80, ge=0, description="official: train shards to fetch (0: none)")
    val_max_tokens: int = Field(0, ge=0, description="cap on validation tokens (0: the whole split)")

    @model_validator(mode="after")
    def _local_needs_paths(self) -> DataConfig:
        if self.source == "local" and (self.root is None or self.tokenizer is None):
            raise ValueError("data.source 'local' needs both data.root and data.tokenizer")
        return self

    def root_path(self) -> Path:
        if self.root is not None:
            return Path(self.root)
        if self.source == "smoke":
            return Path("data/smoke")
        return Path("data/datasets") / f"fineweb10B_{self.variant}"

    def tokenizer_path(self) -> Path:
        if self.tokenizer is not None:
            return Path(self.tokenizer)
        if self.source == "smoke":
            return self.root_path() / "tokenizer.model"
        return Path("data/tokenizers") / TOKENIZER_FOR_VARIANT[self.variant]


class ModelConfig(Section):
    """The GPT. Defaults are the challenge baseline (9x512, 8 heads / 4 KV heads, relu^2 MLP 2x).

    Every record trick is a flag whose default is off (records.md B); its code sits next to the
    component it changes in pgolf_core/model/.
    """

    vocab_size: int = Field(1024, gt=0, lt=65536, description="must equal the tokenizer's vocab size")
    num_layers: int = Field(9, gt=0, description="physical blocks")
    model_dim: int = Field(512, gt=0)
    num_heads: int = Field(8, gt=0)
    num_kv_heads: int = Field(4, gt=0)
    mlp_mult: float = Field(2.0, gt=0, description="MLP hidden = int(mlp_mult * model_dim)")
    activation: Literal["relu2", "leaky_relu2"] = Field("relu2", description="leaky_relu2: PR #549, -0.003 bpb")
    leaky_slope: float = Field(0.5, ge=0, description="negative slope of leaky_relu2")
    tie_embeddings: bool = True
    tied_embed_init_std: float = Field(0.005, ge=0)
    rope_base: float = Field(10000.0, gt=0)
    rope_dims: int = Field(0, ge=0, description="rotated dims per head (0: all; records use 16 of 64)")
    rope_train_seq_len: int = Field(0, ge=0, description="NTK base rescale beyond this length (0: off; #549 used 1024)")
    q_gain_init: float = Field(1.5, description="per-head query gain after q/k RMS norm")
    logit_softcap: float = Field(30.0, gt=0, description="logits = c * tanh(z / c)")
    ln_scale: bool = Field(False, description="scale normalized block inputs by 1/sqrt(layer+1) (#549)")
    xsa_last_n: int = Field(0, ge=0, description="exclusive self-attention on the last N physical layers")
    skip_gates: bool = Field(False, description="sigmoid-gated U-Net skips (#1218 on)")
    loop_start: int = Field(0, ge=0, description="depth recurrence: first physical block of the looped segment")
    loop_end: int = Field(0, ge=0, description="depth recurrence: last physical block of the segment (inclusive)")
    num_loops: int = Field(0, ge=0, description="extra passes over the segment (0: no recurrence)")
    loop_enable_frac: float = Field(0.0, ge=0, le=1, description="training-time fraction at which looping turns on")
    parallel_residual: Literal["none", "gptj", "two_lane"] = Field("none", description="gptj: #1412/#1493; two_lane: #1204/#1855")
    parallel_start_layer: int = Field(7, ge=0, description="first physical layer with parallel residuals")
    smear_gate: Literal["none", "v1", "v2"] = Field("none", description="v1: #549 (after norm); v2: #1667+ (before norm)")
    smear_width: int = Field(12, gt=0, description="v2: input dims of the smear gate")
    smear_bos_fix: bool = Field(True, description="v2: no smear into a BOS token (#1851 fix)")
    bigram_vocab: int = Field(0, ge=0, description="BigramHash buckets (0: off; #549 used 1536)")
    bigram_dim: int = Field(128, gt=0)
    ve_dim: int = Field(0, ge=0, description="value-embedding width (0: off; #549 used 128)")
    ve_layers: list[int] = Field(default_factory=list, description="physical layers whose V gets the value embedding")
    attn_gate: Literal["none", "dense", "sparse"] = Field("none", description="dense: #1736; sparse: #1787+")
    attn_gate_width: int = Field(12, gt=0, description="sparse gate: input dims")
    attn_gate_scale: float = Field(1.0, description="sparse gate: logit scale c")
    attn_gate_init_std: float = Field(0.005, ge=0, description="dense gate: init std")
    window_size: int = Field(0, ge=0, description="sliding-window attention span in tokens (0: full causal)")
    window_layers: list[int] = Field(default_factory=list, description="physical layers with the window (empty: all)")
    ortho_init: bool = Field(False, description="orthogonal init of matrices with both dims >= 64 (#549)")
    attn_backend: Literal["auto", "fa3", "fa2", "sdpa"] = Field("auto", description="auto: FA3, then FA2, then SDPA")

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        L = self.num_layers
        if self.model_dim % self.num_heads:
            raise ValueError(f"model.model_dim ({self.model_dim}) must be divisible by model.num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.num_heads ({self.num_heads}) must be divisible by model.num_kv_heads ({self.num_kv_heads})")
        head_dim = self.model_dim // self.num_heads
        if head_dim % 2:
            raise ValueError("model.model_dim / model.num_heads (the head dim) must be even for RoPE")
        if self.rope_dims % 2 or self.rope_dims > head_dim:
            raise ValueError(f"model.rope_dims ({self.rope_dims}) must be even and at most the head dim ({head_dim})")
        if self.xsa_last_n > L:
            raise ValueError(f"model.xsa_last_n ({self.xsa_last_n}) exceeds model.num_layers ({L})")
        if self.num_loops and not (self.loop_start <= self.loop_end < L):
            raise ValueError(f"model.loop_start..loop_end ({self.loop_start}..{self.loop_end}) must lie in 0..{L - 1}")
        for key in ("ve_layers", "window_layers"):
            bad = [i for i in getattr(self, key) if not 0 <= i < L]
            if bad:
                raise ValueError(f"model.{key} has layers {bad} outside 0..{L - 1}")
        if self.ve_layers and not self.ve_dim:
            raise ValueError("model.ve_layers is set but model.ve_dim is 0; set model.ve_dim (e.g. 128)")
        if self.bigram_vocab == 1:
            raise ValueError("model.bigram_vocab must be 0 (off) or at least 2")
        if self.smear_width > self.model_dim or self.attn_gate_width > self.model_dim:
            raise ValueError("model.smear_width and model.attn_gate_width must not exceed model.model_dim")
        return self


class OptimConfig(Section):
    """Muon for block matrices, Adam(W) for embeddings / head / small tensors (baseline values)."""

    matrix_lr: float = Field(0.04, ge=0)
    tied_embed_lr: float = Field(0.05, ge=0)
    embed_lr: float = Field(0.6, ge=0, description="token embedding LR when embeddings are untied")
    head_lr: float = Field(0.008, ge=0, description="untied LM head LR")
    scalar_lr: float = Field(0.04, ge=0, description="small / control tensors and auxiliary projections")
    table_lr: float = Field(0.0, ge=0, description="bigram / value-embedding tables (0: the token embedding LR)")
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    muon_momentum_warmup_start: float = Field(0.85, ge=0, lt=1)
    muon_momentum_warmup_steps: int = Field(500, ge=0)
    muon_backend_steps: int = Field(5, gt=0, description="Newton-Schulz iterations")
    muon_coefficients: Literal["quintic", "polar_express"] = Field("quintic", description="polar_express: #1787+")
    muon_row_norm: bool = Field(False, description="MuonEq-R: normalize rows before Newton-Schulz (#1285)")
    muon_weight_decay: float = Field(0.0, ge=0, description="decoupled: p *= 1 - lr * wd")
    embed_weight_decay: float = Field(0.0, ge=0)
    adam_weight_decay: float = Field(0.0, ge=0, description="scalar / head / table groups")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    grad_clip_norm: float = Field(0.0, ge=0, description="global-norm clip of the averaged gradient (0: off)")


class TrainConfig(Section):
    """The training loop. Baseline: 524,288 tokens/step of 1024-token sequences, 600 s cap."""

    seed: int = 1337
    iterations: int = Field(20000, ge=0)
    train_batch_tokens: int = Field(524288, gt=0, description="global tokens per optimizer step")
    train_seq_len: int = Field(1024, gt=0)
    grad_accum_steps: int = Field(0, ge=0, description="0: 8 // world_size, as the challenge baseline")
    warmup_steps: int = Field(20, ge=0, description="compile-warmup steps whose state is restored afterwards")
    warmdown_iters: int = Field(1200, ge=0, description="linear LR warmdown length in steps (wallclock-aware under a cap)")
    warmdown_frac: float = Field(0.0, ge=0, le=1, description="> 0: warmdown over this fraction of training (#1394+)")
    min_lr: float = Field(0.0, ge=0, le=1, description="floor of the LR multiplier in frac warmdown (#1787: 0.1)")
    max_wallclock_seconds: float = Field(600.0, ge=0, description="training time cap, eval excluded (0: none)")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of weights (0: off; records use 0.997)")
    val_loss_every: int = Field(1000, ge=0, description="periodic validation (0: only at the end)")
    train_log_every: int = Field(200, ge=0)
    checkpoint_every: int = Field(0, ge=0, description="steps between resumable checkpoints (0: only the final one)")
    resume: bool = Field(True, description="continue from runs/<run_id>/checkpoints/last.pt when present")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = Field(True, description="torch.compile the model on CUDA (never on CPU)")
    autocast: bool = Field(True, description="bf16 autocast on CUDA (CPU runs in fp32)")
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
        return self


class EvalConfig(Section):
    """Validation scoring. stride 0 = non-overlapping windows; stride s > 0 = sliding window (records E2)."""

    seq_len: int = Field(0, ge=0, description="0: train.train_seq_len")
    batch_tokens: int = Field(524288, gt=0, description="tokens per evaluation batch, all ranks together")
    stride: int = Field(0, ge=0, description="sliding-window stride (0: off; the records use 64)")
    sliding_batch_seqs: int = Field(32, gt=0, description="windows per forward in sliding evaluation")
    temperature: float = Field(1.0, gt=0)
    probe_tokens: int = Field(
        4096, ge=0, description="compliance checks T1-T5 run each stage's scorer on this many validation tokens (0: skip)"
    )
    split_check_tokens: int = Field(
        20_000_000, ge=0,
        description="T9 looks for copied validation documents in this many training tokens (0: skip; "
        "`pgolf data split` scans all)",
    )


class QuantGroupConfig(Section):
    """How one tensor group (attn, mlp, embed, gate) is quantized."""

    bits: int = Field(8, ge=2, le=8, description="signed per-row integers in [-(2^(b-1)-1), 2^(b-1)-1]")
    clip: Literal["percentile", "search", "sdclip"] = Field(
        "percentile", description="percentile of |w| per row; search: min-MSE quantile (#374 GPTQ-lite); sdclip: k*std(row) (#1394)"
    )
    percentile: float = Field(99.99984, gt=0, le=100, description="clip percentile (the baseline's)")
    sdclip_k: float = Field(12.85, gt=0, description="sdclip: clip = k * std(row) (#1394: 12.85 int6, 20 int8)")
    gptq: bool = Field(False, description="Hessian-aware GPTQ rounding (#1019 on)")


# What a run imports to train, quantize and score (conservatively every such file, compliance.md R18);
# tooling that never runs in a submission (CLI, notebook driver, reports, data preparation) is left out.
RUNTIME_CODE_FILES = (
    "pgolf_core/__init__.py", "pgolf_core/atomic.py", "pgolf_core/config.py", "pgolf_core/dist.py",
    "pgolf_core/evaluate.py", "pgolf_core/train.py", "pgolf_core/scoring.py", "pgolf_core/stages.py",
    "pgolf_core/pipeline/*.py", "pgolf_core/compliance.py", "pgolf_core/ngram.py",
    "pgolf_core/data/__init__.py", "pgolf_core/data/shards.py", "pgolf_core/data/loader.py",
    "pgolf_core/data/tokenizer.py", "pgolf_core/data/tokenizer_bytes.py", "pgolf_core/data/overlap.py",
    "pgolf_core/model/*.py", "pgolf_core/optim/*.py", "pgolf_core/quant/*.py", "pgolf_core/ttt/*.py",
)


class QuantConfig(Section):
    """Post-training quantization and the artifact (baseline: the challenge's per-row int8 + zlib-9)."""

    scheme: Literal["baseline_int8", "groups"] = Field(
        "baseline_int8", description="baseline_int8: the challenge's exact export; groups: per-group settings below"
    )
    attn: QuantGroupConfig = QuantGroupConfig()
    mlp: QuantGroupConfig = QuantGroupConfig()
    embed: QuantGroupConfig = QuantGroupConfig()
    gate: QuantGroupConfig = QuantGroupConfig()
    keep_float_max_numel: int = Field(65536, ge=0, description="float tensors this small stay fp16 (control tensors fp32)")
    quant_gates: bool = Field(False, description="groups: attention-gate weights skip the fp16 passthrough, per-row intN with the gate settings (#1736 QuantGate, ~40 KB)")
    search_quantiles: list[float] = Field(
        default_factory=lambda: [0.999, 0.9995, 0.9999, 0.99999, 1.0], description="clip search candidates"
    )
    gptq_block_size: int = Field(128, gt=0)
    gptq_damp: float = Field(0.01, ge=0, description="damping: fraction of mean(diag H) added to the diagonal")
    gptq_act_order: bool = Field(True, description="quantize columns in order of decreasing diag(H)")
    calib_source: Literal["train", "self"] = Field("train", description="Hessians from training batches or self-generated text; never validation")
    calib_batches: int = Field(64, gt=0, description="train: calibration batches")
    calib_seqs: int = Field(64, gt=0, description="self: generated sequences")
    calib_temperature: float = Field(0.8, gt=0, description="self: sampling temperature (#1019)")
    calib_reserve_seconds: float = Field(12.0, ge=0, description="taken off the training cap so calibration fits in it")
    lqer_top_k: int = Field(0, ge=0, description="LQER: low-rank error correction of the K worst tensors (0: off; #1851: 3)")
    lqer_rank: int = Field(4, gt=0)
    lqer_group: int = Field(64, gt=0, description="INT4 group size of the B factor")
    qat: bool = Field(False, description="fake-quantize weights in training (STE), matching the export scheme")
    qat_start_lr_mult: float = Field(0.15, ge=0, le=1, description="QAT switches on once the LR multiplier drops below this")
    compressor: Literal["auto", "zlib", "lzma", "brotli"] = Field("zlib", description="auto: try all, keep the smallest")
    byte_shuffle: Literal["auto", "off", "on"] = Field("off", description="byte-shuffle / per-group streams before compressing")
    code_files: list[str] = Field(
        default_factory=lambda: list(RUNTIME_CODE_FILES),
        description="globs of the code counted in the artifact (default: every module a run loads to train and score)",
    )
    byte_cap: int = Field(16_000_000, gt=0, description="decimal artifact cap: code + compressed model")


class TTTConfig(Section):
    """Legal score-first test-time training (records.md F, compliance.md R6/R12); off by default."""

    enabled: bool = False
    mode: Literal["chunk", "lora", "phased"] = Field("chunk", description="chunk: #461/#549; lora: per-document LoRA (#1530); phased: #1626")
    chunk_tokens: int = Field(32768, gt=0, description="chunk: score a chunk, then train on it")
    epochs: int = Field(3, ge=0)
    lr: float = Field(0.002, ge=0)
    lr_schedule: Literal["cosine", "constant"] = Field("cosine", description="across chunks")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, description="chunk/prequant: optimizer weight decay")
    grad_clip: float = Field(1.0, ge=0)
    batch_seqs: int = Field(32, gt=0)
    adapt: Literal["all", "lora"] = Field("all", description="chunk: all parameters (minus frozen blocks) or LoRA adapters at lora_lr")
    freeze_first_blocks: int = Field(0, ge=0, description="chunk/phased: blocks kept frozen (549 ran with 0)")
    lora_rank: int = Field(8, gt=0)
    lora_alpha: float = Field(0.0, ge=0, description="LoRA scale alpha/r (0: no scale, as #1530-#1769)")
    lora_targets: list[Literal["q", "k", "v", "o", "mlp", "head"]] = Field(default_factory=lambda: ["q", "v", "head"])
    lora_lr: float = Field(0.01, ge=0)
    lora_beta1: float = Field(0.9, ge=0, lt=1, description="Adam(W) betas of the LoRA step (LORA0: 0.9, 0.95; #1530: 0, 0.999)")
    lora_beta2: float = Field(0.95, ge=0, lt=1)
    lora_weight_decay: float = Field(0.0, ge=0, description="#1530/#1855: 0.5")
    lora_chunk_tokens: int = Field(256, gt=0, description="lora: score a chunk of a document, then one step")
    lora_window: int = Field(1024, gt=0, description="lora: context window within the document")
    lora_batch_docs: int = Field(64, gt=0)
    phased_prefix_docs: int = Field(2000, gt=0, description="phased: documents scored before the global passes end")
    phased_phases: int = Field(3, gt=0)
    phased_lr: float = Field(0.001, ge=0)
    prequant_ablation: bool = Field(
        False, description="NON-COMPLIANT ablation: fine-tune on validation tokens before scoring (PR #1423 family)"
    )
    prequant_epochs: int = Field(6, ge=0)
    prequant_lr: float = Field(0.0005, ge=0)

    @model_validator(mode="after")
    def _lora_window(self) -> TTTConfig:
        if self.lora_window < self.lora_chunk_tokens:
            raise ValueError(f"ttt.lora_window ({self.lora_window}) must be at least ttt.lora_chunk_tokens ({self.lora_chunk_tokens})")
        return self


class NgramConfig(Section):
    """Legal n-gram cache mixed with the model (compliance.md 2.8); off by default."""

    enabled: bool = False
    max_order: int = Field(4, ge=2, description="orders 2..max_order")
    table_rows: int = Field(16384, gt=0, description="hashed context rows per order, each a full next-token count row")
    min_count: int = Field(2, ge=1, description="a context is used once its row holds this many counts")
    smoothing: float = Field(
        0.01, gt=0, description="additive smoothing per token; each row backs off to the order below with mass smoothing*V "
        "(smoke val, unigram model, entropy mixer: 3.970 nats at 0.01 vs 5.026 at 0.5)"
    )
    alpha_rule: Literal["fixed", "entropy", "hedge"] = "entropy"
    alpha: float = Field(0.1, ge=0, le=1, description="fixed: mixing weight of the cache")
    alpha_min: float = Field(0.05, ge=0, le=1)
    alpha_max: float = Field(0.6, ge=0, le=1)
    entropy_center: float = Field(3.0, description="entropy: alpha rises with the model's entropy around this (nats)")
    entropy_slope: float = Field(2.0)
    hedge_beta: float = Field(2.0, gt=0)
    segment_tokens: int = Field(64, gt=0, description="tables and mixer weights update after each scored segment")


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
            raise ValueError(f"eval.stride ({self.eval.stride}) must not exceed the eval sequence length ({seq})")
        return self

    @property
    def eval_seq_len(self) -> int:
        return self.eval.seq_len or self.train.train_seq_len


# --------------------------------------------------------------------------------------------------
# Loading, merging, errors
# --------------------------------------------------------------------------------------------------


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _section_model(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``loc`` (for listing valid keys)."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _describe(err: dict) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "<top level>"
    kind, given = err["type"], err.get("input")
    if kind == "extra_forbidden":
        owner = _section_model(loc)
        valid = sorted(owner.model_fields) if owner else []
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean {'.'.join([*map(str, loc[:-1]), near[0]])!r}?)" if near else ""
        where = f"in {'.'.join(map(str, loc[:-1]))!r}" if len(loc) > 1 else "at the top level"
        return f"{key}: unknown key{hint}; valid keys {where}: {', '.join(valid)}"
    if kind == "literal_error":
        return f"{key}: got {given!r}; expected one of {err['ctx']['expected']}"
    if kind.endswith("_type") or kind in ("model_type", "model_attributes_type"):
        want = kind.removesuffix("_type").replace("model", "mapping").replace("_attributes", "")
        return f"{key}: expected {want}, got {type(given).__name__} {given!r}"
    if kind == "value_error":
        return err["msg"].removeprefix("Value error, ")  # our validators name their keys themselves
    return f"{key}: {err['msg']} (got {given!r})"


def config_from_dict(raw: Any, source: str = "<dict>") -> RunConfig:
    """Validate a plain dict into a RunConfig; errors name ``source`` and every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        lines = [_describe(err) for err in e.errors()]
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(lines)) from None


def read_params_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: 'extends' cycle: {' -> '.join(map(str, (*chain, path)))}")
    if not path.is_file():
        where = f" (extended by {chain[-1]})" if chain else ""
        raise ConfigError(f"{path}: params file not found{where}")
    raw = yaml_load(path.read_text(encoding="utf-8"), str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop("extends", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'extends' must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, read_params_tree(path.parent / base, (*chain, path)))
    return deep_merge(merged, raw)


def parse_overrides(items: list[str] | dict[str, Any] | None) -> dict:
    """``["model.num_layers=11", "train.seed=7"]`` (or a dotted dict) -> nested dict, values as YAML."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else []
    if not isinstance(items, dict):
        parsed = []
        for item in items:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. model.num_layers=11")
            k, v = item.split("=", 1)
            parsed.append((k.strip(), yaml_load(v, f"override {item!r}")))
        pairs = parsed
    out: dict = {}
    for dotted, value in pairs:
        node = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r}: {p!r} is set to a value and also used as a section")
        node[parts[-1]] = value
    return out


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Load ``path`` (following ``extends``), apply overrides, validate. The only door into a RunConfig."""
    path = Path(path)
    raw = read_params_tree(path)
    # A params file may carry values for a notebook's parameters cell; pgolf_core.suite validates them
    # against the notebook. They are not part of the run's config.
    notebook = raw.pop("notebook", {})
    if not isinstance(notebook, dict):
        raise ConfigError(f"{path}: 'notebook' must be a mapping of notebook parameters, got {type(notebook).__name__}")
    over = parse_overrides(overrides)
    source = str(path) + (f" with overrides {overrides!r}" if over else "")
    return config_from_dict(deep_merge(raw, over), source)


def to_dict(cfg: RunConfig) -> dict:
    return cfg.model_dump(mode="json")


def to_yaml(cfg: RunConfig) -> str:
    """The fully resolved config, every key present, in section order: what reports and runs record."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def describe_schema() -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, description) for every leaf field: the frozen key surface."""
    rows: list[tuple[str, str, Any, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            tname = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
            default = f.default_factory() if f.default_factory is not None else f.default
            rows.append((f"{prefix}{name}", tname, default, f.description or ""))

    walk(RunConfig, "")
    return rows
