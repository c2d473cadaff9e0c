"""The token-only n-gram tilt on the TTT's scored loss (stage q_ttt_tilt).

#2135 (leaderboard #1, 1.05651) scores phased TTT with the tilt of ``pgolf_core.eval.tilt`` on top:
where the order-16 hint h_t is confident, the committed NLL is that of p'(a) = p(a) e^{beta [a = h]} / Z
instead of p, with p(h) read from the very forward that scored the target. The TTT's training loss
is never tilted: only what is committed changes, so every update is the plain TTT's.

- ``TokenTilt.build``: the hints of the whole stream (``build_hints``: h_t from x[:t] only), built once
  by ``common.start``, i.e. inside the TTT's timer, on every rank (deterministic, so every rank holds
  the same hints; the ranks build in parallel, so it costs one build of wall time). On the device as
  one int32 tensor: the hint where the tilt applies, -1 elsewhere.
- ``TokenTilt.apply``: a scoring forward's NLLs with the tilt added at the gated scored positions, in
  float64 (``tilt_delta``; log p(h) from a float64 log-softmax of those rows only); everywhere else the
  NLL is the plain TTT's, bit for bit.
- ``score_windows_tilted``: the chunked variant's window scoring (``eval.score_windows``) with the
  tilt; its forward returns logits, which the tilt needs besides the target's NLL.
- ``tilt_rows``: ``Scorer.predictive`` rows tilted the same way (p' explicitly renormalized).

No ``ScoreEvents.updated`` is reported for the hints: h_t is a function of the stream prefix x[:t],
like the model's own context, not state that scored tokens change, so T1 / T1b (not T5) are the checks
that see it. Documents are scored in stream order across phases, longest-first within one, so a hint
may come from a document scored later in wall time; causality is over the stream, as for #2135.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pgolf_core.config.eval_sections import TiltConfig
from pgolf_core.eval import WindowPlan, score_windows
from pgolf_core.eval.tilt import build_hints, tilt_delta, tilted_distribution
from pgolf_core.runtime import autocast_context


# Gated rows log-softmaxed in float64 at once: 2048 x V 8192 x 8 bytes = 128 MiB, whatever the share
# the tilt fires on (1.31% of #2135's stream, all of a repetitive one).
_ROWS = 2048


@dataclass(frozen=True)
class TokenTilt:
    """The tilt of one scored stream: hints on the device, the gate on the host, beta, build seconds."""

    hint_d: torch.Tensor  # int32 [N] on the scoring device: the hint where the tilt applies, else -1
    gated: np.ndarray  # bool [N]
    beta: float
    seconds: float  # the hint precompute

    @classmethod
    def build(cls, tokens: np.ndarray, knobs: TiltConfig, device: torch.device) -> TokenTilt:
        t0 = time.perf_counter()
        hints = build_hints(np.asarray(tokens, dtype=np.int64), knobs.order, knobs.threshold)
        hint = np.where(hints.gated, hints.hint, -1).astype(np.int32)
        hint_d = torch.from_numpy(hint).to(device)
        return cls(hint_d, hints.gated, knobs.beta, time.perf_counter() - t0)

    def apply(
        self,
        nll_BT: torch.Tensor,
        logits_BTV: torch.Tensor,
        y_BT: torch.Tensor,
        pos_BT: torch.Tensor,
        mask_BT: torch.Tensor,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """float64 (B, T): ``nll_BT`` plus the tilt at the positions ``mask_BT`` scores whose hint is
        gated. ``nll_BT`` is the NLL of softmax(``logits_BTV`` / ``temperature``); ``pos_BT`` the
        stream position of each target (any value where not scored). Call it outside autocast: the
        gated rows are scaled and log-softmaxed in float64."""
        out = nll_BT.detach().to(torch.float64, copy=True)
        h_BT = self.hint_d[pos_BT.clamp(0, self.hint_d.shape[0] - 1)].long()
        g_BT = mask_BT & (h_BT >= 0)
        rows_G = torch.flatten(g_BT).nonzero().squeeze(1)  # gated rows of the flattened (B T, V) logits
        h_G = h_BT.flatten()[rows_G]
        logits_NV = logits_BTV.detach().flatten(0, 1)
        lp_G = torch.empty(rows_G.shape[0], dtype=torch.float64, device=out.device)
        for a in range(0, rows_G.shape[0], _ROWS):  # float64 rows a slice at a time: bounded memory
            lp = torch.log_softmax(logits_NV[rows_G[a : a + _ROWS]].double() / temperature, dim=-1)
            lp_G[a : a + _ROWS] = lp.gather(1, h_G[a : a + _ROWS, None]).squeeze(1)
        out.view(-1)[rows_G] += tilt_delta(lp_G, y_BT.flatten()[rows_G] == h_G, self.beta)
        return out

    def info(self, committed: np.ndarray | None) -> dict:
        """What the record states: the targets tilted among those committed, and the build seconds."""
        scored = np.zeros(self.gated.size, dtype=bool)
        if committed is None:
            scored[1:] = True
        else:
            scored = np.asarray(committed) > 0
        n, tilted = int(scored.sum()), int(self.gated[scored].sum())
        return {"gated": tilted, "targets": n, "gated_frac": tilted / max(n, 1), "hint_seconds": self.seconds}


def score_windows_tilted(
    logits_fn, tilt: TokenTilt, tokens_d: torch.Tensor, plan: WindowPlan, ids: np.ndarray, **kw
) -> None:
    """``eval.score_windows`` with the tilt on the committed NLLs: NLL = cross-entropy of
    ``logits_fn(x) / temperature`` (what the plain path's NLL function computes), tilted by
    ``tilt.apply``; ``kw`` are score_windows' keywords plus ``temperature``."""
    temperature = kw.pop("temperature", 1.0)
    device, autocast = kw["device"], kw["autocast"]

    def tilted(x: torch.Tensor, y: torch.Tensor, pos_BT: torch.Tensor, mask_BT: torch.Tensor):
        with autocast_context(device, autocast):
            logits_BTV = logits_fn(x).float()
            scaled_BTV = logits_BTV if temperature == 1.0 else logits_BTV / temperature
            nll_BT = F.cross_entropy(scaled_BTV.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
        return tilt.apply(nll_BT, logits_BTV, y, pos_BT, mask_BT, temperature)

    score_windows(None, tokens_d, plan, ids, positioned_nll=tilted, **kw)


def tilt_rows(rows: np.ndarray, tokens: np.ndarray, positions: np.ndarray, knobs: TiltConfig) -> np.ndarray:
    """Predictive ``rows`` (the TTT's p at ``positions``, from the forwards that scored them) as the
    tilted p' the committed NLL is read from: the hints of the whole stream, as ``TokenTilt.build``."""
    hints = build_hints(np.asarray(tokens, dtype=np.int64), knobs.order, knobs.threshold)
    out = np.array(rows, dtype=np.float64)
    for i, j in enumerate(np.asarray(positions, dtype=np.int64)):
        if hints.gated[j]:
            out[i] = tilted_distribution(out[i], int(hints.hint[j]), knobs.beta)
    return out
