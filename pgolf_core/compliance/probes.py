"""Where the scorer checks look, and how much a scorer's own noise excuses.

- ``future_cuts``: T1's cut points, seeded and stratified over the whole probe, its last target included.
- ``probe_positions``: the positions T1b and T2 share (32 or more, both ends included).
- ``probe_offsets`` / ``probe_windows``: probe windows at seeded random offsets across a whole
  validation stream, so a check does not see only its first tokens.
- ``measure_noise`` / ``check_noise``: the scorer's noise floor (identical input scored by two fresh
  scorers). A legal scorer may be non-deterministic (an unseeded shuffle, atomics in a CUDA kernel);
  the comparisons of T1, T1b, T1c and T2 then allow ``NOISE_FACTOR`` times that floor instead of
  accusing it of reading the future.
- ``deterministic_algorithms``: torch's deterministic kernels for the probes, the setting restored after.

Every random choice takes a seed and the verdicts report it, so a failure can be replayed.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from pgolf_core.compliance.events import ScorerSource
from pgolf_core.stages import Verdict

T1_CUTS = 16  # cut points per T1 probe: one per stratum of the stream, plus its last target
PROBE_POSITIONS = 32  # positions where T1b and T2 read the predictive distribution
NOISE_FACTOR = 10.0  # a comparison allows this multiple of the measured noise floor
NOISE_CAP = 1e-2  # nats: a scorer noisier than this cannot be checked at a useful resolution
NOISE_BIAS_Z = 5.0  # |mean difference| / SE above this: the two scorings differ systematically


def _stratified(lo: int, hi: int, k: int, rng: np.random.Generator) -> list[int]:
    """k distinct integers in [lo, hi], one drawn uniformly from each of k equal strata (fewer if the
    range is smaller), so the draws spread over the whole range."""
    span = hi - lo + 1
    if span <= 0 or k <= 0:
        return []
    if k >= span:
        return list(range(lo, hi + 1))
    edges = lo + (np.arange(k + 1) * span) // k  # strata [edges[i], edges[i+1])
    return sorted(int(rng.integers(a, b)) for a, b in itertools.pairwise(edges.tolist()))


def future_cuts(n: int, *, n_cuts: int = T1_CUTS, seed: int = 0) -> list[int]:
    """T1's cut points for a stream of ``n`` tokens: the last target's predecessor n - 2 (only the last
    token changes), and ``n_cuts - 1`` seeded random cuts, one per equal stratum of 1..n-3.

    A scorer that reads the future only late in the stream, or only at some positions, is seen when a
    cut falls between such a position and the token it reads; cuts fixed in advance can be avoided."""
    if n < 3:
        return []
    rng = np.random.default_rng(seed)
    return sorted(set(_stratified(1, n - 3, n_cuts - 1, rng)) | {n - 2})


def default_cuts(n: int, *, n_cuts: int = T1_CUTS, seed: int = 0) -> list[int]:
    """The cuts T1 uses when none are given (``future_cuts``)."""
    return future_cuts(n, n_cuts=n_cuts, seed=seed)


def probe_positions(n: int, *, n_positions: int = PROBE_POSITIONS, seed: int = 0) -> np.ndarray:
    """Target positions for T1b and T2 on a stream of ``n`` tokens: 1, n - 1, and ``n_positions``
    seeded positions, one per equal stratum of 2..n-2 (all of them if the stream is shorter)."""
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.unique(np.asarray([1, n - 1, *_stratified(2, n - 2, n_positions, rng)], dtype=np.int64))


def probe_offsets(
    n_tokens: int,
    probe_tokens: int,
    *,
    n_windows: int = 4,
    seed: int = 0,
    tokens: np.ndarray | None = None,
    bos_id: int | None = None,
) -> list[int]:
    """Start offsets of ``n_windows`` probe windows of ``probe_tokens + 1`` tokens (``probe_tokens``
    targets) at seeded random places across a stream of ``n_tokens``: the stream is cut into equal
    segments and each window lies inside its own segment, so windows never overlap and cover the
    whole stream, the end included. Fewer windows when the stream is too short for that many.

    With ``tokens`` and ``bos_id``, each offset moves forward to the first BOS inside its segment that
    still leaves room for the window (document-level scorers then start at a document), if any.
    Report the offsets with the verdicts; the same seed gives the same windows.
    """
    width = int(probe_tokens) + 1
    if probe_tokens <= 0 or n_tokens < width:
        raise ValueError(
            f"a probe window needs probe_tokens + 1 = {width} tokens and probe_tokens > 0; "
            f"the stream has {n_tokens}"
        )
    k = max(1, min(int(n_windows), n_tokens // width))
    rng = np.random.default_rng(seed)
    bounds = (np.arange(k + 1) * n_tokens) // k
    offsets = []
    for a, b in itertools.pairwise(bounds.tolist()):
        last = b - width  # the latest start that keeps the window inside the segment
        off = int(rng.integers(a, last + 1))
        if tokens is not None and bos_id is not None:
            seg = np.asarray(tokens[off : last + 1])
            hits = np.flatnonzero(seg == bos_id)
            if hits.size:
                off += int(hits[0])
        offsets.append(off)
    return offsets


def probe_windows(
    tokens: np.ndarray, probe_tokens: int, *, n_windows: int = 4, seed: int = 0, bos_id: int | None = None
) -> list[tuple[int, np.ndarray]]:
    """(offset, int64 window of ``probe_tokens + 1`` tokens) for each ``probe_offsets`` window."""
    offs = probe_offsets(
        len(tokens), probe_tokens, n_windows=n_windows, seed=seed, tokens=tokens, bos_id=bos_id
    )
    return [(o, np.asarray(tokens[o : o + probe_tokens + 1], dtype=np.int64)) for o in offs]


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """torch.use_deterministic_algorithms(True, warn_only=True) inside, the previous setting restored.

    Kernels without a deterministic version still run (warn_only); their warnings are shown once. A
    setting that is already strict is left strict. cuBLAS needs CUBLAS_WORKSPACE_CONFIG set before
    CUDA starts to be deterministic; this cannot set it for a process that already uses CUDA."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if before and not warn_only:
        yield
        return
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("once", UserWarning)
            yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


@dataclass(frozen=True)
class NoiseFloor:
    """How much a scorer's NLLs move between two scorings of identical input (nats, max over positions)."""

    nats: float
    method: str  # how the second scoring was obtained
    bias: float = 0.0  # mean of (second - first) over the scored positions
    z: float = 0.0  # bias / its standard error (inf when every position moved by the same amount)

    @property
    def systematic(self) -> bool:
        """Noise averages out; memory does not: a second fresh scorer that scores the same input
        consistently lower (or higher) shares state with the first, and that is no excuse."""
        return self.nats > 0 and abs(self.z) > NOISE_BIAS_Z

    def tolerance(self, atol: float) -> float:
        """What a comparison allows: its own ``atol``, or ``NOISE_FACTOR`` times the floor if larger
        (nothing for a systematic difference)."""
        return float(atol) if self.systematic else max(float(atol), NOISE_FACTOR * self.nats)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """(max |a - b|, its index); positions nan in both count 0, nan in one only counts inf."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = np.abs(a - b)
    d = np.where(np.isnan(a) & np.isnan(b), 0.0, d)
    d = np.where(np.isnan(d), np.inf, d)
    if d.size == 0:
        return 0.0, -1
    k = int(np.argmax(d))
    return float(d[k]), k


def measure_noise(source: ScorerSource, tokens: np.ndarray, base_nll: np.ndarray) -> NoiseFloor:
    """Score ``tokens`` with a second fresh scorer and compare with ``base_nll`` (a fresh scorer's first
    pass over the same tokens).

    Both scorings start from nothing, so a difference is the scorer's noise, not memory of an earlier
    call (T1c's concern). Without a factory the second scorer is a copy made before first use: noise
    kept in a generator the scorer seeded at construction is then copied too and reads as none.
    A difference that does not average out (``NoiseFloor.systematic``) is shared state, not noise."""
    twin = source.twin()
    if twin is None:
        nll = source.scorer.score_stream(np.asarray(tokens, dtype=np.int64)).nll
        method = "the same scorer twice (no factory, and it could not be copied: memory reads as noise)"
    else:
        nll = twin.score_stream(np.asarray(tokens, dtype=np.int64)).nll
        method = source.noise_method
    nats = max_abs_diff(base_nll, nll)[0]
    d = np.asarray(nll, dtype=np.float64) - np.asarray(base_nll, dtype=np.float64)
    d = d[np.isfinite(d)]
    bias, z = 0.0, 0.0
    if nats > 0 and d.size > 1:
        bias = float(d.mean())
        se = float(d.std(ddof=1) / np.sqrt(d.size))
        z = bias / se if se > 0 else (np.inf if bias else 0.0)
    return NoiseFloor(nats, method, bias, z)


def check_noise(noise: NoiseFloor, *, atol: float = 1e-12, cap: float = NOISE_CAP) -> Verdict:
    """The noise floor as its own verdict: deterministic (pass), non-deterministic (n/a: not a
    violation, the other checks allow ``NOISE_FACTOR`` times it), too noisy to check (fail), or a
    systematic difference between two fresh scorers (fail: shared state, not noise)."""
    x = noise.nats
    if noise.systematic:
        return Verdict(
            "noise",
            False,
            f"identical input scored by two fresh scorers ({noise.method}) "
            f"differs systematically: mean {noise.bias:+.3g} nats per position (z = {noise.z:+.1f}), "
            f"max {x:.3g}: not noise but state the scorers share (class or module level)",
            x,
            cap,
        )
    if x <= atol:
        return Verdict(
            "noise",
            True,
            f"deterministic: identical input scored twice ({noise.method}) "
            f"gives the same NLLs (max |delta| {x:.3g} nats)",
            x,
            cap,
        )
    if x > cap:
        return Verdict(
            "noise",
            False,
            f"non-deterministic (noise {x:.3g} nats, {noise.method}), above "
            f"{cap:g} nats: the checks cannot resolve a leak smaller than {NOISE_FACTOR * x:.3g} "
            f"nats; make the scorer deterministic",
            x,
            cap,
        )
    return Verdict(
        "noise",
        None,
        f"non-deterministic (noise {x:.3g} nats, {noise.method}): not a "
        f"violation; T1, T1b, T1c and T2 allow {NOISE_FACTOR:g}x this floor",
        x,
        cap,
    )
