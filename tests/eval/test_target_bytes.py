"""The bpb denominator's source (``eval.target_bytes``): the tokenizer byte tables for plain tokenizers,
the validation byte sidecar for CaseOps data.

On the smoke corpus the CaseOps and the plain evaluation of the same documents divide by the same bytes,
to the byte, on every path (standard, sliding, chunked and per-document LoRA TTT, the n-gram stage);
dividing by the CaseOps tokenizer's own tables, i.e. the transformed bytes (#2138), would not.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from pgolf_core.config import config_from_dict
from pgolf_core.data.loader import load_validation_bytes, load_validation_tokens
from pgolf_core.data.shards import list_shards, load_tokens
from pgolf_core.data.tokenizer import BOS_ID, load_tokenizer
from pgolf_core.data.tokenizer_bytes import LN2, build_byte_luts, stream_bytes, token_bytes
from pgolf_core.dist import DistInfo
from pgolf_core.eval import (
    LutTargetBytes,
    SidecarTargetBytes,
    as_target_bytes,
    evaluate_sliding,
    evaluate_standard,
    load_target_bytes,
    stream_byte_counts,
)
from pgolf_core.pipeline.roundtrip import StageWeights
from pgolf_core.pipeline.session import Session
from pgolf_core.pipeline.stages import STAGE_FNS
from pgolf_core.stages import StageRecord, read_stages, write_stages
from pgolf_core.ttt import EvalSpec, TTTInputs, run_ttt
from tests.eval.helpers import TINY, luts, random_stream, tiny_model, ttt_cfg

ONE, CPU = DistInfo(), torch.device("cpu")
DOCS = 6  # the first six validation documents: 7,721 plain / 8,273 CaseOps targets, 18,799 bytes
SMOKE_VOCAB = 1024


def first_docs(tokens: np.ndarray, k: int) -> int:
    """Stream length holding the first ``k`` documents; the last target is the next document's BOS,
    which stands for 0 bytes in either tokenization (a document predicts its own end)."""
    return int(np.flatnonzero(np.asarray(tokens) == BOS_ID)[k]) + 1


# ----- the two sources, in isolation ------------------------------------------------------------


def test_lut_source_counts_exactly_what_the_tables_count():
    tokens, tables = random_stream(300, seed=3), luts()
    tb = LutTargetBytes(tables)
    t = tokens.astype(np.int64)
    want = token_bytes(t[:-1], t[1:], tables)
    assert tb.kind == "luts" and not tb.needs_positions
    assert np.array_equal(tb.stream(tokens)[1:], want) and tb.stream(tokens)[0] == 0
    assert tb.stream(tokens).dtype == np.int16
    assert tb.total(tokens) == stream_bytes(tokens, tables) == int(want.sum())
    dev = tb.to(CPU)
    got = dev.targets(torch.as_tensor(t[:-1]), torch.as_tensor(t[1:]), None)
    assert torch.equal(got, torch.as_tensor(want)) and dev.to(CPU) is dev
    assert np.array_equal(stream_byte_counts(tokens, tables), stream_byte_counts(tokens, dev))
    assert as_target_bytes(tables).kind == "luts" and as_target_bytes(None) is None
    with pytest.raises(TypeError, match="ByteLUTs or a TargetBytes, got ndarray"):
        as_target_bytes(np.zeros(3))


def test_sidecar_source_reads_the_position_not_the_token():
    """The same token at two positions may stand for different bytes (a CaseOps marker is 0 as an
    operator, 3 as an escaped literal): the sidecar is indexed by stream position."""
    side = np.array([0, 5, 0, 3, 1, 7, 2], dtype=np.uint16)
    tokens = np.array([BOS_ID, 9, 9, 9, 9, 9, 9], dtype=np.uint16)
    tb = SidecarTargetBytes(side)
    assert tb.kind == "sidecar" and tb.needs_positions
    assert tb.stream(tokens).tolist() == [0, 5, 0, 3, 1, 7, 2] and tb.total(tokens) == 18
    assert tb.stream(tokens[:4]).tolist() == [0, 5, 0, 3]  # a prefix of the stream
    pos = np.array([6, 1, 3])
    assert tb.targets(tokens[pos - 1], tokens[pos], pos).tolist() == [2, 5, 3]
    dev = tb.to(CPU)
    assert dev.targets(None, None, torch.as_tensor(pos)).tolist() == [2, 5, 3]
    with pytest.raises(ValueError, match="the stream has 8 tokens but the byte sidecar 7 entries"):
        tb.stream(np.ones(8, dtype=np.uint16))
    with pytest.raises(ValueError, match="need the targets' stream positions"):
        tb.targets(tokens[:-1], tokens[1:], None)


@pytest.mark.parametrize("stride", [16, 8])
def test_evaluators_and_ttt_divide_by_the_sidecar_entries_of_the_scored_targets(stride):
    """Standard / sliding evaluation and the three TTT variants with a random sidecar: B is the sum of the
    entries at positions 1..N-1, the byte stream is the sidecar, bpb = loss_sum / (ln 2 * B)."""
    model, tokens = tiny_model(), random_stream(211, seed=5)
    tokens[[40, 97, 150]] = BOS_ID  # documents for the LoRA variant
    side = np.random.default_rng(7).integers(0, 9, tokens.size).astype(np.uint16)
    tb = SidecarTargetBytes(side)
    want = int(side[1:].sum())
    kw = {"seq_len": 16, "dist": ONE, "device": CPU, "return_streams": True}
    results = [
        evaluate_standard(model, tokens, tb, batch_tokens=64, **kw),
        evaluate_sliding(model, tokens, tb, stride=stride, batch_seqs=5, **kw),
    ]
    spec = EvalSpec(seq_len=16, stride=stride, batch_seqs=5, autocast=False)
    for ttt in (
        ttt_cfg(mode="chunk", chunk_tokens=64, epochs=1),
        ttt_cfg(mode="lora", lora_chunk_tokens=16, lora_window=32),
        ttt_cfg(mode="phased", lora_chunk_tokens=16, lora_window=32, phased_prefix_docs=2, chunk_tokens=64),
    ):
        results.append(run_ttt(TTTInputs(model, tokens, tb, ttt, spec, ONE, CPU, return_streams=True))[0])
    for res in results:
        assert res.tokens == tokens.size - 1 and res.bytes == want and res.bytes_source == "sidecar"
        assert res.byte_counts[0] == 0 and np.array_equal(res.byte_counts[1:], side[1:])
        loss_sum = float(np.nansum(res.nll.astype(np.float64)))
        assert res.bpb == pytest.approx(loss_sum / (LN2 * want), rel=1e-6)
    # the same evaluation over the tables counts other bytes; the loss is unchanged
    plain = evaluate_sliding(model, tokens, luts(), stride=stride, batch_seqs=5, **kw)
    assert plain.bytes_source == "luts" and plain.bytes == stream_bytes(tokens, luts()) != want
    assert plain.loss == results[1].loss
    assert plain.bpb * plain.bytes == pytest.approx(results[1].bpb * want, rel=1e-12)


# ----- the smoke corpus: the same text, tokenized both ways ---------------------------------------


@dataclass(frozen=True)
class Smoke:
    root: object
    tokens: np.ndarray  # the first DOCS documents of the validation stream
    side: np.ndarray | None  # its sidecar (CaseOps)
    tables: object  # the tokenizer's byte tables


def smoke(root, caseops: bool) -> Smoke:
    tokens = load_tokens(list_shards(root / "fineweb_val_*.bin"))
    n = first_docs(tokens, DOCS)
    side = load_tokens(list_shards(root / "fineweb_val_bytes_*.bin"))[:n] if caseops else None
    return Smoke(
        root, tokens[:n], side, build_byte_luts(load_tokenizer(root / "tokenizer.model"), SMOKE_VOCAB)
    )


@pytest.fixture(scope="module")
def plain(smoke_dir) -> Smoke:
    return smoke(smoke_dir, caseops=False)


@pytest.fixture(scope="module")
def caseops(smoke_caseops_dir) -> Smoke:
    return smoke(smoke_caseops_dir, caseops=True)


def run_cfg(root, caseops: bool):
    return config_from_dict(
        {
            "data": {
                "source": "local",
                "root": str(root),
                "tokenizer": f"{root}/tokenizer.model",
                "caseops": caseops,
            },
            "model": {**TINY, "vocab_size": SMOKE_VOCAB},
            "train": {"train_seq_len": 64, "device": "cpu", "autocast": False},
            "eval": {"stride": 32, "probe_tokens": 0, "split_check_tokens": 0, "sliding_batch_seqs": 16},
            "ttt": {"enabled": True, "mode": "chunk", "chunk_tokens": 2048, "epochs": 1},
            "ngram": {"enabled": True, "table_rows": 512},
        }
    )


def session_on(data: Smoke, caseops: bool, tmp_path) -> Session:
    """A pipeline session on the smoke set whose stream is cut to the first DOCS documents (the same
    text both ways; the configured stream is cut by token count, which differs between tokenizers)."""
    ctx = Session(run_cfg(data.root, caseops), tmp_path, tmp_path, ONE, CPU)
    assert ctx.target_bytes.kind == ("sidecar" if caseops else "luts")
    ctx = copy.copy(ctx)
    ctx.val = data.tokens
    ctx.target_bytes = SidecarTargetBytes(data.side) if caseops else LutTargetBytes(ctx.luts)
    return ctx


def test_smoke_caseops_and_plain_documents_have_the_same_bytes(plain, caseops):
    assert plain.tokens.size == 7_722 and caseops.tokens.size == 8_274  # markers: more tokens
    assert stream_bytes(plain.tokens, plain.tables) == int(caseops.side[1:].sum()) == 18_799


def test_every_stage_divides_caseops_by_the_plain_denominator(plain, caseops, tmp_path):
    """pre (standard), q_sw (sliding), q_ttt (chunked TTT), q_ngram: the CaseOps records carry the
    plain records' bytes to the byte and say "sidecar"."""
    state = tiny_model(vocab_size=SMOKE_VOCAB).state_dict()
    records = {}
    for name, data, is_caseops in (("plain", plain, False), ("caseops", caseops, True)):
        ctx = session_on(data, is_caseops, tmp_path / name)
        for stage in ("pre", "q_sw", "q_ttt", "q_ngram"):
            records[name, stage] = STAGE_FNS[stage](ctx, StageWeights(state), stage)
    for stage in ("pre", "q_sw", "q_ttt", "q_ngram"):
        p, c = records["plain", stage], records["caseops", stage]
        assert (p.bytes, c.bytes) == (18_799, 18_799), stage
        assert (p.bytes_source, c.bytes_source) == ("luts", "sidecar"), stage
        assert (p.tokens, c.tokens) == (7_721, 8_273), stage
        assert c.val_bpb == pytest.approx(c.val_loss * c.tokens / (math.log(2) * c.bytes), rel=1e-9)


def test_the_transformed_bytes_would_give_another_denominator(caseops, smoke_caseops_dir):
    """#2138's error: the CaseOps tokenizer's tables count every marker as its 3-byte character; on
    the smoke documents that is +9.0% bytes (+8.1% over the whole split: 198,964 vs 183,991), so bpb
    looks 8-9% better."""
    model = tiny_model(vocab_size=SMOKE_VOCAB)
    kw = {"seq_len": 64, "stride": 32, "batch_seqs": 16, "dist": ONE, "device": CPU}
    right = evaluate_sliding(model, caseops.tokens, SidecarTargetBytes(caseops.side), **kw)
    wrong = evaluate_sliding(model, caseops.tokens, caseops.tables, **kw)
    assert right.loss == wrong.loss and (right.bytes, wrong.bytes) == (18_799, 20_494)
    assert wrong.bytes_source == "luts" and right.bytes_source == "sidecar"
    assert right.bpb / wrong.bpb == pytest.approx(20_494 / 18_799, rel=1e-12)
    whole = load_tokens(list_shards(smoke_caseops_dir / "fineweb_val_*.bin"))
    transformed = stream_bytes(whole, caseops.tables)
    assert (
        transformed == 198_964
        and int(load_tokens(list_shards(smoke_caseops_dir / "fineweb_val_bytes_*.bin"))[1:].sum()) == 183_991
    )


def test_load_target_bytes_follows_data_caseops(plain, caseops, tmp_path):
    """The session's source comes from data.caseops, aligned with the configured (capped) stream."""
    cfg = run_cfg(caseops.root, True).model_copy()
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"val_max_tokens": 4096})})
    files = list_shards(caseops.root / cfg.data.val_pattern)
    val = load_validation_tokens(files, 64, 4096)
    tb = load_target_bytes(cfg.data, caseops.tables, files, seq_len=64, n_tokens=val.size)
    assert tb.kind == "sidecar" and tb.total(val) == int(load_validation_bytes(files, 64, 4096)[1:].sum())
    ctx = Session(cfg, tmp_path, tmp_path, ONE, CPU)
    assert ctx.target_bytes.kind == "sidecar" and ctx.val.size == val.size == 4097
    assert ctx.target_bytes.total(ctx.val) == tb.total(val)
    plain_cfg = run_cfg(plain.root, False)
    plain_files = list_shards(plain.root / "fineweb_val_*.bin")
    assert load_target_bytes(plain_cfg.data, plain.tables, plain_files, seq_len=64).kind == "luts"
    with pytest.raises(ValueError, match=r"4,097 entries for a 4,000-token validation stream"):
        load_target_bytes(cfg.data, caseops.tables, files, seq_len=64, n_tokens=4000)


def test_stage_records_carry_the_byte_source_into_stages_json(tmp_path):
    rec = StageRecord("q_sw", 1.1, 2.0, 10, 25, 0.5, bytes_source="sidecar")
    write_stages(tmp_path / "stages.json", [rec, replace(rec, stage="q", bytes_source="luts")])
    back = read_stages(tmp_path / "stages.json")
    assert [r.bytes_source for r in back] == ["sidecar", "luts"]
    old = {k: v for k, v in rec.as_dict().items() if k != "bytes_source"}  # written before the field
    assert StageRecord.from_dict(old).bytes_source == "luts"
