"""Run a function on W local CPU processes joined in a gloo process group (for DDP tests).

``run_distributed(fn, *args, world_size=2)`` starts W processes with :mod:`torch.multiprocessing`,
each joins a gloo group through a TCP store the parent opened on 127.0.0.1 at a free port (bound to
port 0, so no port race), calls ``fn(rank, world_size, *args)`` and sends back its (torch-saved)
result. The group is always destroyed (``try/finally``), a worker's exception is re-raised in the
parent with its traceback, and a watchdog terminates the workers if they give no result within
``timeout`` seconds (``LOSSKIT_DDP_TIMEOUT``, default 60 s forked / 180 s spawned).

Processes are forked where the platform allows it (the children inherit the imported torch, which
keeps a test at about a second); set ``LOSSKIT_DDP_START_METHOD=spawn`` to use fresh interpreters.
``fn`` must be a module-level function so that spawn can pickle it.
"""

from __future__ import annotations

import datetime
import io
import os
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

START_METHOD = os.environ.get(
    "LOSSKIT_DDP_START_METHOD", "fork" if "fork" in mp.get_all_start_methods() else "spawn"
)
# Watchdog (not a timing assertion): a forked group normally answers in about a second; spawned
# workers import torch first, which takes tens of seconds on a loaded machine.
DEFAULT_TIMEOUT = float(os.environ.get("LOSSKIT_DDP_TIMEOUT", "60" if START_METHOD == "fork" else "180"))


def _worker(fn: Callable[..., Any], rank: int, world: int, port: int, args: tuple, conn: Any) -> None:
    torch.set_num_threads(1)
    try:
        timeout = datetime.timedelta(seconds=30)
        store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
        try:
            out = fn(rank, world, *args)
        finally:
            dist.destroy_process_group()
        buf = io.BytesIO()
        torch.save(out, buf)
        conn.send(("ok", buf.getvalue()))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _warm_up_parent() -> None:
    """Import what the workers will need before forking, so each child does not import it again.

    (Building the first optimizer imports torch._dynamo, several seconds on a loaded machine.)
    """
    import torch._dynamo
    import torch.nn.parallel  # noqa: F401


def run_distributed(
    fn: Callable[..., Any], *args: Any, world_size: int = 2, timeout: float | None = None
) -> list[Any]:
    """``[fn(0, W, *args), ..., fn(W - 1, W, *args)]``, each run in its own process of a gloo group."""
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    ctx = mp.get_context(START_METHOD)
    if START_METHOD == "fork":
        _warm_up_parent()
    store = dist.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=30)
    )
    procs, conns = [], {}
    try:
        for r in range(world_size):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker, args=(fn, r, world_size, store.port, args, send), daemon=True)
            p.start()
            send.close()
            procs.append(p)
            conns[recv] = r
        results: list[Any] = [None] * world_size
        deadline = time.monotonic() + timeout
        pending = dict(conns)
        while pending:
            ready = wait(list(pending), timeout=max(deadline - time.monotonic(), 0.0))
            if not ready:
                ranks = sorted(pending.values())
                raise TimeoutError(f"ranks {ranks} gave no result within {timeout:g} s")
            for conn in ready:
                r = pending.pop(conn)
                try:
                    status, payload = conn.recv()
                except EOFError:
                    raise RuntimeError(f"rank {r} exited without a result") from None
                if status != "ok":
                    raise RuntimeError(f"rank {r} failed:\n{payload}")
                results[r] = torch.load(io.BytesIO(payload), weights_only=False)
        for p in procs:
            p.join(timeout=max(deadline - time.monotonic(), 1.0))
        return results
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        for conn in conns:
            conn.close()
        del store
