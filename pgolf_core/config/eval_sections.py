"""The evaluation-side sections: ``eval`` (with its ``eval.tilt`` sub-section), ``ttt`` and ``ngram``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pgolf_core.config.section import Section


class TiltConfig(Section):
    """The token-only n-gram tilt (#2130 -> #2135, leaderboard #1 at 1.05651; the legal tilt is worth about
    -0.001 bpb in #2130's single-seed notes): where the token that most often followed the same
    ``order - 1`` tokens earlier in the scored stream has a share of at least ``threshold``, the scored
    distribution becomes p'(a) = p(a) e^{beta [a = hint]} / Z (stages q_tilt, q_ttt_tilt; off by default)."""

    enabled: bool = Field(
        False,
        description="stages q_tilt (sliding window + the tilt, #2135 ~-0.001 bpb) and q_ttt_tilt (the TTT + "
        "the tilt on its scored loss, #2135's score; needs ttt.enabled)",
    )
    order: int = Field(
        16, description="context = the previous order - 1 tokens (#2135 TOKEN_ORDER 16; 8 was worse)"
    )
    threshold: float = Field(
        0.8, description="tilt where the hint's share of its context's continuations is >= this (#2135: 0.8)"
    )
    beta: float = Field(
        2.625, description="log-boost of the hint (#2135 TOKEN_BOOST 2.625; 3.0 measured 0.0002 bpb worse)"
    )

    @model_validator(mode="after")
    def _ranges(self) -> TiltConfig:
        if self.order < 2:
            raise ValueError(f"eval.tilt.order ({self.order}) must be at least 2 (one context token)")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"eval.tilt.threshold ({self.threshold}) must be in (0, 1]")
        if not self.beta > 0:
            raise ValueError(f"eval.tilt.beta ({self.beta}) must be a finite number > 0")
        return self


class EvalConfig(Section):
    """Validation scoring. stride 0 = non-overlapping windows; stride s > 0 = sliding window (each token
    scored with up to seq_len - s tokens of context; the records use 64)."""

    seq_len: int = Field(0, ge=0, description="0: train.train_seq_len")
    batch_tokens: int = Field(524288, gt=0, description="tokens per evaluation batch, all ranks together")
    stride: int = Field(0, ge=0, description="sliding-window stride (0: off; the records use 64)")
    sliding_batch_seqs: int = Field(32, gt=0, description="windows per forward in sliding evaluation")
    temperature: float = Field(1.0, gt=0)
    probe_tokens: int = Field(
        4096,
        ge=0,
        description="compliance checks T1-T5 run each stage's scorer on a probe of this many validation "
        "tokens in all, drawn from probe_windows places (0: skip)",
    )
    probe_windows: int = Field(
        4,
        ge=1,
        description="the probe's windows, at seeded random offsets across the whole validation stream "
        "(each starts at a document where its part of the stream has one), scored as one stream",
    )
    probe_seed: int = Field(0, ge=0, description="seeds the probe's offsets, T1 cuts and T1b/T2 positions")
    probe_cuts: int = Field(
        16, ge=1, description="T1 future-perturbation cuts over the probe (one pass of the probe each)"
    )
    split_check_tokens: int = Field(
        20_000_000,
        ge=0,
        description="T9 looks for copied validation documents in this many training tokens (0: skip; "
        "`pgolf data split` scans all)",
    )
    tilt: TiltConfig = TiltConfig()


class TTTConfig(Section):
    """Legal score-first test-time training: each token is scored before any update that could use it
    (the rule of PR #461, adopted by #549); off by default."""

    enabled: bool = False
    mode: Literal["chunk", "lora", "phased"] = Field(
        "chunk", description="chunk: #461/#549; lora: per-document LoRA (#1530); phased: #1626"
    )
    chunk_tokens: int = Field(32768, gt=0, description="chunk: score a chunk, then train on it")
    epochs: int = Field(3, ge=0)
    lr: float = Field(0.002, ge=0)
    lr_schedule: Literal["cosine", "constant"] = Field("cosine", description="across chunks")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, description="chunk/prequant: optimizer weight decay")
    grad_clip: float = Field(1.0, ge=0)
    batch_seqs: int = Field(32, gt=0)
    adapt: Literal["all", "lora"] = Field(
        "all", description="chunk: all parameters (minus frozen blocks) or LoRA adapters at lora_lr"
    )
    freeze_first_blocks: int = Field(0, ge=0, description="chunk/phased: blocks kept frozen (549 ran with 0)")
    lora_rank: int = Field(8, gt=0)
    lora_alpha: float = Field(0.0, ge=0, description="LoRA scale alpha/r (0: no scale, as #1530-#1769)")
    lora_targets: list[Literal["q", "k", "v", "o", "mlp", "head"]] = Field(
        default_factory=lambda: ["q", "v", "head"]
    )
    lora_lr: float = Field(0.01, ge=0)
    lora_beta1: float = Field(
        0.9,
        ge=0,
        lt=1,
        description="Adam(W) betas of the LoRA step (2026-03-17_LoRA_TTT: 0.9, 0.95; #1530: 0, 0.999)",
    )
    lora_beta2: float = Field(0.95, ge=0, lt=1)
    lora_weight_decay: float = Field(0.0, ge=0, description="#1530/#1855: 0.5")
    lora_chunk_tokens: int = Field(256, gt=0, description="lora: score a chunk of a document, then one step")
    lora_window: int = Field(1024, gt=0, description="lora: context window within the document")
    lora_batch_docs: int = Field(64, gt=0)
    context_len: int = Field(
        0,
        ge=0,
        description="lora/phased: TTT context length, apart from the training and eval seq lens: the "
        "per-document window and the global passes' sequence length (#1953: 2560, -0.00058 bpb with "
        "no_qv; #2014: 3072); 0: lora_window for the windows, the eval seq len for the passes",
    )
    local_lr_mult: float = Field(
        1.0, gt=0, description="lora/phased: the per-document LoRA lr is lora_lr * this (#1953: 0.75)"
    )
    short_doc_chunks: list[list[int]] = Field(
        default_factory=list,
        description="lora/phased: [[max_len, chunk], ...] by increasing max_len: a LoRA batch whose longest "
        "document has <= max_len targets uses chunks of that size, else lora_chunk_tokens (#2014: "
        "[[256, 8], [2000, 24]] with 48; [] off). It reads where documents end, so T1 fails with it",
    )
    include_tail: bool = Field(
        True,
        description="lora/phased: score every target handed to the TTT (#2014 EVAL_INCLUDE_TAIL=1); false: "
        "only the first whole multiple of the context length (the older loaders' truncation)",
    )
    phased_prefix_docs: int = Field(
        2000, gt=0, description="phased: documents scored before the global passes end"
    )
    phased_phases: int = Field(3, gt=0)
    phased_lr: float = Field(0.001, ge=0)
    prequant_ablation: bool = Field(
        False,
        description="NON-COMPLIANT ablation: fine-tune on validation tokens before scoring (PR #1423 family)",
    )
    prequant_epochs: int = Field(6, ge=0)
    prequant_lr: float = Field(0.0005, ge=0)

    @model_validator(mode="after")
    def _lora_window(self) -> TTTConfig:
        if self.lora_window < self.lora_chunk_tokens:
            raise ValueError(
                f"ttt.lora_window ({self.lora_window}) must be at least "
                f"ttt.lora_chunk_tokens ({self.lora_chunk_tokens})"
            )
        if self.context_len and self.context_len < self.lora_chunk_tokens:
            raise ValueError(
                f"ttt.context_len ({self.context_len}) must be 0 or at least "
                f"ttt.lora_chunk_tokens ({self.lora_chunk_tokens})"
            )
        window = self.context_len or self.lora_window
        last = 0
        for rule in self.short_doc_chunks:
            if len(rule) != 2 or rule[0] <= last or not 0 < rule[1] <= window:
                raise ValueError(
                    f"ttt.short_doc_chunks entry {rule}: expected [max_len, chunk] with max_len above the "
                    f"previous entry's ({last}) and 0 < chunk <= the document window ({window})"
                )
            last = rule[0]
        return self


class NgramConfig(Section):
    """An n-gram cache mixed with the model, in its legal form: a normalized full-vocabulary distribution
    from the scored context only, tables updated after scoring (unlike PR #909's); off by default."""

    enabled: bool = False
    max_order: int = Field(4, ge=2, description="orders 2..max_order")
    table_rows: int = Field(
        16384, gt=0, description="hashed context rows per order, each a full next-token count row"
    )
    min_count: int = Field(2, ge=1, description="a context is used once its row holds this many counts")
    smoothing: float = Field(
        0.01,
        gt=0,
        description="additive smoothing per token; each row backs off to the order below with mass "
        "smoothing*V "
        "(smoke val, unigram model, entropy mixer: 3.970 nats at 0.01 vs 5.026 at 0.5)",
    )
    alpha_rule: Literal["fixed", "entropy", "hedge"] = "entropy"
    alpha: float = Field(0.1, ge=0, le=1, description="fixed: mixing weight of the cache")
    alpha_min: float = Field(0.05, ge=0, le=1)
    alpha_max: float = Field(0.6, ge=0, le=1)
    entropy_center: float = Field(
        3.0, description="entropy: alpha rises with the model's entropy around this (nats)"
    )
    entropy_slope: float = Field(2.0)
    hedge_beta: float = Field(2.0, gt=0)
    segment_tokens: int = Field(
        64, gt=0, description="tables and mixer weights update after each scored segment"
    )
