"""Process groups: torch.distributed start-up and Megatron-Core model-parallel groups."""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from megatron_dllm.config import ParallelConfig


def _ephemeral_low(default: int = 32768) -> int:
    """The first port of the kernel's ephemeral range (what outgoing connections are given)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def free_port() -> int:
    """A TCP port on localhost that is free right now.

    Drawn at random below the kernel's ephemeral range (from 10000), so that the connections other
    processes open (gloo, torchrun, HTTP) cannot be handed the port between this call and the
    rendezvous binding it; the OS's choice when no such port binds."""
    import random

    low = _ephemeral_low()
    candidates = range(10000, low) if low > 11000 else range(0)
    rng = random.SystemRandom()
    for _ in range(64 if len(candidates) else 0):
        port = rng.choice(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_process_group(device: str, timeout_s: int = 600) -> None:
    """Start torch.distributed from torchrun's environment, or as a single process.

    A plain ``python -m ...`` run (no RANK / WORLD_SIZE) becomes a one-rank group on localhost.
    Backend: nccl on CUDA, gloo on CPU.
    """
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        os.environ["RANK"] = "0"
        os.environ["WORLD_SIZE"] = "1"
        os.environ.setdefault("LOCAL_RANK", "0")
    if device == "cpu":
        if os.environ["MASTER_ADDR"] in ("127.0.0.1", "localhost"):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend="gloo" if device == "cpu" else "nccl", timeout=timedelta(seconds=timeout_s)
    )


def init_model_parallel(parallel: ParallelConfig, seed: int = 1234) -> None:
    """Create Megatron-Core's TP / PP / EP / DP groups and seed the model-parallel RNG streams."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        expert_model_parallel_size=parallel.expert_model_parallel_size,
        expert_tensor_parallel_size=parallel.expert_tensor_parallel_size,
    )
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def run_tool(device_flag: str, body: Callable[[str], None]) -> int:
    """A one-process tool's main part: the device (``--device``: auto | cpu | cuda) and the process
    group set up, ``body(device)`` run, and the group torn down. A ConfigError / DataError /
    ValueError from ``body`` is printed as ``error: ...`` on stderr; returns the exit code (0, or 2)."""
    from megatron_dllm.config import ConfigError
    from megatron_dllm.data.errors import DataError
    from megatron_dllm.platform.device import setup_device

    device = setup_device(None if device_flag == "auto" else device_flag)
    init_process_group(device)
    try:
        body(device)
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        teardown()
    return 0


def teardown() -> None:
    """Destroy model-parallel groups and the process group (tests, tools)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def comm_device() -> torch.device:
    """Device for small tensors that go through collectives (nccl needs CUDA tensors)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
