"""The self-extracting code pack: the archive format, the wrapper run on a toy pack (pydantic, dataclass,
docstring-only bodies), concurrent starts, the marker an unpacked folder counts by, the accounting.

The exported submission's end-to-end check (the packed wrapper trains and scores as the readable code
does) is tests/test_submission.py::test_exported_entry_scripts_train_and_score_alike_from_the_folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf_core.code_bytes import RUNTIME_CODE_FILES, counted_bytes
from pgolf_core.code_pack import (
    MARKER,
    PREFIX,
    archive,
    minify,
    pack,
    packed_bytes,
    packed_marker,
    project_files,
    unarchive,
)
from pgolf_core.config import load_config
from pgolf_core.quant import code_bytes
from tests.conftest import REPO

TOY_MODULE = '''"""A module docstring that packing drops."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, Field


class Settings(BaseModel):
    """Class attribute annotations are the fields: they must survive."""

    lr: float = Field(0.5, gt=0)  # a comment that packing drops
    name: str = "x"


@dataclass
class Point:
    x: int
    tags: list[str] = field(default_factory=list)


def only_a_docstring() -> None:
    """Its body is this docstring alone: packed, the body must still be valid."""


def describe(p: Point, s: Settings, *, scale: int = 2) -> str:
    total: int = p.x * scale
    return f"{total} {s.lr:.2f} {s.name!r} {p.tags} {only_a_docstring()}"
'''

TOY_ENTRY = '''"""Runs from the unpacked folder."""
import sys
from pathlib import Path

from toy.mod import Point, Settings, describe

print(describe(Point(3, ["a"]), Settings(lr=0.25, name="n")))
print(Settings.model_fields["lr"].metadata, Path(__file__).parent.name, sys.argv[0] == __file__)
try:
    Settings(lr=-1)
except ValueError:
    print("validated")
print((Path(__file__).parent / "data.txt").read_bytes())
'''

TOY = {
    "train_gpt.py": TOY_ENTRY.encode(),
    "toy/__init__.py": b"",
    "toy/mod.py": TOY_MODULE.encode(),
    "data.txt": b"kept \x00 as is\n",
}
TOY_OUTPUT = "6 0.25 'n' ['a'] None"


def test_archive_round_trip_and_bad_paths():
    files = {"a.py": b"x = 1\n", "d/b.bin": bytes(range(256)) + b"\n\n12\n", "empty": b""}
    assert unarchive(archive(files)) == files
    for bad in ("../up.py", "/abs.py", "a\nb.py", ""):
        with pytest.raises(ValueError, match="is not a relative path inside the pack"):
            archive({bad: b""})
    with pytest.raises(ValueError, match="no train_gpt.py among the files"):
        pack({"a.py": b""})
    with pytest.raises(ValueError, match=r"pack: bad.py is not valid UTF-8 Python source \("):
        pack({"train_gpt.py": b"", "bad.py": b"def (:"})


def test_minify_drops_docstrings_comments_and_function_annotations_only():
    out = minify(TOY_MODULE, "toy/mod.py")
    for dropped in ("A module docstring", "must survive", "Its body is", "a comment", "-> str", "-> None"):
        assert dropped not in out, dropped
    assert "lr:float=Field(.5,gt=0)" in out.replace(" ", "") and "x:int" in out.replace(" ", "")
    assert "scale=2" in out and "total" in out  # names kept (rename_locals off)
    compile(out, "toy/mod.py", "exec")
    assert len(out) < 0.75 * len(TOY_MODULE)


def run_wrapper(folder: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train_gpt.py"], cwd=folder, capture_output=True, text=True, timeout=timeout
    )


def test_the_wrapper_unpacks_beside_itself_and_runs_the_entry(tmp_path):
    wrapper = pack(TOY)
    assert wrapper.isascii() and len(wrapper) < 2000
    (tmp_path / "train_gpt.py").write_bytes(wrapper)
    proc = run_wrapper(tmp_path)
    assert proc.returncode == 0, proc.stderr
    (unpacked,) = tmp_path.glob(f"{PREFIX}*")
    lines = proc.stdout.splitlines()
    assert lines[0] == TOY_OUTPUT and lines[2] == "validated" and lines[3] == repr(TOY["data.txt"])
    assert lines[1].endswith(f"{unpacked.name} True") and "Gt(gt=0)" in lines[1]
    assert (unpacked / "data.txt").read_bytes() == TOY["data.txt"]  # non-Python files are not minified
    assert json.loads((unpacked / MARKER).read_text()) == {"wrapper": "train_gpt.py", "bytes": len(wrapper)}
    assert packed_marker(unpacked) == len(wrapper)
    assert packed_bytes(["toy/*.py"], unpacked) == len(wrapper)  # counted as shipped, not repacked
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["train_gpt.py", unpacked.name])


def test_concurrent_starts_unpack_once(tmp_path):
    """torchrun starts every rank at once: each unpacks into its own folder; one rename wins."""
    (tmp_path / "train_gpt.py").write_bytes(pack(TOY))
    procs = [
        subprocess.Popen(
            [sys.executable, "train_gpt.py"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e.decode()[-500:] for _, e in outs]
    assert all(o.decode().splitlines()[0] == TOY_OUTPUT for o, _ in outs)
    assert len(list(tmp_path.iterdir())) == 2  # the wrapper and one unpacked folder, no leftovers


def test_a_marker_counts_only_in_an_unpacked_folder(tmp_path):
    folder = tmp_path / f"{PREFIX}0123"
    folder.mkdir()
    (tmp_path / "train_gpt.py").write_bytes(b"x" * 1234)
    (folder / MARKER).write_text(json.dumps({"wrapper": "train_gpt.py", "bytes": 1}))
    assert packed_marker(folder) == 1234  # the wrapper's size on disk, not the number written
    for wrapper in ("../train_gpt.py", "missing.py"):
        (folder / MARKER).write_text(json.dumps({"wrapper": wrapper}))
        assert packed_marker(folder) is None
    (folder / MARKER).write_text("not json")
    assert packed_marker(folder) is None
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / MARKER).write_text(json.dumps({"wrapper": "train_gpt.py"}))
    assert packed_marker(other) is None


def test_the_accounting_counts_as_the_config_ships():
    packed_cfg = load_config(REPO / "params/smoke/train.yaml")
    raw_cfg = load_config(REPO / "params/smoke/train.yaml", ["quant.code_packing=raw"])
    assert packed_cfg.quant.code_packing == "packed"
    raw = code_bytes(raw_cfg.quant, REPO)
    assert raw == counted_bytes(RUNTIME_CODE_FILES, REPO)
    packed = code_bytes(packed_cfg.quant, REPO)
    assert packed == len(pack(project_files(RUNTIME_CODE_FILES, REPO)))
    print(f"counted code: {raw:,} B raw, {packed:,} B packed")
    assert packed < raw / 4


def test_the_packed_size_is_cached_by_its_inputs(tmp_path, monkeypatch):
    import pgolf_core.code_pack as cp

    monkeypatch.setattr(cp, "SIZE_CACHE", tmp_path / "cache" / "packed_sizes.json")
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("X = 1\n")
    first = packed_bytes(["pkg/*.py"], root)
    assert first == len(pack(project_files(["pkg/*.py"], root)))
    cached = json.loads((tmp_path / "cache" / "packed_sizes.json").read_text())
    assert list(cached.values()) == [first]

    def no_packing(files):
        raise AssertionError("packed again")

    monkeypatch.setattr(cp, "pack", no_packing)
    assert packed_bytes(["pkg/*.py"], root) == first  # same inputs: the cached size
    (root / "pkg" / "a.py").write_text("X = 1  # a comment that minifies away\nY = 'more code'\n")
    with pytest.raises(AssertionError, match="packed again"):  # any changed byte: a new key
        packed_bytes(["pkg/*.py"], root)
    monkeypatch.setattr(cp, "pack", pack)
    (tmp_path / "cache" / "packed_sizes.json").write_text("[1, 2]")  # a broken cache is recomputed
    assert packed_bytes(["pkg/*.py"], root) > first
