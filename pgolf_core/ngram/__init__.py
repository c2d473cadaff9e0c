"""The legal n-gram eval cache mixed with the model, as a ``Scorer``.

A hashed *context* selects a full row of V next-token counts, normalized by its own sum, and mixing
combines full distributions with weights that depend on the prefix alone, so every position is
scored from a distribution fixed before its token is read (the shape the maintainers accept, unlike
the target-keyed #909 family ruled out in #779/#982).

Modules: cache (context hashing and the count tables), mixers (fixed / entropy-adaptive / Hedge),
scorer (the score-first loop). The models it mixes with (``ModelLogprobs`` and its adapters, e.g. a
GPT through the evaluation's windows) live in ``pgolf_core.eval.logprobs`` and are re-exported here.

    model = UniformModel(1024)                       # or WindowedTorchModel(gpt, seq_len=...)
    scorer = NgramScorer(model, cfg.ngram)           # a pgolf_core.scoring.Scorer
    result = scorer.score_stream(val_tokens)         # per-position NLLs, each scored once
"""

from pgolf_core.eval.logprobs import (
    FullStreamModel,
    ModelLogprobs,
    ModelScorer,
    UniformModel,
    UnigramModel,
    WindowedTorchModel,
)
from pgolf_core.ngram.cache import NgramCache, context_row, context_rows
from pgolf_core.ngram.mixers import (
    HEDGE_EXPERTS,
    HEDGE_LOGW_FLOOR,
    EntropyMixer,
    FixedMixer,
    HedgeMixer,
    Mixer,
    build_mixer,
    entropy_alpha,
    entropy_nats,
)
from pgolf_core.ngram.scorer import NgramScorer

__all__ = [
    "HEDGE_EXPERTS",
    "HEDGE_LOGW_FLOOR",
    "EntropyMixer",
    "FixedMixer",
    "FullStreamModel",
    "HedgeMixer",
    "Mixer",
    "ModelLogprobs",
    "ModelScorer",
    "NgramCache",
    "NgramScorer",
    "UniformModel",
    "UnigramModel",
    "WindowedTorchModel",
    "build_mixer",
    "context_row",
    "context_rows",
    "entropy_alpha",
    "entropy_nats",
]
