"""Run a function on N spawned CPU ranks with gloo on localhost, with a time bound.

    results = run_ranks(worker, world_size=2, args=(...,), timeout=300)

``worker(rank, world_size, *args)`` must be a module-level function (spawned processes import it).
Each rank gets RANK / WORLD_SIZE / MASTER_* set, the CPU backend applied and the process group
initialised before ``worker`` runs; its return value (picklable) comes back in rank order. An
exception on any rank fails the call with that rank's traceback; a rank still running after
``timeout`` seconds is killed and the call raises TimeoutError. Nothing is ever skipped.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
import traceback

import torch.multiprocessing as mp

from megatron_dllm.platform.distributed import free_port


def _entry(rank, world_size, port, out_dir, fn, args):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1",
    )
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    path = os.path.join(out_dir, f"rank{rank}.pkl")
    try:
        from megatron_dllm.platform.device import setup_device
        from megatron_dllm.platform.distributed import init_process_group, teardown

        setup_device("cpu")
        init_process_group("cpu", timeout_s=120)
        result = fn(rank, world_size, *args)
        payload = ("ok", result)
    except BaseException:  # noqa: BLE001 - report everything to the parent
        payload = ("error", traceback.format_exc())
    with open(path + ".tmp", "wb") as handle:
        pickle.dump(payload, handle)
    os.replace(path + ".tmp", path)
    try:
        teardown()
    except Exception:
        pass
    if payload[0] == "error":
        os._exit(1)


def run_ranks(fn, world_size: int, args=(), timeout: float = 300.0):
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned ranks; list of results by rank."""
    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory() as out_dir:
        procs = [
            ctx.Process(target=_entry, args=(r, world_size, port, out_dir, fn, args), daemon=False)
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        alive = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        results, errors = [], []
        for r in range(world_size):
            path = os.path.join(out_dir, f"rank{r}.pkl")
            if not os.path.exists(path):
                results.append(None)
                continue
            with open(path, "rb") as handle:
                status, value = pickle.load(handle)
            if status == "error":
                errors.append(f"--- rank {r} ---\n{value}")
            results.append(value if status == "ok" else None)
        if errors:
            raise RuntimeError("distributed worker failed:\n" + "\n".join(errors))
        if alive:
            raise TimeoutError(f"ranks {alive} still running after {timeout:.0f} s (killed)")
        if any(p.exitcode != 0 for p in procs):
            codes = {r: p.exitcode for r, p in enumerate(procs)}
            raise RuntimeError(f"a rank exited abnormally (exit codes {codes}) without a report")
        return results
