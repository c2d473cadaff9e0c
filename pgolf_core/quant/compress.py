"""Compressors and byte shuffling for the artifact.

zlib level 9 (the baseline), lzma preset 9 (#1019), brotli quality 11 with a 16 MiB window (#1218 on).
Byte shuffle with stride k writes byte 0 of every k-byte element, then byte 1, ...: the high bytes of
fp16/fp32 values (sign, exponent) are alike and compress far better together (#1218 on, stride 2 over
the whole torch.save blob). Decompression is bounded by the size the header declares, so a crafted
stream cannot inflate without limit.

lrzip (``lrzip -z -L 9``: ZPAQ context mixing, what #1855 runs on its per-group int8 streams) is an
external binary (Debian package ``lrzip``), used where it is installed and never required: the
per-group layout falls back to brotli without it, and ``lrzip_status()`` says which was available.
It runs on stdin/stdout (0.651 has no -k for decompression), with ``LRZIP=NOCONFIG`` so no user
config changes the output, and a fixed thread count: ZPAQ splits its input per thread, so the bytes
depend on -p (not on the machine) once it is pinned.
"""

from __future__ import annotations

import functools
import lzma
import shutil
import subprocess
import tempfile
import zlib

import brotli

COMPRESSORS = ("zlib", "lzma", "brotli")  # the whole-blob codecs ``compressor: auto`` tries
CODECS = (*COMPRESSORS, "lrzip")  # every codec a section may use
# -T: no LZ4 pre-test; lrzip otherwise stores int8 code streams that LZ4 cannot shrink (most of them)
# uncompressed, though ZPAQ takes 15% off them
LRZIP_ARGS = ("-z", "-L", "9", "-T", "-p", "8", "-Q")
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9}]
_LRZIP_ENV = {"LRZIP": "NOCONFIG"}


def lrzip_path() -> str | None:
    """The lrzip binary on PATH, or None."""
    return shutil.which("lrzip")


@functools.lru_cache(maxsize=4)
def _lrzip_version(path: str) -> str:
    try:
        out = subprocess.run(
            [path, "-V"], check=False, capture_output=True, text=True, timeout=30, env=_env()
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"lrzip: {path} does not run ({e})"
    text = (out.stdout + out.stderr).strip().splitlines()
    words = text[0].split() if text else []
    return f"lrzip {words[-1]}" if len(words) >= 2 and words[1] == "version" else f"lrzip {' '.join(words)}"


def lrzip_status() -> str:
    """ "lrzip <version>" when the binary is installed, else "lrzip: not installed"."""
    path = lrzip_path()
    return "lrzip: not installed" if path is None else _lrzip_version(path)


def _env() -> dict[str, str]:
    # The lrzip subprocess gets only the pinned setting, never this process's environment: the binary is
    # called by its absolute path, and no user config or variable can change the bytes it writes.
    return dict(_LRZIP_ENV)


def _lrzip_compress(data: bytes) -> bytes:
    path = lrzip_path()
    if path is None:
        raise RuntimeError("lrzip is not installed (Debian/Ubuntu: apt install lrzip); use brotli")
    out = subprocess.run([path, *LRZIP_ARGS], check=False, input=data, capture_output=True, env=_env())
    if out.returncode != 0:
        raise RuntimeError(
            f"lrzip {' '.join(LRZIP_ARGS)} failed: {out.stderr.decode(errors='replace')[:200]}"
        )
    return out.stdout


def _lrzip_decompress(data: bytes, size: int) -> bytes:
    """At most ``size + 1`` bytes of ``lrzip -d`` output (the process is killed past that)."""
    path = lrzip_path()
    if path is None:
        raise DecompressError("the stream is lrzip-compressed and lrzip is not installed (apt install lrzip)")
    with tempfile.TemporaryFile() as src:
        src.write(data)
        src.seek(0)
        proc = subprocess.Popen(
            [path, "-d", "-Q"], stdin=src, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env()
        )
        out = b""
        try:
            out = proc.stdout.read(size + 1)
        finally:
            if proc.poll() is None and len(out) > size:
                proc.kill()
            proc.stdout.close()
            rc = proc.wait()
    if len(out) <= size and rc != 0:
        raise DecompressError(f"lrzip stream is corrupt (lrzip -d exit status {rc})")
    return out


class DecompressError(ValueError):
    """A stream did not decompress to the declared size."""


def compress(data: bytes, method: str) -> bytes:
    if method == "zlib":
        return zlib.compress(data, 9)
    if method == "lzma":
        # Raw LZMA2 (no .xz container): 13+ bytes of framing fewer per stream, same ratio.
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    if method == "brotli":
        return brotli.compress(data, quality=11, lgwin=24)
    if method == "lrzip":
        return _lrzip_compress(data)
    raise ValueError(f"unknown compressor {method!r}; expected one of {CODECS}")


def decompress(data: bytes, method: str, size: int) -> bytes:
    """Decompress ``data`` that must expand to exactly ``size`` bytes (never more is produced)."""
    try:
        if method == "zlib":
            d = zlib.decompressobj()
            out = d.decompress(data, size + 1)
            ok = d.eof and not d.unconsumed_tail and not d.unused_data
        elif method == "lzma":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
            out = d.decompress(data, max_length=size + 1)
            ok = d.eof and not d.unused_data
        elif method == "brotli":
            d = brotli.Decompressor()
            out = d.process(data, output_buffer_limit=size + 1)  # stops growing past the declared size
            ok = d.is_finished()
        elif method == "lrzip":
            out, ok = _lrzip_decompress(data, size), True
        else:
            raise DecompressError(f"unknown compressor {method!r}; expected one of {CODECS}")
    except (zlib.error, lzma.LZMAError, brotli.error) as e:
        raise DecompressError(f"{method} stream is corrupt: {e}") from None
    if len(out) != size or not ok:
        raise DecompressError(
            f"{method} stream expands to {len(out)}{'+' if len(out) > size else ''} bytes, header says {size}"
        )
    return out


def shuffle(data: bytes, stride: int) -> bytes:
    """Byte-transpose ``data`` viewed as (n, stride) -> (stride, n); len(data) must divide by stride."""
    if stride == 1:
        return bytes(data)
    if len(data) % stride:
        raise ValueError(f"byte shuffle: {len(data)} bytes is not a multiple of stride {stride}")
    return b"".join(data[i::stride] for i in range(stride))


def unshuffle(data: bytes, stride: int) -> bytes:
    if stride == 1:
        return bytes(data)
    if len(data) % stride:
        raise ValueError(f"byte unshuffle: {len(data)} bytes is not a multiple of stride {stride}")
    n = len(data) // stride
    out = bytearray(len(data))
    for i in range(stride):
        out[i::stride] = data[i * n : (i + 1) * n]
    return bytes(out)
