"""Counted code bytes: raw, minified, compressed, and the packed train_gpt.py that ships (code_pack.py).

    .venv/bin/python bench/code_pack.py

Every number is the current checkout's default ``quant.code_files`` plus the export's entry script
(the export adds the run's config.yaml, about 1 KB once compressed). For scale: #1855 counted 31,999 B
for its 157,868 B script (pyminify + brotli + base85), #1394 15,516 B (lzma + base85). Copy the table
into bench/README.md.
"""

from __future__ import annotations

import datetime
import lzma
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the checkout's pgolf_core, not an installed copy
    sys.path.insert(0, str(REPO))

from pgolf_core.code_bytes import RUNTIME_CODE_FILES  # noqa: E402
from pgolf_core.code_pack import archive, minify, pack, project_files  # noqa: E402


def xz(data: bytes) -> int:
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME))


def main() -> None:
    files = project_files(RUNTIME_CODE_FILES, REPO)
    t0 = time.perf_counter()
    small = {k: minify(v.decode(), k).encode() if k.endswith(".py") else v for k, v in files.items()}
    t_minify = time.perf_counter() - t0
    t0 = time.perf_counter()
    wrapper = pack(files)  # minified sources cached above: this is archive + lzma + base85
    t_pack = time.perf_counter() - t0
    raw = sum(map(len, files.values()))
    rows = [
        ("raw files", raw),
        ("minified files", sum(map(len, small.values()))),
        ("raw, xz -9e", xz(archive(files))),
        ("minified, xz -9e", xz(archive(small))),
        ("packed train_gpt.py (minified, xz -9e, base85)", len(wrapper)),
    ]
    print(f"{datetime.date.today()}, {platform.node()} ({platform.machine()}), {len(files)} files")
    print("| form | bytes | of raw |\n|---|---|---|")
    for name, n in rows:
        print(f"| {name} | {n:,} | {n / raw:.1%} |")
    print(f"minify {t_minify:.1f} s (python-minifier, 1 process), then pack {t_pack:.2f} s")


if __name__ == "__main__":
    main()
