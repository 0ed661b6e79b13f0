"""Run the pretraining CLI (one process or torchrun) and read what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from megatron_dllm.platform.distributed import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "examples", "configs", "tiny_moe_cpu.yaml")


def env() -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", TORCHDYNAMO_DISABLE="1",
             PYTHONWARNINGS="ignore")
    return e


def command(args, nproc: int = 1):
    if nproc == 1:
        return [sys.executable, "-m", "megatron_dllm.pretrain", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
            "-m", "megatron_dllm.pretrain", *args]


def pretrain(args, nproc: int = 1, timeout: int = 600, check: bool = True):
    proc = subprocess.run(command(args, nproc), cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"pretrain failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def metrics(path: str, kind: str = "train"):
    with open(path) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return [r for r in records if r.get("kind") == kind]
