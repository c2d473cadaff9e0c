"""T6 tripwires, T7 artifact size, T8 time, T10 byte recount, and verdicts on stage records."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pytest

import pgolf_core
from pgolf_core.compliance import (
    DataTripwire,
    attach_verdicts,
    check_artifact_size,
    check_byte_recount,
    check_data_access,
    check_eval_time,
    check_train_time,
    code_bytes,
    data_tripwire,
    loaded_local_files,
    recount_bytes,
)
from pgolf_core.data.shards import list_shards, load_tokens
from pgolf_core.data.tokenizer import BOS_ID, load_tokenizer
from pgolf_core.data.tokenizer_bytes import build_byte_luts, stream_bytes
from pgolf_core.stages import StageRecord, Verdict, read_stages, write_stages
from tests.conftest import official_tokenizer

REPO = Path(pgolf_core.__file__).resolve().parents[1]


@pytest.fixture
def data_files(tmp_path) -> dict[str, Path]:
    files = {}
    for name in (
        "fineweb_val_000000.bin",
        "fineweb_train_000000.bin",
        "notes_fineweb_val.txt",
        "fineweb_valx.bin",
    ):
        (tmp_path / name).write_bytes(np.arange(16, dtype=np.uint16).tobytes())
        files[name] = tmp_path / name
    np.save(tmp_path / "fineweb_val_000001.npy", np.arange(4))
    files["fineweb_val_000001.npy"] = tmp_path / "fineweb_val_000001.npy"
    return files


def _readers(path: Path):
    return {
        "open": lambda: open(path, "rb").close(),
        "io.open": lambda: open(str(path), "rb").close(),
        "Path.read_bytes": path.read_bytes,
        "numpy.fromfile": lambda: np.fromfile(path, dtype=np.uint16),
        "numpy.memmap": lambda: np.memmap(path, dtype=np.uint16, mode="r"),
    }


@pytest.mark.parametrize("phase", ["train", "quant"])
def test_tripwire_blocks_validation_files_while_training_or_quantizing(phase, data_files):
    """Every reader raises on fineweb_val_* and still works on training shards and look-alike names."""
    with data_tripwire(phase) as log:
        for fn in _readers(data_files["fineweb_val_000000.bin"]).values():
            with pytest.raises(DataTripwire, match=f"during {phase}"):
                fn()
        with pytest.raises(DataTripwire):
            np.load(data_files["fineweb_val_000001.npy"])
        for name in ("fineweb_train_000000.bin", "notes_fineweb_val.txt", "fineweb_valx.bin"):
            for fn in _readers(data_files[name]).values():
                fn()
    assert len(log.trips) == 6 and {t[0] for t in log.trips} >= {
        "open",
        "numpy.fromfile",
        "numpy.memmap",
        "numpy.load",
    }


def test_tripwire_blocks_training_files_during_evaluation(data_files):
    """In the eval phase the rule flips: training shards raise, validation shards are readable."""
    with data_tripwire("eval"):
        for fn in _readers(data_files["fineweb_train_000000.bin"]).values():
            with pytest.raises(DataTripwire):
                fn()
        for fn in _readers(data_files["fineweb_val_000000.bin"]).values():
            fn()
    # ...and everything is restored afterwards
    assert np.memmap.__name__ == "memmap" and open is io.open
    np.fromfile(data_files["fineweb_train_000000.bin"], dtype=np.uint16)


def test_data_access_check_fails_even_if_the_trip_is_swallowed(data_files):
    """A broad except in the code under test cannot hide a trip: the verdict reads the trip log."""

    def calibrate_on_val():
        with contextlib.suppress(Exception):  # what a careless loader does
            np.fromfile(data_files["fineweb_val_000000.bin"], dtype=np.uint16)

    v = check_data_access(calibrate_on_val, phase="quant")
    assert (
        v.passed is False
        and v.check == "T6"
        and "numpy.fromfile opened" in v.reason
        and "fineweb_val_000000.bin" in v.reason
    )
    ok = check_data_access(
        lambda: np.fromfile(data_files["fineweb_train_000000.bin"], dtype=np.uint16), phase="quant"
    )
    assert ok.passed is True and "no file matching" in ok.reason


def test_tripwire_catches_the_shard_loader(smoke_dir):
    """pgolf's own loader (np.fromfile header + np.memmap) trips on a validation shard during training."""
    val = list_shards(smoke_dir / "fineweb_val_*.bin")
    train = list_shards(smoke_dir / "fineweb_train_*.bin")[:1]
    bad = check_data_access(lambda: load_tokens(val), phase="train")
    assert bad.passed is False and "fineweb_val_000000.bin" in bad.reason
    assert check_data_access(lambda: load_tokens(train), phase="train").passed
    assert check_data_access(lambda: load_tokens(train), phase="eval").passed is False


def test_artifact_size_verdict_states_the_margin():
    """16,000,000 decimal bytes, code included: exactly at the cap passes, one byte more fails."""
    v = check_artifact_size(model_bytes=15_947_887, code_bytes=52_113)
    assert v.passed and v.measured == 16_000_000 and "margin 0 bytes" in v.reason
    v = check_artifact_size(model_bytes=15_900_000, code_bytes=52_113)
    assert v.passed
    assert v.reason == "code 52,113 + model 15,900,000 = 15,952,113 bytes <= 16,000,000 (margin 47,887 bytes)"
    v = check_artifact_size(model_bytes=15_947_888, code_bytes=52_113)
    assert v.passed is False and "exceeds the 16,000,000-byte cap by 1" in v.reason
    v = check_artifact_size(model_bytes=1_000, code_bytes=1_000, uncounted=["helpers/kernel.so"])
    assert v.passed is False and "helpers/kernel.so" in v.reason and "every file the run loads" in v.reason


def test_code_bytes_count_files_and_loaded_modules_are_listed(tmp_path):
    """code_bytes sums raw sizes; loaded_local_files finds this package's imported modules."""
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_bytes(b"\xe2\x82\xac\n")  # 3-byte UTF-8 character + newline
    assert code_bytes([tmp_path / "a.py", tmp_path / "b.py"]) == 6 + 4
    loaded = loaded_local_files(REPO / "pgolf_core")
    assert REPO / "pgolf_core" / "compliance" / "__init__.py" in loaded
    assert REPO / "pgolf_core" / "stages.py" in loaded
    assert all(p.suffix == ".py" and p.is_relative_to(REPO / "pgolf_core") for p in loaded)


def test_time_verdicts_on_and_off_the_target_hardware():
    """On CPU the 600 s limit is n/a (with the measured number); on 8xH100 it is enforced; a configured
    training cap above 600 s or an eval timer that misses the precompute fails anywhere."""
    cpu = check_train_time(153.24, configured_cap=0, on_target_hardware=False, hardware="cpu (2 cores)")
    assert cpu.passed is None and "measured 153.2 s" in cpu.reason and "not checked here" in cpu.reason
    assert check_train_time(10, configured_cap=700, on_target_hardware=False).passed is False
    assert (
        check_train_time(598.9, configured_cap=600, on_target_hardware=True, hardware="8xH100").passed is True
    )
    late = check_train_time(600.5, configured_cap=600, on_target_hardware=True, hardware="8xH100")
    assert late.passed is False and "600.5 s" in late.reason
    assert check_eval_time(412.0, on_target_hardware=True).passed is True
    assert check_eval_time(612.0, on_target_hardware=True).passed is False
    assert check_eval_time(30.0, on_target_hardware=False).passed is None
    pre = check_eval_time(412.0, on_target_hardware=True, timer_covers_precompute=False)
    assert pre.passed is False and "counts inside the 600 s" in pre.reason


def test_byte_recount_matches_the_tables_on_smoke_validation(smoke_dir, smoke_manifest):
    """Decoding every smoke validation document gives the table total; an off-by-one total fails."""
    sp = load_tokenizer(smoke_dir / "tokenizer.model")
    val = load_tokens(list_shards(smoke_dir / "fineweb_val_*.bin")).astype(np.int64)
    table = stream_bytes(val, build_byte_luts(sp))
    v = check_byte_recount(val, sp, table_bytes=table)
    assert v.passed and v.measured == table == smoke_manifest["splits"]["val"]["bytes"]
    bad = check_byte_recount(val, sp, table_bytes=table + 1)
    assert bad.passed is False and "+1" in bad.reason


def test_byte_recount_counts_unknown_tokens_as_zero_bytes():
    """sp1024 has no byte fallback: '\u00ef' and '_' become <unk>, which counts 0 bytes (and drops the next
    piece's leading space) in the challenge's tables; the recount agrees without reading the tables."""
    sp = load_tokenizer(official_tokenizer("fineweb_1024_bpe.model"))
    luts = build_byte_luts(sp)
    docs = ["na\u00efve world and _x_ the end", "plain text, no surprises", "_ leading unk"]
    stream = np.concatenate([np.concatenate([[BOS_ID], sp.encode(d)]) for d in docs]).astype(np.int64)
    assert (stream == sp.unk_id()).sum() == 4
    table = stream_bytes(stream, luts)
    assert recount_bytes(stream, sp) == table
    assert table < sum(len(d.encode()) for d in docs)  # the <unk> characters are not counted
    # a stream that does not start with BOS: token 0 is context, its bytes are not counted
    assert recount_bytes(stream[1:], sp) == stream_bytes(stream[1:], luts)


def test_byte_recount_counts_byte_fallback_pieces_when_a_stream_cuts_a_character():
    """sp8192 spells '€' and '日本' as byte-fallback pieces (<0xE2> <0x82> <0xAC>). A stream that
    ends, or starts, inside such a character is legal (a probe window, a rank's shard), and each piece
    stands for one byte. Decoding the cut sequence gives one U+FFFD (3 bytes) per dangling byte; the
    recount must not count those."""
    sp = load_tokenizer(official_tokenizer("fineweb_8192_bpe.model"))
    luts = build_byte_luts(sp)
    ids = np.asarray([BOS_ID, *sp.encode("price 5€ and 日本")], dtype=np.int64)
    cut = next(i for i in range(len(ids)) if sp.id_to_piece(int(ids[i])) == "<0x82>") + 1  # after E2 82
    head = ids[:cut]
    assert stream_bytes(head, luts) == len(b"price 5") + 2 == 9
    assert len(sp.decode(head[1:].tolist()).encode()) == 13  # what a plain decode counts: 2 x U+FFFD
    assert recount_bytes(head, sp) == 9 and check_byte_recount(head, sp, table_bytes=9).passed
    for a in range(len(ids) - 1):  # every window of the stream, cut anywhere
        for b in range(a + 2, len(ids) + 1):
            window = ids[a:b]
            assert check_byte_recount(window, sp, table_bytes=stream_bytes(window, luts)).passed, (a, b)


def test_byte_recount_against_the_callers_reference_for_transformed_text():
    """A reversible text transform (CaseOps-style case markers) scores transformed text, so decoding the
    tokens counts the wrong bytes; the original text's bytes (or a per-token sidecar) are the reference."""
    sp = load_tokenizer(official_tokenizer("fineweb_8192_bpe.model"))
    original = "The Cat Sat"
    transformed = "".join("↑" + c.lower() if c.isupper() else c for c in original)  # 3-byte markers
    tokens = np.asarray([BOS_ID, *sp.encode(transformed)], dtype=np.int64)
    table = len(original.encode())  # what a byte sidecar gives: 11
    decoded = check_byte_recount(tokens, sp, table_bytes=table)
    assert decoded.passed is False and decoded.measured == len(transformed.encode()) == 20
    ok = check_byte_recount(tokens, sp, table_bytes=table, reference_bytes=table)
    assert ok.passed and "caller's reference" in ok.reason and ok.measured == 11
    # per-token sidecars: aligned with the tokens (entry 0 is context) or one entry per target
    side = np.random.default_rng(0).integers(1, 4, tokens.size)
    assert check_byte_recount(tokens, table_bytes=side, reference_bytes=side[1:]).passed
    wrong = side.copy()
    wrong[5] += 1
    bad = check_byte_recount(tokens, table_bytes=wrong, reference_bytes=side)
    assert bad.passed is False and "first difference at position 5" in bad.reason and "+1" in bad.reason
    with pytest.raises(ValueError, match="reference_bytes: 3 entries for a stream of"):
        check_byte_recount(tokens, table_bytes=side, reference_bytes=side[:3])
    with pytest.raises(ValueError, match="give the tokenizer"):
        check_byte_recount(tokens, table_bytes=table)


def test_attach_verdicts_replaces_by_check_and_survives_a_round_trip(tmp_path):
    """Verdicts ride on the stage record; a failed one makes it non-compliant; n/a does not."""
    rec = StageRecord("q_ngram", val_bpb=1.1, val_loss=2.5, tokens=100, bytes=250, seconds=3.0)
    attach_verdicts(rec, [Verdict("T1", True, "ok", 0.0, 1e-6), Verdict("T8 eval", None, "cpu")])
    assert rec.compliant
    attach_verdicts(rec, [Verdict("T1", False, "moved", 0.7, 1e-6)])
    assert [v.check for v in rec.verdicts] == ["T8 eval", "T1"] and not rec.compliant
    write_stages(tmp_path / "stages.json", [rec])
    back = read_stages(tmp_path / "stages.json")[0]
    assert (
        back.verdicts == rec.verdicts
        and back.compliant is False
        and math.isclose(back.verdicts[1].measured, 0.7)
    )
