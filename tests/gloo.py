"""Run a worker function on a real multi-process gloo group (spawned processes on localhost).

Teardown is where such tests turn flaky (a rank aborting with "terminate called without an active
exception", about 1 run in 10 under load). Two races cause it, and both are closed here:
- the rendezvous store lived in rank 0, so rank 0 leaving destroyed a server that a peer could still be
  talking to (its own teardown, a pending request). The store now lives in the parent process, which
  outlives every rank: ranks connect to it as clients and may leave in any order.
- a rank could tear down its gloo connections while a peer still had the last collective in flight. A
  rank that finished its work now waits in a barrier, so every collective is complete on every rank
  before any of them destroys the group.
The parent waits for all ranks (stopping the rest as soon as one fails, instead of waiting for a
collective's timeout) before it asserts anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from multiprocessing.connection import wait

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 120
HOST = "127.0.0.1"


def run_ranks(worker: Callable, world: int, *args, timeout: float = TIMEOUT_S) -> None:
    """Start ``worker(rank, world, port, *args)`` in ``world`` spawned processes; all must exit 0.

    ``port`` is the parent's rendezvous store (pass it to ``gloo_group``). ``worker`` must be importable
    (a module function): spawn re-imports it in the children.
    """
    # port 0: the OS picks a free port as the store binds it, so no other process can take it in between
    store = dist.TCPStore(HOST, 0, None, True, timeout=timedelta(seconds=timeout), wait_for_workers=False)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(rank, world, store.port, *args)) for rank in range(world)]
    for p in procs:
        p.start()
    try:
        pending = {p.sentinel: p for p in procs}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for sentinel in wait(list(pending), timeout=max(deadline - time.monotonic(), 0)):
                p = pending.pop(sentinel)
                p.join()
                if p.exitcode != 0:  # its peers would wait in a collective until the group's timeout
                    deadline = min(deadline, time.monotonic() + 10)
        late = [procs.index(p) for p in pending.values()]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        del store  # only after every rank has exited
    codes = [p.exitcode for p in procs]
    name = f"{worker.__module__}.{worker.__name__}"
    assert codes == [0] * world, f"{name}: exit codes per rank {codes}" + (
        f" (ranks {late} still running after {timeout} s or after a peer failed, killed)" if late else ""
    )


@contextmanager
def gloo_group(rank: int, world: int, port: int) -> Iterator[None]:
    """Inside a worker: one thread (CPU results must not depend on how work splits across threads), a
    gloo group on the parent's store, and an orderly way out: barrier, then destroy."""
    torch.set_num_threads(1)
    store = dist.TCPStore(HOST, port, None, False, timeout=timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        yield
        dist.barrier()  # the last collective is complete on every rank before any rank tears down
    finally:
        dist.destroy_process_group()
