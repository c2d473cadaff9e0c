"""The wheels an offline GPU machine lacks, downloaded here (where PyPI is reachable) into ``.whl/``.

    make device-wheels                                  # -> .whl/ (git-ignored), for the lent H200
    python bench/device_wheels.py --out .whl --python-version 3.12

The machine the device tool lends (../.library/device/KINDS.md) reaches no package index. Its python3
(3.12) holds CUDA torch, numpy, scipy, matplotlib, sentencepiece, pyyaml, jinja2, tqdm and
huggingface_hub, but not pydantic, brotli, python-minifier or the notebook stack (papermill, nbconvert,
nbformat, ipykernel). This downloads every dependency of pyproject.toml but the large ones already
there (``PROVIDED``), with their dependency closure, as binary wheels for that Python and platform;
``make device-check`` then installs pgolf from them offline (``pip install --no-index --find-links``)
before the check. The carried tree must stay under the tool's 64 MiB: the script refuses more than
``MAX_MIB``. The gpu extra is not here: flash-attn ships no wheel on PyPI (the check records it missing).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: bench/ is not a package of the installed project
    sys.path.insert(0, str(REPO))

from bench.devcheck.setup_env import dist_name  # noqa: E402

PROVIDED = {"torch", "numpy", "scipy", "matplotlib"}  # on the GPU image, and hundreds of MB as wheels
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
MAX_MIB = 40


def requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """pyproject's runtime dependencies, less ``PROVIDED``."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [d for d in deps if dist_name(d).lower() not in PROVIDED]


def target_python(version: str) -> str | None:
    """An interpreter of ``version`` here that runs (on PATH, or a pyenv build; a pyenv shim may not)."""
    pyenv = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"), reverse=True)
    for cand in filter(None, [shutil.which(f"python{version}"), *map(str, pyenv)]):
        probe = subprocess.run(
            [cand, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return cand
    return None


def download_command(reqs: list[str], out: Path, python_version: str, python: str) -> list[str]:
    abi = "cp" + python_version.replace(".", "")
    cmd = [python, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(out)]
    cmd += ["--python-version", python_version, "--implementation", "cp"]
    cmd += [x for a in (abi, "abi3", "none") for x in ("--abi", a)]
    cmd += [x for p in PLATFORMS for x in ("--platform", p)]
    return cmd + reqs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".whl", help="wheel folder (default: %(default)s)")
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python (%(default)s)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reqs = requirements()
    # pip download --python-version picks wheels for that Python but evaluates environment markers
    # against the Python running pip (papermill needs aiohttp only under python_version == "3.12"): run
    # it with an interpreter of the target version where there is one.
    python = target_python(args.python_version)
    if python is None:
        python = sys.executable
        print(f"device-wheels: no python{args.python_version} here; markers are evaluated for {python}")
    print(f"downloading wheels with {python} for:", " ".join(reqs), flush=True)
    proc = subprocess.run(download_command(reqs, out, args.python_version, python), check=False)
    if proc.returncode != 0:
        print(f"device-wheels: pip download failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    wheels = sorted(out.glob("*.whl"))
    big = [w.name for w in wheels if w.name.split("-")[0].lower().replace("_", "-") in PROVIDED]
    mib = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {mib:.1f} MiB in {out}")
    if big or mib > MAX_MIB:
        why = f"large wheels pulled in: {big}" if big else f"{mib:.1f} MiB > {MAX_MIB} MiB"
        print(f"device-wheels: {why}; the device tool carries at most 64 MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
