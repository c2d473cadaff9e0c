"""Where a number came from: git state, package versions, hardware (recorded in every run manifest)."""

from __future__ import annotations

import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "pgolf",
    "torch",
    "numpy",
    "sentencepiece",
    "pydantic",
    "brotli",
    "flash-attn",
    "flash_attn_3",
    "papermill",
    "nbconvert",
    "matplotlib",
    "huggingface_hub",
)


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(root: Path | str = ".") -> dict:
    """{"commit": sha or None, "dirty": bool or None}; dirty counts tracked and untracked changes."""
    sha = _run(["git", "rev-parse", "HEAD"], Path(root))
    status = _run(["git", "status", "--porcelain"], Path(root))
    return {"commit": sha, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict:
    info: dict = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    try:
        import torch

        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["nvidia_smi"] = _run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
            )
        else:
            info["gpus"] = []
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def provenance(root: Path | str = ".") -> dict:
    return {"git": git_state(root), "packages": package_versions(), "hardware": hardware()}
