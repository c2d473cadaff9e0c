"""The typed config tree: every params file loads, bad input is rejected before any compute."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from pgolf_core.config import (
    SECTIONS,
    ConfigError,
    RunConfig,
    config_from_dict,
    describe_schema,
    load_config,
    to_yaml,
)
from tests.conftest import REPO

PARAMS = sorted(
    p for p in (REPO / "params").rglob("*.yaml") if p.name != "suite.yaml"
)  # suites: test_notebooks


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_params_folder_has_both_suites():
    names = {p.relative_to(REPO / "params").as_posix() for p in PARAMS}
    assert {"smoke/train.yaml", "h100x8/baseline.yaml"} <= names


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_params_file_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    again = load_config(write(tmp_path, to_yaml(cfg)))
    assert again == cfg
    assert list(again.model_dump()) == list(SECTIONS)


def test_defaults_are_the_challenge_baseline(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg == RunConfig()
    m, o, t = cfg.model, cfg.optim, cfg.train
    assert (m.vocab_size, m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads, m.mlp.mult) == (
        1024,
        9,
        512,
        8,
        4,
        2.0,
    )
    assert (
        m.mlp.activation,
        m.tie_embeddings,
        m.tied_embed_init_std,
        m.attention.q_gain_init,
        m.logit_softcap,
    ) == ("relu2", True, 0.005, 1.5, 30.0)
    assert (o.matrix_lr, o.tied_embed_lr, o.scalar_lr, o.muon_momentum, o.muon_backend_steps) == (
        0.04,
        0.05,
        0.04,
        0.95,
        5,
    )
    assert (t.train_batch_tokens, t.train_seq_len, t.max_wallclock_seconds) == (524288, 1024, 600.0)
    assert (cfg.quant.scheme, cfg.quant.compressor, cfg.quant.byte_cap) == (
        "baseline_int8",
        "zlib",
        16_000_000,
    )


def test_unknown_key_names_file_key_valid_keys_and_a_guess(tmp_path):
    path = write(tmp_path, "model:\n  num_layerz: 11\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "model.num_layerz: unknown key (did you mean 'model.num_layers'?)" in msg
    assert "valid keys in 'model': attention, attn_backend, embeddings, " in msg and "num_kv_heads" in msg


def test_unknown_section_lists_the_sections(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"modell: unknown key \(did you mean 'model'\?\); "
        r"valid keys at the top level: data, eval, model",
    ):
        load_config(write(tmp_path, "modell: {}\n"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model:\n  num_layers: '9'\n", "model.num_layers: expected int, got str '9'"),
        ("model:\n  num_layers: 9.0\n", "model.num_layers: expected int, got float 9.0"),
        ("model:\n  tie_embeddings: 1\n", "model.tie_embeddings: expected bool, got int 1"),
        (
            "train:\n  max_wallclock_seconds: ten\n",
            "train.max_wallclock_seconds: expected float, got str 'ten'",
        ),
        ("model: 3\n", "model: expected mapping, got int 3"),
        (
            "model:\n  mlp: {activation: gelu}\n",
            "model.mlp.activation: got 'gelu'; expected one of 'relu2' or 'leaky_relu2'",
        ),
        ("model:\n  mlp: 2.0\n", "model.mlp: expected mapping, got float 2.0"),
        (
            "model:\n  embeddings: {value: {layers: [1]}}\n",
            "model.embeddings.value.layers is set but model.embeddings.value.dim is 0",
        ),
        (
            "model:\n  embeddings: {bigram: {buckets: 1}}\n",
            "model.embeddings.bigram.buckets must be 0 (off) or at least 2",
        ),
        (
            "model:\n  attention: {xsa_last_n: 10}\n",
            "model.attention.xsa_last_n (10) exceeds model.num_layers (9)",
        ),
        (
            "model:\n  attention: {window: {layers: [9]}}\n",
            "model.attention.window.layers has layers [9] outside 0..8",
        ),
        ("model:\n  rotary: {dims: 3}\n", "model.rotary.dims (3) must be even and at most the head dim (64)"),
        (
            "model:\n  residual: {loops: {start: 4, end: 9, count: 1}}\n",
            "model.residual.loops.start..end (4..9) must lie in 0..8",
        ),
        (
            "model:\n  embeddings: {smear: {width: 600}}\n",
            "model.embeddings.smear.width (600) must not exceed model.model_dim (512)",
        ),
        (
            "data:\n  variant: sp4096\n",
            "data.variant: got 'sp4096'; expected one of 'sp1024', 'sp8192' or 'sp8192_caseops'",
        ),
        ("model:\n  model_dim: 100\n", "model.model_dim (100) must be divisible by model.num_heads (8)"),
        ("model:\n  num_kv_heads: 3\n", "model.num_heads (8) must be divisible by model.num_kv_heads (3)"),
        (
            "train:\n  train_batch_tokens: 1000\n",
            "train.train_batch_tokens (1000) must be a multiple of train.train_seq_len (1024)",
        ),
        ("eval:\n  stride: 2048\n", "eval.stride (2048) must not exceed the eval sequence length (1024)"),
        ("data:\n  source: local\n", "data.source 'local' needs both data.root and data.tokenizer"),
        ("optim:\n  matrix_lr: -1.0\n", "optim.matrix_lr: Input should be greater than or equal to 0"),
    ],
)
def test_bad_values_are_rejected_with_the_key_and_the_expectation(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(write(tmp_path, text))


def test_every_error_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "model:\n  num_layers: x\n  bogus: 1\ntrain:\n  seed: y\n"))
    assert str(e.value).count("\n  ") == 3


def test_duplicate_keys_are_an_error_with_lines(tmp_path):
    with pytest.raises(ConfigError, match=r"duplicate key 'seed' at line 3 \(first at line 2\)"):
        load_config(write(tmp_path, "train:\n  seed: 1\n  seed: 2\n"))


def test_scientific_notation_without_a_dot_is_a_float(tmp_path):
    """YAML 1.1 reads 1e-9 as a string; params files mean a number."""
    assert load_config(write(tmp_path, "optim:\n  adam_eps: 1e-9\n")).optim.adam_eps == 1e-9


def test_extends_deep_merges_and_overrides_win(tmp_path):
    write(tmp_path, "model:\n  num_layers: 11\n  model_dim: 256\ntrain:\n  seed: 1\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nmodel:\n  num_layers: 5\n", "child.yaml")
    cfg = load_config(child, ["model.model_dim=128", "train.seed=7", "model.mlp.activation=leaky_relu2"])
    assert (cfg.model.num_layers, cfg.model.model_dim, cfg.train.seed, cfg.model.mlp.activation) == (
        5,
        128,
        7,
        "leaky_relu2",
    )
    assert load_config(child, {"data.val_max_tokens": 9}).data.val_max_tokens == 9


def test_bad_overrides_and_extends_are_errors(tmp_path):
    p = write(tmp_path, "extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml: params file not found \(extended by .*p\.yaml\)"):
        load_config(p)
    a = write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="'extends' cycle"):
        load_config(a)
    ok = write(tmp_path, "", "ok.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(ok, ["model.num_layers"])
    with pytest.raises(ConfigError, match=r"(?s)with overrides .*model\.nmu_layers: unknown key"):
        load_config(ok, ["model.nmu_layers=3"])
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nowhere.yaml")


def test_not_a_mapping_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping of sections, got list"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="<dict>: expected a mapping"):
        config_from_dict(3)


def test_config_is_frozen():
    cfg = RunConfig()
    with pytest.raises(Exception, match="frozen"):
        cfg.model.num_layers = 3  # type: ignore[misc]


def test_data_paths_follow_source_and_variant():
    assert str(RunConfig().data.root_path()) == "data/datasets/fineweb10B_sp1024"
    assert str(RunConfig().data.tokenizer_path()) == "data/tokenizers/fineweb_1024_bpe.model"
    smoke = config_from_dict({"data": {"source": "smoke"}}).data
    assert (str(smoke.root_path()), str(smoke.tokenizer_path())) == (
        "data/smoke",
        "data/smoke/tokenizer.model",
    )
    sp8192 = config_from_dict({"data": {"variant": "sp8192"}}).data
    assert str(sp8192.tokenizer_path()) == "data/tokenizers/fineweb_8192_bpe.model"


def test_schema_lists_every_key_with_a_default():
    rows = describe_schema()
    keys = [r[0] for r in rows]
    assert len(keys) == len(set(keys)) and {k.split(".")[0] for k in keys} == set(SECTIONS)
    assert ("model.num_layers", "int", 9) == rows[keys.index("model.num_layers")][:3]
    assert ("quant.mlp.bits", "int", 8) == rows[keys.index("quant.mlp.bits")][:3]
    assert rows[keys.index("model.embeddings.value.layers")][2] == []
    assert ("model.residual.loops.count", "int", 0) == rows[keys.index("model.residual.loops.count")][:3]


def test_nested_unknown_key_lists_the_nested_section(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"quant\.mlp\.bitz: unknown key \(did you mean 'quant\.mlp\.bits'\?\); "
        r"valid keys in 'quant\.mlp': bits, clip",
    ):
        load_config(write(tmp_path, "quant:\n  mlp:\n    bitz: 6\n"))


def test_hyperparameters_never_come_from_the_environment():
    """Only pgolf_core/dist.py may read a variable (torchrun's RANK / WORLD_SIZE / LOCAL_RANK).

    Handing the whole environment on to a child process (``{**os.environ, ...}``) reads no value.
    """
    offenders = []
    reads = re.compile(r"os\.environ\s*(\[|\.get\(|\.pop\(|\.setdefault\()|getenv\(")
    for path in (REPO / "pgolf_core").rglob("*.py"):
        if path.name != "dist.py" and reads.search(path.read_text()):
            offenders.append(path.relative_to(REPO).as_posix())
    assert offenders == []


# Every params file of the repository (suite definitions aside: they list notebooks, not a config).
ALL_PARAMS = sorted(
    p for folder in ("params", "tests") for p in (REPO / folder).rglob("*.yaml") if p.name != "suite.yaml"
)
SUITES = sorted(p.parent for folder in ("params", "tests") for p in (REPO / folder).rglob("suite.yaml"))


def test_pgolf_config_check_accepts_every_params_file_in_the_repo(capsys):
    from pgolf_core.cli import main

    assert len(ALL_PARAMS) >= 16
    assert main(["config", "check", *map(str, ALL_PARAMS)]) == 0
    out = capsys.readouterr().out
    assert out.count("ok   ") == len(ALL_PARAMS)


@pytest.mark.parametrize("suite", SUITES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_suite_entry_names_a_params_file_that_loads(suite):
    from pgolf_core.suite import load_suite

    for run in load_suite(suite).runs:
        load_config(suite / run.params)


def test_old_flat_model_key_names_its_new_dotted_key_in_one_line(tmp_path):
    path = write(tmp_path, "model:\n  num_layers: 11\n  xsa_last_n: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: model.xsa_last_n was renamed to model.attention.xsa_last_n"


def test_every_old_flat_model_key_maps_to_a_key_that_exists(tmp_path):
    """The hint table covers the 29 flat trick names of the previous release; each target is a real key."""
    from pgolf_core.config.model import RENAMED_MODEL_KEYS

    keys = {row[0] for row in describe_schema()}
    assert len(RENAMED_MODEL_KEYS) == 29
    assert {f"model.{new}" for new in RENAMED_MODEL_KEYS.values()} <= keys
    text = "model:\n  num_loops: 2\n  smear_gate: v2\n  rope_dims: 16\n"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    msg = str(e.value)
    assert "\n" not in msg
    for old, new in (
        ("num_loops", "residual.loops.count"),
        ("smear_gate", "embeddings.smear.kind"),
        ("rope_dims", "rotary.dims"),
    ):
        assert f"model.{old} was renamed to model.{new}" in msg


def test_old_flat_model_key_in_an_override_or_a_base_file(tmp_path):
    ok = write(tmp_path, "", "ok.yaml")
    with pytest.raises(
        ConfigError,
        match=r"with overrides .*: model\.num_loops was renamed to model\.residual\.loops\.count$",
    ):
        load_config(ok, ["model.num_loops=2"])
    write(tmp_path, "model:\n  bigram_vocab: 1536\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\n", "child.yaml")
    with pytest.raises(
        ConfigError,
        match=r"child\.yaml: model\.bigram_vocab was renamed to model\.embeddings\.bigram\.buckets",
    ):
        load_config(child)


def test_unknown_key_in_a_model_sub_section_guesses_the_nested_key(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"model\.residual\.loops\.cuont: unknown key "
        r"\(did you mean 'model\.residual\.loops\.count'\?\); "
        r"valid keys in 'model\.residual\.loops': count, enable_frac, end, start",
    ):
        load_config(write(tmp_path, "model:\n  residual:\n    loops: {cuont: 2}\n"))


# --------------------------------------------------------------------------------------------------
# Finite floats, alias bombs, bounded messages
# --------------------------------------------------------------------------------------------------

FLOAT_TYPES = {key: typ for key, typ, _, _ in describe_schema() if typ in ("float", "list[float]")}
FLOAT_KEYS = sorted(FLOAT_TYPES)


def nested(dotted: str, value) -> dict:
    out = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def test_schema_has_the_float_fields_the_finite_rule_must_cover():
    assert {
        "optim.matrix_lr",
        "eval.temperature",
        "model.rotary.base",
        "model.attention.q_gain_init",
        "ngram.entropy_center",
        "quant.search_quantiles",
        "quant.calib_temperature",
    } <= set(FLOAT_KEYS)
    assert len(FLOAT_KEYS) >= 50


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_every_float_field_refuses_inf_and_nan(bad):
    """Each float field alone (and each list of floats) rejects the value, naming the key."""
    for key, typ in FLOAT_TYPES.items():
        value = [0.5, bad] if typ == "list[float]" else bad
        with pytest.raises(ConfigError) as e:
            config_from_dict(nested(key, value))
        where = f"{key}.1" if typ == "list[float]" else key
        assert f"{where}: expected a finite number, got {bad!r}" in str(e.value), key


@pytest.mark.parametrize(
    "text, key",
    [
        ("optim:\n  matrix_lr: .inf\n", "optim.matrix_lr"),
        ("ttt:\n  lr: 1e999\n", "ttt.lr"),
        ("eval:\n  temperature: .inf\n", "eval.temperature"),
        ("quant:\n  calib_temperature: .Inf\n", "quant.calib_temperature"),
        ("model:\n  rotary: {base: .nan}\n", "model.rotary.base"),
        ("model:\n  attention: {q_gain_init: .NaN}\n", "model.attention.q_gain_init"),
        ("ngram:\n  entropy_center: .nan\n", "ngram.entropy_center"),
        ("quant:\n  search_quantiles: [0.999, .nan]\n", "quant.search_quantiles.1"),
    ],
)
def test_yaml_inf_and_nan_are_rejected_with_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=re.escape(f"{key}: expected a finite number, got ")):
        load_config(write(tmp_path, text))


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs": each anchor is a list of nine aliases of the previous one (9^9 values)."""
    names = "abcdefghijklmnop"[:levels]
    lines = [f"{names[0]}: &{names[0]} [" + ",".join(['"lol"'] * 9) + "]"]
    lines += [f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in itertools.pairwise(names)]
    return "\n".join(lines) + f"\nmodel: {{num_layers: *{names[-1]}}}\n"


def test_alias_bomb_is_refused_in_one_short_line(tmp_path):
    text = alias_bomb()
    assert len(text) < 500
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300
    assert "aliases expand to more than 100,000 values" in msg and str(tmp_path) in msg


def test_recursive_alias_and_deep_nesting_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"recursive alias at line 1"):
        load_config(write(tmp_path, "model: &m {num_layers: 2, more: *m}\n"))
    with pytest.raises(ConfigError, match="nested too deeply|not valid YAML"):
        load_config(write(tmp_path, "model: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml"))


def test_small_anchors_and_aliases_still_work(tmp_path):
    cfg = load_config(write(tmp_path, "quant:\n  attn: &g {bits: 6, clip: search}\n  mlp: *g\n"))
    assert cfg.quant.mlp == cfg.quant.attn and cfg.quant.mlp.bits == 6


def test_echoed_values_and_error_lists_are_bounded(tmp_path):
    """A huge value is cut in the message; a list of thousands of bad items reports 20 and a count."""
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "model:\n  num_layers: " + "x" * 100_000 + "\n"))
    assert len(str(e.value)) < 400 and "model.num_layers: expected int, got str 'xxx" in str(e.value)
    layers = ", ".join(["q"] * 5000)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, f"model:\n  embeddings: {{value: {{dim: 8, layers: [{layers}]}}}}\n"))
    lines = str(e.value).splitlines()
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "  ... and 4980 more"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "model:\n  num_layers: " + "[" * 50 + "]" * 50 + "\n"))
    assert len(str(e.value)) < 300
