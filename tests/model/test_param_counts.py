"""Parameter counts and roles of the record configs equal the counts logged by the records' train logs."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from pgolf_core.config import load_config
from pgolf_core.model import build_model, count_parameters
from pgolf_core.model.roles import EMBED, HEAD, MATRIX, SCALAR, TABLE, param_roles
from tests.conftest import REPO

PARAMS = REPO / "params" / "h100x8"

LOGGED_COUNTS = {
    "baseline.yaml": 17_059_912,
    "record_549.yaml": 26_928_220,
    "record_1019.yaml": 27_067_484,
    "record_1394.yaml": 35_943_512,
    "record_1493.yaml": 35_944_536,
    "record_1855.yaml": 35_945_671,
    "record_1512.yaml": 27_067_484,  # #1019's count: the windows and the key offset add no parameters
    "record_2135.yaml": 35_945_673,  # #1855 + the two AsymLogit scalars
}

# Counts the records do not log, derived from the architecture: #1953 is #1855 + AsymLogit (2 scalars);
# AWQ-lite, varlen attention and the TTT levers add no model parameters.
DERIVED_COUNTS = {
    "record_1953.yaml": 35_945_671 + 2,
    "record_2014.yaml": 35_945_671 + 2,  # #1953's model; the length schedule adds no parameters
}


def meta_model(name: str):
    """The full-size model on the meta device: shapes only, no memory, no init cost."""
    cfg = load_config(PARAMS / name)
    with torch.device("meta"):
        return build_model(cfg.model, device="cpu")


@pytest.mark.parametrize("name, expected", LOGGED_COUNTS.items(), ids=list(LOGGED_COUNTS))
def test_param_count_matches_record_log(name, expected):
    """count_parameters of each record config equals the number its training log printed."""
    assert count_parameters(meta_model(name)) == expected


@pytest.mark.parametrize("name, expected", DERIVED_COUNTS.items(), ids=list(DERIVED_COUNTS))
def test_param_count_matches_the_architecture(name, expected):
    assert count_parameters(meta_model(name)) == expected


def test_record_1512_windows_and_key_offset_sit_on_the_logged_layers():
    """#1512: sliding-window attention (256 earlier keys + the query) on layers 0-5, full causal attention
    with the partial key offset on 6-10, QK gain 2.5, 4096-token training and evaluation."""
    cfg = load_config(PARAMS / "record_1512.yaml")
    model = meta_model("record_1512.yaml")
    attns = [block.attn for block in model.blocks]
    assert [a.window for a in attns] == [257] * 6 + [0] * 5
    assert [a.key_offset for a in attns] == [False] * 6 + [True] * 5
    assert {a.key_offset_dims for a in attns} == {16}
    assert cfg.model.attention.q_gain_init == 2.5 and cfg.quant.qat
    assert cfg.train.train_seq_len == cfg.eval_seq_len == 4096 and cfg.train.train_batch_tokens == 786_432


def test_param_count_of_real_baseline_build_matches_meta_build():
    """A real CPU build (fp32) counts the same parameters as the meta-device build."""
    model = build_model(load_config(PARAMS / "baseline.yaml").model, device="cpu")
    assert count_parameters(model) == LOGGED_COUNTS["baseline.yaml"]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def role_summary(model) -> dict[str, tuple[int, int]]:
    """role -> (number of tensors, number of elements)."""
    params = dict(model.named_parameters())
    tensors, numel = Counter(), Counter()
    for name, role in param_roles(model).items():
        tensors[role] += 1
        numel[role] += params[name].numel()
    return {role: (tensors[role], numel[role]) for role in tensors}


def test_roles_of_record_549_split_as_derived():
    """#549: 66 block matrices, the tied embedding, bigram + VE tables, 51 small tensors (derived)."""
    assert role_summary(meta_model("record_549.yaml")) == {
        MATRIX: (66, 11 * 2_359_296),
        EMBED: (1, 524_288),
        TABLE: (2, 196_608 + 131_072),
        # 11 x (q_gain, resid_mix, attn_scale, mlp_scale) + skips + smear + bigram proj, scale
        # + VE proj, scale, 2 layer scales
        SCALAR: (51, 11 * 2_056 + 5 * 512 + 512 + 65_536 + 1 + 32_768 + 1 + 2),
    }


def test_roles_of_record_1855_split_as_derived():
    """#1855: 66 block matrices, the tied embedding and 31,943 small parameters in 61 tensors (derived)."""
    assert role_summary(meta_model("record_1855.yaml")) == {
        MATRIX: (66, 11 * 2_883_584),
        EMBED: (1, 4_194_304),
        SCALAR: (61, 31_943),
    }


@pytest.mark.parametrize("name", ["record_1953.yaml", "record_2014.yaml", "record_2135.yaml"])
def test_frontier_records_add_the_two_asym_logit_scalars_to_1855(name):
    """#1953 / #2014 / #2135 = #1855's tensors plus softcap_pos and softcap_neg, one element each."""
    model = meta_model(name)
    assert role_summary(model) == {MATRIX: (66, 11 * 2_883_584), EMBED: (1, 4_194_304), SCALAR: (63, 31_945)}
    names = {n for n, _ in model.named_parameters()}
    assert names - {n for n, _ in meta_model("record_1855.yaml").named_parameters()} == {
        "softcap_pos",
        "softcap_neg",
    }


def test_roles_of_untied_head():
    """An untied LM head is the only HEAD parameter."""
    cfg = load_config(PARAMS / "baseline.yaml", overrides=["model.tie_embeddings=false"]).model
    with torch.device("meta"):
        roles = param_roles(build_model(cfg, device="cpu"))
    assert [name for name, role in roles.items() if role == HEAD] == ["lm_head.weight"]


def test_roles_survive_deepcopy():
    """copy.deepcopy drops attributes of Parameters; the recorded name -> role map keeps the roles."""
    import copy

    from pgolf_core.config import ModelConfig, OptimConfig
    from pgolf_core.model import build_model
    from pgolf_core.model.roles import param_roles
    from pgolf_core.optim import build_optimizers

    model = build_model(ModelConfig(num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, vocab_size=64))
    clone = copy.deepcopy(model)
    assert param_roles(clone) == param_roles(model)
    names = build_optimizers(clone, OptimConfig(), tie_embeddings=True).param_names_by_group()
    assert sum(len(v) for v in names.values()) == len(list(model.parameters()))


def test_record_2014_trains_with_the_progressive_context_and_3072_token_evaluation():
    """#2014's schedule (1024 until 10% of the clock, 2048 until 70%, 3072 after), RoPE built for 3072 so
    no stage rescales it, and the TTT levers as logged."""
    cfg = load_config(PARAMS / "record_2014.yaml")
    tc = cfg.train
    assert [(s.seq_len, s.until) for s in tc.seq_schedule] == [(1024, 0.1), (2048, 0.7), (3072, 1.0)]
    assert tc.seq_schedule_mode == "wallclock" and tc.seq_change_warmup_steps == 32
    assert all(tc.train_batch_tokens % s.seq_len == 0 for s in tc.seq_schedule)
    assert cfg.model.rotary.train_seq_len == tc.train_seq_len == cfg.eval_seq_len == 3072
    assert cfg.ttt.context_len == 3072 and cfg.ttt.short_doc_chunks == [[256, 8], [2000, 24]]
    assert cfg.ttt.phased_phases == 1 and cfg.ttt.phased_prefix_docs == 2500 and cfg.ttt.include_tail
    assert cfg.quant.calib_reserve_seconds == 4.0  # 600 - 4 = the 596 s the schedule's progress divides by
