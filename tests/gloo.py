"""Run a worker function on a real multi-process gloo group (spawned; a free localhost port)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: Callable, world: int, *args, timeout: float = TIMEOUT_S) -> None:
    """Start ``worker(rank, world, port, *args)`` in ``world`` spawned processes; all must exit 0.

    ``worker`` must be importable (a module function): spawn re-imports it in the children.
    """
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=worker, args=(rank, world, port, *args)) for rank in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    assert not alive, f"{worker.__module__}.{worker.__name__}: workers still running after {timeout} s"
    assert [p.exitcode for p in procs] == [0] * world, f"{worker.__name__} exit codes {[p.exitcode for p in procs]}"


@contextmanager
def gloo_group(rank: int, world: int, port: int) -> Iterator[None]:
    """Inside a worker: one thread (CPU results must not depend on how work splits across threads), a
    gloo group on the port ``run_ranks`` chose, destroyed on the way out."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        yield
    finally:
        dist.destroy_process_group()
