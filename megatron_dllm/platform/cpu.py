"""The CPU backend: every shim megatron-core 0.16.1 needs to run on a CPU-only torch build.

This is the only module of megatron_dllm that monkeypatches anything (DESIGN.md decision 4). It is
applied explicitly by :func:`apply_cpu_backend`, called at start-up when the run's device is CPU; the
GPU path never imports it. Each shim is a small function with a docstring that says what it replaces
and why; they were written against megatron-core 0.16.1 and the entry point refuses other versions,
because the patched internals move between releases.

The measured reasons for each shim are in shared/docs/MCORE_CPU.md.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

SUPPORTED_MCORE_VERSION = "0.16.1"

_APPLIED = False
_DEVICE_MODE: "_CudaToCpuMode | None" = None


class CpuBackendError(RuntimeError):
    """The CPU backend cannot be applied in this environment."""


def installed_mcore_version() -> str:
    """Version string of the installed megatron-core distribution."""
    try:
        return importlib.metadata.version("megatron-core")
    except importlib.metadata.PackageNotFoundError as exc:
        raise CpuBackendError(
            "megatron-core is not installed; install it with "
            f"`pip install megatron-core=={SUPPORTED_MCORE_VERSION}`"
        ) from exc


def check_mcore_version(version: str | None = None) -> None:
    """Refuse any megatron-core other than the one the shims were written against."""
    version = installed_mcore_version() if version is None else version
    if version != SUPPORTED_MCORE_VERSION:
        raise CpuBackendError(
            f"the CPU backend supports megatron-core=={SUPPORTED_MCORE_VERSION} only, found "
            f"{version}; install it with `pip install megatron-core=={SUPPORTED_MCORE_VERSION}` "
            "(its shims patch version-specific internals)"
        )


def is_applied() -> bool:
    """True once :func:`apply_cpu_backend` has run in this process."""
    return _APPLIED


def apply_cpu_backend() -> None:
    """Apply every CPU shim, once per process. Raises CpuBackendError on an unsupported setup."""
    global _APPLIED
    if _APPLIED:
        return
    if torch.cuda.is_available():
        raise CpuBackendError(
            "CUDA is available: the CPU backend is for CPU-only runs; pass --device cuda "
            "(or leave --device unset) to train on the GPU"
        )
    check_mcore_version()
    for shim in SHIMS:
        shim()
        logger.debug("applied CPU shim %s", shim.__name__)
    _APPLIED = True


# ---------------------------------------------------------------------------------------------
# 1. RNG tracker
# ---------------------------------------------------------------------------------------------


def shim_rng_tracker() -> None:
    """Back megatron's CUDA RNG state tracker with the CPU generator.

    Replaces ``tensor_parallel.random.CudaRNGStatesTracker`` (and the module's private
    ``_get_cuda_rng_state`` / ``_set_cuda_rng_state``), which read and write CUDA generator
    state; a CPU-only build has none. Fork semantics are kept: inside ``fork(name)`` the CPU default
    generator runs on the named stream's state, and the previous state is restored on exit.
    """
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """RNG state tracker whose named streams are CPU generator states."""

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            saved = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)

        @contextlib.contextmanager
        def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            outer_state = torch.get_rng_state()
            outer_name = self._current_state_name
            if outer_name != "default-rng":
                self.states_[outer_name] = outer_state
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                if outer_name != "default-rng":
                    outer_state = self.states_[outer_name]
                torch.set_rng_state(outer_state)
                self._current_state_name = outer_name

    def get_state(device="cuda", clone=False, graph_safe=False):
        return torch.get_rng_state()

    def set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    mrandom.CudaRNGStatesTracker = CpuRNGStatesTracker
    mrandom._get_cuda_rng_state = get_state
    mrandom._set_cuda_rng_state = set_state
    # torch.cuda.manual_seed is a lazy call on a CPU build; make it seed nothing explicitly.
    torch.cuda.manual_seed = lambda seed: None
    torch.cuda.manual_seed_all = lambda seed: None
    mrandom.initialize_rng_tracker(force_reset=True)


# ---------------------------------------------------------------------------------------------
# 2. Current device
# ---------------------------------------------------------------------------------------------


def shim_current_device() -> None:
    """Make ``torch.cuda.current_device()`` answer ``'cpu'``.

    Megatron places new tensors with ``device=torch.cuda.current_device()``; on a CPU build that
    call raises. Answering the string ``'cpu'`` keeps those tensors on the CPU.
    """
    torch.cuda.current_device = lambda: "cpu"


# ---------------------------------------------------------------------------------------------
# 3. Streams and events
# ---------------------------------------------------------------------------------------------


class _InertStream:
    """Stand-in for torch.cuda.Stream on CPU: every operation is synchronous already."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event if event is not None else _InertEvent()

    def synchronize(self):
        pass

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _InertEvent:
    """Stand-in for torch.cuda.Event on CPU."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


def shim_streams_and_events() -> None:
    """Replace CUDA streams, events and synchronisation with inert stand-ins.

    ``torch.cuda.Stream/Event/current_stream/stream/synchronize`` raise on a CPU build; they are used
    by the MoE alltoall dispatcher, DDP / optimizer overlap, pipeline send/receive and checkpoint
    saving. On CPU all work is synchronous, so doing nothing is exact.
    """
    default_stream = _InertStream()
    torch.cuda.Stream = _InertStream
    torch.cuda.Event = _InertEvent
    torch.cuda.current_stream = lambda device=None: default_stream
    torch.cuda.default_stream = lambda device=None: default_stream
    torch.cuda.stream = lambda stream=None: contextlib.nullcontext(stream)
    torch.cuda.synchronize = lambda device=None: None
    torch.Tensor.record_stream = lambda self, stream: None


# ---------------------------------------------------------------------------------------------
# 4. Hard-coded 'cuda' devices
# ---------------------------------------------------------------------------------------------


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


_CPU_TYPE_TO_CUDA_TYPE = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    "torch.DoubleTensor": "torch.cuda.DoubleTensor",
    "torch.LongTensor": "torch.cuda.LongTensor",
    "torch.IntTensor": "torch.cuda.IntTensor",
    "torch.ByteTensor": "torch.cuda.ByteTensor",
    "torch.BoolTensor": "torch.cuda.BoolTensor",
}


class _CudaToCpuMode(TorchFunctionMode):
    """Torch-function mode that maps ``'cuda'`` devices to CPU.

    Maps ``device='cuda'`` keyword arguments, ``Tensor.cuda()`` and ``Tensor.to('cuda')`` to the CPU,
    and makes ``Tensor.type()`` report the ``torch.cuda.*`` names that megatron's optimizer compares
    parameter types against.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CPU_TYPE_TO_CUDA_TYPE.get(name, name)
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = dict(kwargs, device="cpu")
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu") + tuple(args[2:])
        return func(*args, **kwargs)


def shim_cuda_device_arguments() -> None:
    """Map tensors created on or moved to ``'cuda'`` to the CPU, process-wide.

    Pipeline schedules, optimizer scalars, gradient clipping, dist_checkpointing exchange utilities
    and RoPE utilities create tensors with ``device='cuda'`` or call ``.cuda()``. A global
    ``TorchFunctionMode`` catches all of them at once instead of patching each call site.
    """
    global _DEVICE_MODE
    _DEVICE_MODE = _CudaToCpuMode()
    _DEVICE_MODE.__enter__()  # stays active for the life of the process


# ---------------------------------------------------------------------------------------------
# 5. MoE TE GEMM name
# ---------------------------------------------------------------------------------------------


def shim_moe_te_gemm_name() -> None:
    """Define ``moe_utils.te_general_gemm`` as None when Transformer Engine is absent.

    Router gating refers to the name, which moe_utils defines only when TE imports; without it the
    sigmoid/softmax router raises NameError.
    """
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


# ---------------------------------------------------------------------------------------------
# 6. MoE split sizes
# ---------------------------------------------------------------------------------------------


def shim_moe_split_sizes() -> None:
    """Convert CPU split-size tensors too in ``moe_utils.maybe_move_tensor_to_cpu``.

    The alltoall dispatcher asks for numpy split sizes, but the stock helper converts CUDA tensors
    only; on CPU the sizes stay tensors and gloo's ``all_to_all_single`` rejects them.
    """
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    original = moe_utils.maybe_move_tensor_to_cpu

    @functools.wraps(original)
    def maybe_move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        if torch.is_tensor(tensor) and not tensor.is_cuda:
            return tensor.numpy() if as_numpy else tensor
        return original(tensor, as_numpy=as_numpy, record_stream=record_stream)

    moe_utils.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
    if hasattr(token_dispatcher, "maybe_move_tensor_to_cpu"):
        token_dispatcher.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu


# ---------------------------------------------------------------------------------------------
# 7. Uneven collectives
# ---------------------------------------------------------------------------------------------


def shim_uneven_collectives() -> None:
    """Emulate all-gather / reduce-scatter with unequal split sizes on gloo.

    Replaces ``tensor_parallel.mappings._gather_along_first_dim`` and
    ``_reduce_scatter_along_first_dim`` when split sizes are given (the MoE alltoall dispatcher with
    expert tensor parallelism): gloo has no uneven variants, so pad every split to the largest, run
    the even collective and slice. The even case is passed to the stock functions unchanged.
    """
    import torch.distributed as dist
    from megatron.core.tensor_parallel import mappings

    stock_gather = mappings._gather_along_first_dim
    stock_reduce_scatter = mappings._reduce_scatter_along_first_dim

    def gather_along_first_dim(input_, group, output_split_sizes=None, use_global_buffer=False):
        if output_split_sizes is None or group.size() == 1:
            return stock_gather(input_, group, output_split_sizes, use_global_buffer)
        sizes = [int(s) for s in output_split_sizes]
        width = max(sizes)
        padded = input_.new_zeros((width,) + tuple(input_.shape[1:]))
        padded[: input_.shape[0]] = input_
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0)

    def reduce_scatter_along_first_dim(
        input_, group, input_split_sizes=None, use_global_buffer=False
    ):
        if input_split_sizes is None or group.size() == 1:
            return stock_reduce_scatter(input_, group, input_split_sizes, use_global_buffer)
        sizes = [int(s) for s in input_split_sizes]
        width = max(sizes)
        chunks = torch.split(input_, sizes, dim=0)
        padded = input_.new_zeros((len(sizes), width) + tuple(input_.shape[1:]))
        for i, chunk in enumerate(chunks):
            padded[i, : chunk.shape[0]] = chunk
        summed = padded.clone()
        dist.all_reduce(summed, group=group)
        rank = dist.get_rank(group)
        return summed[rank, : sizes[rank]].contiguous()

    mappings._gather_along_first_dim = gather_along_first_dim
    mappings._reduce_scatter_along_first_dim = reduce_scatter_along_first_dim


# ---------------------------------------------------------------------------------------------
# 8. torch.compile of small fused helpers
# ---------------------------------------------------------------------------------------------


def shim_disable_compile() -> None:
    """Turn off TorchDynamo for the process.

    Megatron-Core wraps a few helpers (the sigmoid router, fused activations) in ``torch.compile``;
    on CPU the first call compiles for 2-20 s and gives nothing back on small models, and
    FlexAttention cannot train on CPU anyway. Results are unchanged (eager runs the same ops).
    """
    import torch._dynamo

    torch._dynamo.config.disable = True


# ---------------------------------------------------------------------------------------------
# 9. Distributed-optimizer load with torch Adam
# ---------------------------------------------------------------------------------------------


def shim_distributed_optimizer_step_state() -> None:
    """Let a 'fully_reshardable' DistributedOptimizer checkpoint load into torch Adam.

    Without Apex / Transformer Engine the optimizer is torch Adam, whose per-parameter state holds
    a ``step`` tensor. ``DistributedOptimizer.load_state_dict`` restores ``step`` from the common
    state, then ``_set_main_param_and_optimizer_states`` copies every key of the parameter's state
    from the loaded tensors, which carry no ``step``: KeyError. The replacement copies the keys the
    checkpoint has (param, exp_avg, exp_avg_sq) and leaves the restored ``step`` alone. The restored
    ``step`` is also one tensor object shared by every parameter's state, which torch Adam then
    increments once per parameter per step (wrong bias correction after a resume): each state gets
    its own copy.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    stock = DistributedOptimizer._set_main_param_and_optimizer_states

    def set_main_param_and_optimizer_states(self, model_param, tensors):
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return stock(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        targets = {"param": main_param, **self.optimizer.state[main_param]}
        for key, target in targets.items():
            if key in tensors:
                target.copy_(tensors[key])

    stock_load = DistributedOptimizer.load_state_dict

    def load_state_dict(self, state_dict):
        stock_load(self, state_dict)
        for state in self.optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()

    DistributedOptimizer._set_main_param_and_optimizer_states = set_main_param_and_optimizer_states
    DistributedOptimizer.load_state_dict = load_state_dict


# ---------------------------------------------------------------------------------------------
# 10. Recompute without Transformer Engine
# ---------------------------------------------------------------------------------------------


def shim_checkpoint_without_output_fp8() -> None:
    """Make ``CheckpointWithoutOutput(fp8=False)`` mean no FP8 when Transformer Engine is absent.

    Megatron-Core 0.16.1 sets ``self.fp8 = fp8 is not None``, which is True for the default
    ``fp8=False``, so the layernorm and moe_act recompute paths call TE's FP8 state manager and
    raise NameError without TE. The recompute itself needs no TE.
    """
    from megatron.core.tensor_parallel import random as mrandom

    if getattr(mrandom, "HAVE_TE", False):
        return
    stock_init = mrandom.CheckpointWithoutOutput.__init__

    def init(self, fp8=False):
        stock_init(self, fp8)
        self.fp8 = bool(fp8)

    mrandom.CheckpointWithoutOutput.__init__ = init


SHIMS = (
    shim_rng_tracker,
    shim_current_device,
    shim_streams_and_events,
    shim_cuda_device_arguments,
    shim_moe_te_gemm_name,
    shim_moe_split_sizes,
    shim_uneven_collectives,
    shim_disable_compile,
    shim_distributed_optimizer_step_state,
    shim_checkpoint_without_output_fp8,
)
