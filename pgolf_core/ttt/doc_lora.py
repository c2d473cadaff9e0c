"""Per-document LoRA test-time training (record 2026-03-17_LoRA_TTT "LORA0"; re-added in #1530; inside
phased TTT).

Documents start at BOS (id 1); a document's targets run from the token after its BOS up to and
including the next document's BOS (it predicts its own end). Each document is cut into chunks of
``lora_chunk_tokens`` targets; chunk i is scored with a window of at most ``lora_window`` tokens of the
same document, then (if the document has a later chunk) one Adam(W) step on that chunk's mean loss
trains the document's own adapters. Adapters and optimizer state are reset for every document; the
base weights are frozen. Measured: LORA0 ablation -0.0031 bpb from the LoRA steps (on top of doc
isolation -0.011 and chunking -0.0227); #1530 ~-0.008 nats vs strided evaluation (1.08325 -> 1.07258).

Batching (#1530+): ``lora_batch_docs`` documents run together, each with its own adapter slot; rows
are right-padded to chunk i's nominal window length (a causal model never looks right, and the shape
never depends on the batch-mates), the summed per-document mean losses give each slot exactly its own
gradient, and Adam is elementwise, so a batch equals the documents one by one.

Window placement: chunk i's window starts at max(doc start, nominal chunk end - window), where the
nominal end ignores where the document actually ends. The records end the window at the true chunk
end, which lets a target's context depend on whether a later token is a BOS; this way it depends on
the prefix only (compliance T1b).

Long-context and short-document levers (#1953, #2014; the defaults leave everything as above):
``context_len`` sets the window (#1953: 2560, with the no_qv adapter mask ``lora_targets: [k, o, mlp,
head]`` -0.00058 bpb on #1855; #2014: 3072); ``local_lr_mult`` scales the LoRA lr (#1953: 0.75, the
best of a 0.5-2.0 sweep); ``short_doc_chunks`` picks a batch's chunk size from its longest document
(#2014: <= 256 targets -> 8, <= 2000 -> 24, else 48; more, smaller score-then-update steps for short
documents). The chunk size so depends on where the batch's documents end, i.e. on later tokens: each
target is still scored before any update that uses it (T5 passes), but a document's first scores
change with its length, and the future-perturbation checks fail (T1, T1b, T1c on a probe): the rule,
as #2014 runs it, is not causal in the strict sense those checks test. ``include_tail`` false scores only the
first whole multiple of the context length (the older loaders' truncation; #2014 scores the tail).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pgolf_core.config import TTTConfig
from pgolf_core.data.tokenizer import BOS_ID
from pgolf_core.dist import DistInfo
from pgolf_core.eval import (
    Capture,
    EvalResult,
    ScoreSums,
    TargetBytes,
    window_batch,
)
from pgolf_core.runtime import autocast_context
from pgolf_core.scoring import ScoreEvents
from pgolf_core.ttt.common import EvalSpec, Timer, TTTInputs, TTTScorer, Work, build_optimizer, freeze, start
from pgolf_core.ttt.lora import LoRASet
from pgolf_core.ttt.tilt import TokenTilt


@dataclass(frozen=True)
class Documents:
    """Document d: BOS (or stream start) at ``starts[d]``, targets ``starts[d] + 1 .. ends[d]``."""

    starts: np.ndarray  # int64 [D]
    ends: np.ndarray  # int64 [D], inclusive

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        """Targets per document."""
        return self.ends - self.starts


def batch_chunk_tokens(longest: int, ttt: TTTConfig) -> int:
    """The chunk size of a LoRA batch whose longest document has ``longest`` targets: the first
    ``short_doc_chunks`` rule [max_len, chunk] with longest <= max_len, else ``lora_chunk_tokens``."""
    for max_len, chunk in ttt.short_doc_chunks:
        if longest <= max_len:
            return chunk
    return ttt.lora_chunk_tokens


def scored_length(n: int, ttt: TTTConfig, seq_len: int) -> int:
    """Tokens of an ``n``-token stream whose targets the TTT scores: all of them with ``include_tail``;
    else a whole number of context lengths (``context_len``, or ``seq_len``) plus one."""
    if ttt.include_tail:
        return n
    ctx = ttt.context_len or seq_len
    keep = (n - 1) // ctx * ctx + 1
    if keep < 2:
        raise ValueError(
            f"ttt.include_tail false: the {n - 1:,} targets do not fill one {ctx}-token context, so none "
            "would be scored"
        )
    return keep


def find_documents(tokens: np.ndarray, bos_id: int = BOS_ID) -> Documents:
    """Documents of a stream by BOS; every target 1..N-1 belongs to exactly one of them. Tokens before
    the first BOS (a stream cut mid-document) form a document of their own."""
    tokens = np.asarray(tokens)
    n = tokens.shape[0]
    starts = np.flatnonzero(tokens[: n - 1] == bos_id).astype(np.int64)
    if starts.size == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts]).astype(np.int64)
    ends = np.append(starts[1:], n - 1).astype(np.int64)
    return Documents(starts, ends)


def doc_chunk(doc_start: int, doc_end: int, i: int, chunk: int, window: int) -> tuple[int, int, int, int]:
    """(window start, window length, first target, end target exclusive) of chunk i of a document."""
    first = doc_start + 1 + i * chunk
    end = min(first + chunk, doc_end + 1)
    ws = max(doc_start, doc_start + (i + 1) * chunk - window)
    return ws, end - 1 - ws, first, end


class DocLoRARunner:
    """Scores documents with per-document LoRA TTT on a frozen base ``model`` (shared by the phased
    variant, which changes the base between calls).

    Invariant: no update uses a token before it is scored. A document's chunk i is scored (NLLs
    committed, ``events.scored``) before the one step that uses its targets (``events.updated``), and
    that step only changes this document's adapters, which are reset before any other document.
    With ``tilt`` the committed NLLs are tilted (``TokenTilt.apply``); the step's loss never is.
    """

    def __init__(
        self,
        model: nn.Module,
        ttt: TTTConfig,
        spec: EvalSpec,
        tokens_d: torch.Tensor,
        device: torch.device,
        tilt: TokenTilt | None = None,
    ):
        self.model, self.ttt, self.spec, self.tokens_d, self.device = model, ttt, spec, tokens_d, device
        self.tilt = tilt
        freeze(model)
        self.lora = LoRASet(model, ttt.lora_targets, ttt.lora_rank, ttt.lora_alpha, slots=ttt.lora_batch_docs)
        self.window = ttt.context_len or ttt.lora_window
        self.lr = ttt.lora_lr * ttt.local_lr_mult  # x 1.0 is exact: the default changes nothing
        self.steps = 0
        self.docs_scored = 0
        self.chunk_batches: dict[str, int] = {}  # chunk size -> LoRA batches scored with it

    def score(
        self,
        docs: Documents,
        ids: np.ndarray,
        sums: ScoreSums,
        target_bytes: TargetBytes | None,
        events: ScoreEvents | None,
        capture: Capture | None,
    ) -> None:
        """Score documents ``ids``, ``lora_batch_docs`` at a time, longest first within this call;
        ``target_bytes`` (on the device; None: tokens only) counts the scored targets' bytes."""
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[np.argsort(-docs.lengths[ids], kind="stable")]
        for b in range(0, len(ids), self.ttt.lora_batch_docs):
            self._score_batch(
                docs, ids[b : b + self.ttt.lora_batch_docs], sums, target_bytes, events, capture
            )
            if capture is not None and capture.done:
                return

    def _score_batch(self, docs, batch, sums, target_bytes, events, capture) -> None:
        ttt, device, T = self.ttt, self.device, self.spec.temperature
        self.lora.reset()
        self.lora.enabled = True
        opt = build_optimizer(
            list(self.lora.parameters()),
            "adamw",
            self.lr,
            weight_decay=ttt.lora_weight_decay,
            betas=(ttt.lora_beta1, ttt.lora_beta2),
        )
        chunk = batch_chunk_tokens(int(docs.lengths[batch].max()), ttt)
        self.chunk_batches[str(chunk)] = self.chunk_batches.get(str(chunk), 0) + 1
        n_chunks = -(-docs.lengths[batch] // chunk)
        for i in range(int(n_chunks.max())):
            slots = np.flatnonzero(n_chunks > i)
            geo = [
                doc_chunk(docs.starts[batch[s]], docs.ends[batch[s]], i, chunk, self.window) for s in slots
            ]
            ws, lens, firsts, ends = (np.array(v, dtype=np.int64) for v in zip(*geo))
            # Pad to the nominal window length of chunk i, not to the longest row: the shape then
            # depends on i alone, so a document's scores cannot change with its batch-mates (T1).
            x, y = window_batch(self.tokens_d, ws, min((i + 1) * chunk, self.window))
            offsets_T = torch.arange(x.shape[1], device=device)
            lo_B1 = torch.as_tensor(firsts - ws - 1, device=device)[:, None]
            mask_BT = (offsets_T >= lo_B1) & (offsets_T < torch.as_tensor(lens, device=device)[:, None])
            stepping = n_chunks[slots] > i + 1
            self.lora.slot_index = torch.as_tensor(slots, device=device)
            with torch.set_grad_enabled(bool(stepping.any())), autocast_context(device, self.spec.autocast):
                logits_BTV = self.lora.logits(x).float()
                train_nll_BT = F.cross_entropy(
                    logits_BTV.flatten(0, 1), y.flatten(), reduction="none"
                ).view_as(y)
            scored_BT = train_nll_BT.detach()
            if T != 1.0:
                with torch.no_grad():
                    scored_BT = F.cross_entropy(
                        (logits_BTV / T).flatten(0, 1), y.flatten(), reduction="none"
                    ).view_as(y)
            pos_BT = torch.as_tensor(ws, device=device)[:, None] + 1 + offsets_T
            if self.tilt is not None:  # the committed NLL only: train_nll_BT stays untilted
                scored_BT = self.tilt.apply(scored_BT, logits_BTV, y, pos_BT, mask_BT, T)
            positions = pos_BT[mask_BT]
            nbytes = None
            if target_bytes is not None:
                nbytes = target_bytes.targets(x[mask_BT], y[mask_BT], positions)
            sums.add(positions, scored_BT[mask_BT], nbytes)  # committed: the step below cannot change it
            if events is not None:
                events.scored(positions.cpu().numpy())
            if capture is not None and not capture.done:
                self._capture(capture, logits_BTV.detach(), ws, firsts, ends)
            if not stepping.any():
                continue
            counts_B = mask_BT.sum(1).clamp(min=1)
            step_B = torch.as_tensor(stepping, device=device)
            loss = ((train_nll_BT * mask_BT).sum(1) / counts_B)[step_B].sum()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            self.steps += 1
            if events is not None:
                used = [np.arange(f, e) for f, e, s in zip(firsts, ends, stepping) if s]
                events.updated(np.concatenate(used), "lora_step")
        self.lora.slot_index = None
        self.docs_scored += len(batch)

    def _capture(self, capture: Capture, logits_BTV: torch.Tensor, ws, firsts, ends) -> None:
        for row, (w, f, e) in enumerate(zip(ws, firsts, ends)):
            wanted = capture.positions[(capture.positions >= f) & (capture.positions < e)]
            if wanted.size:
                probs = torch.softmax(logits_BTV[row].double() / capture.temperature, dim=-1).cpu().numpy()
                for p in wanted:
                    capture.probs[int(p)] = probs[int(p) - int(w) - 1]


def split_docs_for_ranks(docs: Documents, ids: np.ndarray, dist: DistInfo) -> np.ndarray:
    """This rank's documents: longest first, dealt round-robin (balanced work; the records instead
    claim batches through a shared counter). Results do not depend on the deal: documents are
    independent."""
    ids = np.asarray(ids, dtype=np.int64)
    order = ids[np.argsort(-docs.lengths[ids], kind="stable")]
    return np.sort(order[dist.rank :: dist.world_size])


def start_documents(inputs: TTTInputs) -> tuple[Work, Documents, DocLoRARunner]:
    """``start`` plus the documents to score (those of the whole stream, or of its first
    ``scored_length`` tokens) and a LoRA runner on the working copy (doc_lora, phased)."""
    w = start(inputs)
    keep = scored_length(w.n, inputs.ttt, inputs.spec.seq_len)
    return (
        w,
        find_documents(np.asarray(inputs.tokens)[:keep]),
        DocLoRARunner(w.model, inputs.ttt, inputs.spec, w.tokens_d, w.device, w.tilt),
    )


def finish_documents(w: Work, docs: Documents, runner: DocLoRARunner, info: dict) -> EvalResult:
    """``w.finish`` with the levers in the info; positions past the scored documents (the tail left out
    by ``include_tail`` false) are nan in the kept stream and carry no bytes."""
    info = {**info, "window": runner.window, "lora_lr": runner.lr, "chunk_batches": runner.chunk_batches}
    res = w.finish(info)
    end = int(docs.ends[-1]) + 1
    if res.nll is not None and end < w.n:
        res.nll[end:] = np.nan
        if res.byte_counts is not None:
            res.byte_counts[end:] = 0
    return res


def doc_lora_ttt(inputs: TTTInputs) -> EvalResult:
    """Per-document LoRA TTT over the whole stream on a copy of ``inputs.model``. All ranks call it
    together."""
    w, docs, runner = start_documents(inputs)
    timer = Timer()
    ts = time.perf_counter()
    mine = split_docs_for_ranks(docs, np.arange(len(docs)), inputs.dist)
    runner.score(docs, mine, w.sums, w.target_bytes, inputs.events, inputs.capture)
    timer.add("score_seconds", ts)
    info = {
        "mode": "lora",
        "docs": len(docs),
        "steps": runner.steps,
        "targets": list(inputs.ttt.lora_targets),
        **timer.seconds,
    }
    return finish_documents(w, docs, runner, info)


class DocLoRAScorer(TTTScorer):
    """Per-document LoRA TTT as a ``Scorer``: each chunk's ``scored`` precedes the ``updated("lora_step")``
    of the step on it; documents never share adapters; the model passed in is never changed."""

    name = "ttt_lora"

    variant = staticmethod(doc_lora_ttt)
