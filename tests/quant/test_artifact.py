"""The artifact: bit-identical round trip, safe loading (no pickle, tamper evidence), byte accounting."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
import zlib
from pathlib import Path

import pytest
import torch

from pgolf_core.challenge import BYTE_CAP
from pgolf_core.config import QuantConfig, QuantGroupConfig
from pgolf_core.quant import (
    ArtifactError,
    ArtifactOverCapWarning,
    build_artifact,
    code_bytes,
    collect_hessians,
    dequantized_state,
    load_artifact,
)
from pgolf_core.quant.artifact import REPO_ROOT
from tests.model.helpers import tiny_model

FULL = QuantConfig(
    scheme="groups",
    keep_float_max_numel=1024,
    quant_gates=True,
    lqer_top_k=2,
    lqer_rank=2,
    lqer_group=16,
    attn=QuantGroupConfig(bits=6, clip="search", gptq=True),
    mlp=QuantGroupConfig(bits=5, clip="sdclip", sdclip_k=6.5, gptq=True),
    embed=QuantGroupConfig(bits=7, clip="sdclip", sdclip_k=15.0, gptq=True),
    gate=QuantGroupConfig(bits=8, clip="percentile", percentile=100.0),
    compressor="auto",
    byte_shuffle="auto",
)


@pytest.fixture(scope="module")
def rich():
    """A tiny model with every tensor family (gates, bigram table, value embedding) and its Hessians."""
    torch.set_num_threads(1)
    model = tiny_model(
        attention={"gate": {"kind": "dense"}},
        embeddings={"bigram": {"buckets": 700, "dim": 96}, "value": {"dim": 32, "layers": [2, 3]}},
    )
    g = torch.Generator().manual_seed(0)
    hess = collect_hessians(model, [(torch.randint(0, 64, (2, 32), generator=g), None) for _ in range(2)])
    return model, hess


def assert_bit_identical(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k, w in want.items():
        assert got[k].dtype == w.dtype and torch.equal(got[k], w), k


def test_artifact_round_trip_is_bit_identical_baseline():
    """baseline_int8: load_artifact(blob) == dequantized_state, tensor for tensor, dtype for dtype."""
    model = tiny_model(vocab_size=1100)
    art = build_artifact(model, QuantConfig())
    assert art.compressor == "zlib" and art.details["timings"]["verify_s"] >= 0
    assert_bit_identical(load_artifact(art.blob), dequantized_state(model, QuantConfig()))


def test_artifact_round_trip_is_bit_identical_with_gptq_lqer_gates_and_tables(rich, tmp_path):
    """groups + GPTQ + clip search/SDClip + LQER + quantized gates + tables, auto compressor: bit-identical,
    from bytes and from a file.
    """
    model, hess = rich
    art = build_artifact(model, FULL, hessians=hess)
    want = dequantized_state(model, FULL, hess)
    assert_bit_identical(load_artifact(art.blob), want)
    path = art.save(tmp_path / "model.pgq")
    assert_bit_identical(load_artifact(path), want)
    kinds = {n: t["kind"] for n, t in art.details["tensors"].items()}
    assert kinds["blocks.0.attn.gate.proj.weight"] == "row" and kinds["bigram.table.weight"] == "row"
    assert kinds["blocks.0.attn_scale"] == "float" and len(art.details["lqer"]) == 2
    model.load_state_dict(load_artifact(art.blob), strict=True)  # the state loads into the model as is


def test_artifact_from_state_dict_needs_the_model():
    """A bare state dict carries no roles: without model= the error says what to pass."""
    model = tiny_model()
    with pytest.raises(ValueError, match="pass model="):
        build_artifact(model.state_dict(), QuantConfig())
    art = build_artifact(model.state_dict(), QuantConfig(), model=tiny_model())
    assert art.model_bytes == build_artifact(model, QuantConfig()).model_bytes


# --------------------------------------------------------------------------------------------------
# safe loading
# --------------------------------------------------------------------------------------------------


class Armed:
    """Unpickling this creates ``path``: what a malicious checkpoint would do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_artifact_pickle_payload_fails_clearly_and_never_runs(tmp_path):
    """torch.save / raw pickle files are refused with a clear error; the payload's side effect
    never happens."""
    marker = tmp_path / "pwned"
    armed_probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Armed(str(armed_probe))))
    assert armed_probe.exists()  # the payload is live: unpickling it does run code

    buf = io.BytesIO()
    torch.save({"quantized": Armed(str(marker))}, buf)
    for blob in (buf.getvalue(), pickle.dumps(Armed(str(marker)))):
        with pytest.raises(ArtifactError, match="pickle"):
            load_artifact(blob)
        path = tmp_path / "evil.pt"
        path.write_bytes(blob)
        with pytest.raises(ArtifactError, match=r"evil\.pt: .*never unpickled"):
            load_artifact(path)
    # A pickle smuggled in as the payload of a correctly signed container fails at decompression.
    art = build_artifact(tiny_model(), QuantConfig())
    evil = pickle.dumps(Armed(str(marker)))
    smuggled = resign(art.blob, lambda h: h["sections"][0].update(len=len(evil)), payload=evil)
    with pytest.raises(ArtifactError, match="section 0 .*zlib stream is corrupt"):
        load_artifact(smuggled)
    assert not marker.exists()


def split(blob: bytes) -> tuple[tuple, dict, bytes]:
    magic, version, hlen, _ = struct.unpack_from("<8sHI32s", blob)
    header = json.loads(zlib.decompress(blob[46 : 46 + hlen]))
    return (magic, version), header, blob[46 + hlen :]


def resign(blob: bytes, edit, payload: bytes | None = None, raw_header: bytes | None = None) -> bytes:
    """Rebuild a container after ``edit(header)``, with valid checksums: a careful forger's file."""
    (magic, version), header, old_payload = split(blob)
    payload = old_payload if payload is None else payload
    edit(header)
    header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    h = raw_header if raw_header is not None else zlib.compress(json.dumps(header).encode(), 9)
    return struct.pack("<8sHI32s", magic, version, len(h), hashlib.sha256(h).digest()) + h + payload


@pytest.fixture(scope="module")
def good_blob() -> bytes:
    return build_artifact(tiny_model(vocab_size=1100), QuantConfig()).blob


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:30], "truncated artifact: 30 bytes"),
        (lambda b: b[:-7], "truncated or padded file"),
        (lambda b: b + b"\0", "truncated or padded file"),
        (lambda b: b"NOTPGOLF" + b[8:], "not a pgolf artifact: magic"),
        (lambda b: b[:8] + struct.pack("<H", 2) + b[10:], "unsupported artifact format version 2"),
        (lambda b: b[:60] + bytes([b[60] ^ 0xFF]) + b[61:], "header checksum mismatch"),
        (lambda b: b[:-3] + bytes([b[-3] ^ 0x01]) + b[-2:], "payload checksum mismatch"),
        (
            lambda b: resign(b, lambda h: None, raw_header=zlib.compress(b"{not json")),
            "header is not valid compressed JSON",
        ),
        (
            lambda b: resign(b, lambda h: h["tensors"][1]["a"]["q"].__setitem__(1, 10**9)),
            r"lie outside section",
        ),
        (
            lambda b: resign(b, lambda h: h["tensors"][1].__setitem__("sh", [1100, 65])),
            r"shape \[1100, 64\], expected \[1100, 65\]",
        ),
        (lambda b: resign(b, lambda h: h["tensors"][1].__setitem__("k", "exec")), "unknown kind 'exec'"),
        (
            lambda b: resign(b, lambda h: h["tensors"][1]["a"]["q"].__setitem__(2, "object")),
            "array reference invalid",
        ),
        (
            lambda b: resign(b, lambda h: h["sections"][0].update(raw=h["sections"][0]["raw"] + 64)),
            "parts do not tile",
        ),
        (lambda b: resign(b, lambda h: h["tensors"].append(h["tensors"][0])), "appears twice"),
        (
            lambda b: resign(b, lambda h: None, raw_header=zlib.compress(b"[" * 200_000 + b"]" * 200_000)),
            "header JSON is nested too deeply",
        ),
        (
            lambda b: resign(b, lambda h: None, raw_header=zlib.compress(b'{"a": 1' + b"0" * 5000 + b"}")),
            "header is not valid compressed JSON",
        ),
        (
            lambda b: resign(b, lambda h: h["tensors"][1].__setitem__("sh", [2**62, 2**62])),
            r"tensors declare over 2,147,483,648 bytes of weights \(at tok_emb",
        ),
        (
            lambda b: resign(b, lambda h: h["tensors"][1]["a"]["q"].__setitem__(3, [2**40, 2**40])),
            "lie outside section 0",
        ),
        (lambda b: resign(b, lambda h: h["tensors"][1].__setitem__("sh", [-1, 64])), "non-negative ints"),
        (lambda b: resign(b, lambda h: h["tensors"][1].__setitem__("sh", [1] * 9)), "at most 8 non-negative"),
        (
            lambda b: resign(b, lambda h: h["sections"].extend(h["sections"] * 64)),
            r"65 sections \(at most 64\)",
        ),
        (
            lambda b: resign(b, lambda h: h["sections"][0].update(raw=600 << 20, parts=[[1, 600 << 20]])),
            r"sections declare 629,145,600 decompressed bytes \(at most 536,870,912\)",
        ),
        (
            lambda b: resign(
                b,
                lambda h: h["sections"][0].update(
                    raw=h["sections"][0]["raw"] + 64, parts=[[1, h["sections"][0]["raw"] + 64]]
                ),
            ),
            r"section 0 declares [\d,]+ bytes, its arrays' shapes account for [\d,]+",
        ),
    ],
    ids=[
        "short-prefix",
        "truncated",
        "padded",
        "magic",
        "version",
        "header-byte",
        "payload-byte",
        "json",
        "offset",
        "shape",
        "kind",
        "dtype",
        "section-size",
        "duplicate",
        "deep-nesting",
        "huge-int",
        "shape-overflow",
        "array-shape-overflow",
        "negative-dim",
        "rank",
        "section-count",
        "total-size",
        "unaccounted-bytes",
    ],
)
def test_artifact_malformed_input_raises_a_clear_error(good_blob, mutate, message):
    """Each corruption or forgery is caught by its own check and named in the error."""
    assert "tok_emb" in split(good_blob)[1]["tensors"][1]["n"]
    with pytest.raises(ArtifactError, match=message):
        load_artifact(mutate(good_blob))


# --------------------------------------------------------------------------------------------------
# accounting
# --------------------------------------------------------------------------------------------------


def test_artifact_accounting_flags_an_artifact_over_the_cap():
    """total = model + code bytes; over the decimal cap: over_cap, negative margin, the overage reported and
    warned.
    """
    model = tiny_model(vocab_size=1100)
    art = build_artifact(model, QuantConfig())
    code = code_bytes(QuantConfig(), REPO_ROOT)
    assert art.code_bytes == code > 100_000 and art.total_bytes == len(art.blob) + code
    assert art.margin == BYTE_CAP - art.total_bytes and not art.over_cap
    tight = QuantConfig(byte_cap=art.total_bytes - 1234)
    with pytest.warns(ArtifactOverCapWarning, match="OVER THE CAP by 1,234 bytes"):
        over = build_artifact(model, tight)
    assert over.over_cap and over.margin == -1234 and over.overage == 1234
    assert over.details["accounting"]["over_cap"] is True and "OVER THE CAP by 1,234" in over.summary()
    exact = build_artifact(model, QuantConfig(byte_cap=art.total_bytes))
    assert not exact.over_cap and exact.margin == 0  # the cap itself is allowed


def test_code_bytes_counts_each_matched_file_once_and_rejects_empty_globs(tmp_path):
    """Overlapping globs count a file once; a glob that matches nothing is an error, not zero bytes."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_bytes(b"x" * 100)
    (tmp_path / "pkg" / "sub" / "b.py").write_bytes(b"y" * 23)
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.py").write_bytes(b"z" * 1000)
    raw = {"code_packing": "raw"}
    assert code_bytes(QuantConfig(code_files=["pkg/**/*.py", "pkg/a.py"], **raw), tmp_path) == 123
    for packing in ("raw", "packed"):
        with pytest.raises(FileNotFoundError, match="matches no file"):
            code_bytes(
                QuantConfig(code_files=["pkg/**/*.py", "train_gpt.py"], code_packing=packing), tmp_path
            )


def test_code_bytes_refuses_files_outside_the_root(tmp_path):
    """`../x`, absolute globs and links that resolve outside the root are errors, never counted."""
    from pgolf_core.code_bytes import CodeFilesError, counted_files

    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key.py").write_bytes(b"k" * 50)
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_bytes(b"x" * 100)
    for pattern in ("../secret/*.py", str(tmp_path / "secret" / "key.py"), "pkg/../../secret/key.py"):
        with pytest.raises(CodeFilesError, match="leaves the project"):
            code_bytes(QuantConfig(code_files=[pattern]), root)
    (root / "pkg" / "link.py").symlink_to(tmp_path / "secret" / "key.py")
    with pytest.raises(CodeFilesError, match=r"link\.py, which resolves to .*secret/key\.py, outside the"):
        counted_files(["pkg/*.py"], root)
    (root / "pkg" / "link.py").unlink()
    assert counted_files(["pkg/*.py", "pkg/a.py"], root) == [Path("pkg/a.py")]


def test_artifact_loader_inflates_nothing_past_the_declared_bounds(good_blob, monkeypatch):
    """A valid-looking 8 KB file whose one tensor inflates to 8 MB: with the total bound at 1 MB it is
    refused before any decompression (the loader once inflated whatever the sections declared: a 4 MB
    file took 4.3 GB); a stream that expands past its section's declared size stops at that size."""
    import tracemalloc

    from pgolf_core.quant import header as fmt

    big = 8 << 20
    payload = zlib.compress(bytes(big), 9)
    assert len(payload) < 10_000

    def one_tensor(h):
        h["sections"] = [{"name": "all", "len": len(payload), "raw": big, "parts": [[1, big]]}]
        h["tensors"] = [
            {
                "n": "t",
                "k": "raw",
                "g": "other",
                "dt": "uint8",
                "sh": [big],
                "m": {},
                "a": {"data": [0, 0, "uint8", [big]]},
            }
        ]

    bomb = resign(good_blob, one_tensor, payload=payload)
    assert load_artifact(bomb)["t"].numel() == big  # a well-formed file: it does inflate 1000x
    monkeypatch.setattr(fmt, "_MAX_RAW_TOTAL", 1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(
            ArtifactError, match=r"sections declare 8,388,608 decompressed bytes \(at most 1,048"
        ):
            load_artifact(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak:,} bytes allocated for a refused file"
    monkeypatch.undo()

    # The same stream behind a section that declares 1,000 bytes: inflation stops at 1,001 bytes.
    def declares_1000(h):
        one_tensor(h)
        h["sections"][0].update(raw=1000, parts=[[1, 1000]])
        h["tensors"][0].update(sh=[1000], a={"data": [0, 0, "uint8", [1000]]})

    small = resign(good_blob, declares_1000, payload=payload)
    tracemalloc.start()
    try:
        with pytest.raises(
            ArtifactError, match=r"section 0 \(all\): zlib stream expands to 1001\+ bytes, header says"
        ):
            load_artifact(small)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak:,} bytes allocated"


def test_code_bytes_are_counted_one_way_and_the_policy_is_light():
    """The artifact, compliance T7 and the export count through pgolf_core.code_bytes (they had three
    implementations); the config takes its default file list from there without importing torch."""
    import subprocess
    import sys

    from pgolf_core import compliance
    from pgolf_core.code_bytes import RUNTIME_CODE_FILES, counted_files
    from pgolf_core.config import RUNTIME_CODE_FILES as from_config

    assert from_config is RUNTIME_CODE_FILES and QuantConfig().code_files == list(RUNTIME_CODE_FILES)
    files = counted_files(RUNTIME_CODE_FILES, REPO_ROOT)
    assert Path("pgolf_core/code_bytes.py") in files and Path("pgolf_core/cli.py") not in files
    by_hand = sum((REPO_ROOT / f).stat().st_size for f in files)
    twice = [REPO_ROOT / f for f in files] + [REPO_ROOT / files[0]]
    raw = QuantConfig(code_packing="raw")
    assert code_bytes(raw, REPO_ROOT) == compliance.code_bytes(twice) == by_hand
    heavy = "('torch', 'numpy', 'pgolf_core.quant')"
    probe = f"import sys, pgolf_core.config; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "[]"
