"""Megatron-Core training machinery, wired once: DDP, the (distributed) optimizer, pipeline schedules.

``forward_backward`` runs the micro-batches of one step with ``get_forward_backward_func`` (1F1B /
interleaved when PP > 1); ``optimizer_step`` applies the update only when the global gradient norm is
finite; ``train_step`` is the two together. The loss contract is Megatron's
per-token one: a forward step's loss function returns ``(loss_sum, num_tokens, report)`` and the
framework normalises gradients by the token count summed over micro-batches and data-parallel ranks
(``calculate_per_token_loss``), so the loss is the mean over every loss token of the global batch.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
from megatron.core import parallel_state
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_dllm.config import ConfigError
from megatron_dllm.platform.distributed import comm_device


def wrap_ddp(chunks: List[torch.nn.Module], *, use_distributed_optimizer: bool = False,
             overlap_grad_reduce: bool = False, overlap_param_gather: bool = False) -> List[DistributedDataParallel]:
    """Wrap model chunks in Megatron-Core DDP with fp32 gradient buffers.

    ``overlap_param_gather`` (distributed optimizer): after an update each rank holds only its shard
    of the new weights; DDP's forward pre-hooks all-gather them bucket by bucket during the next
    forward. Whatever reads the weights outside a training forward goes through :func:`synced_params`.
    """
    if overlap_param_gather and not (use_distributed_optimizer and overlap_grad_reduce):
        raise ConfigError("--overlap-param-gather needs --use-distributed-optimizer and --overlap-grad-reduce "
                          "(as in Megatron-LM): add them or drop --overlap-param-gather")
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap_grad_reduce,
        overlap_param_gather=overlap_param_gather,
        use_distributed_optimizer=use_distributed_optimizer,
        # Non-finite gradients are caught by ``optimizer_step`` from the global norm, which every rank
        # agrees on. Megatron's per-bucket check would raise on one rank only (the others wait in
        # the reduction), costs a host sync per bucket, cannot skip an iteration, and its error path
        # calls torch.cuda.current_device() (fails on CPU).
        check_for_nan_in_grad=False,
        bucket_size=None,
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        wrapped.append(
            DistributedDataParallel(
                config=chunk.config,
                ddp_config=ddp_config,
                module=chunk,
                # Bucketing only pays off with overlap; chunk 0 of interleaved PP is bucketed as usual.
                disable_bucketing=(i > 0) or not overlap_grad_reduce,
            )
        )
    return wrapped


@contextlib.contextmanager
def synced_params(model: List[DistributedDataParallel]):
    """Every rank's weights complete inside the block (evaluation, checkpoint saves).

    With ``--overlap-param-gather`` the all-gather of the last update waits for the next forward's
    pre-hooks; as Megatron-LM does around evaluation and saves, the hooks are removed (which runs the
    all-gather now) and put back afterwards. Without overlap the weights are complete already.
    """
    hooked = [chunk for chunk in model if getattr(chunk, "use_forward_hook", False)]
    for chunk in hooked:
        chunk.disable_forward_pre_hook(param_sync=True)
    try:
        yield
    finally:
        for chunk in hooked:
            chunk.enable_forward_pre_hook()


def build_optimizer(model: List[DistributedDataParallel], opt_config: OptimizerConfig):
    """Megatron's optimizer (distributed when ``opt_config.use_distributed_optimizer``), hooked up."""
    optimizer = get_megatron_optimizer(opt_config, model)
    config = model[0].config
    if not config.calculate_per_token_loss:
        raise ValueError("the model config must set calculate_per_token_loss before DDP wrapping")
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = [m.no_sync for m in model]
    if len(model) == 1:
        config.no_sync_func = config.no_sync_func[0]
    return optimizer


def forward_backward(
    forward_step_func: Callable,
    batches: List,
    model: List[DistributedDataParallel],
    optimizer=None,
    *,
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool = False,
) -> List[Dict]:
    """Forward (and backward unless ``forward_only``) over one step's micro-batches.

    ``batches`` are the step's micro-batches; with virtual pipeline stages (several model chunks)
    every chunk reads them through its own iterator, as the interleaved schedule expects.
    ``seq_length`` is the model-input length of this step (2L in block-diffusion phases), used by the
    pipeline schedule to size the activations it sends between stages. Returns the per-micro-batch
    reports of the last pipeline stage (empty elsewhere). Gradients are zeroed first (the DDP buffers,
    and the ``optimizer``'s grads, which its previous step aliased to them) and reduced over
    data-parallel ranks at the end (Megatron's ``finalize_model_grads``).
    """
    if not forward_only:
        for chunk in model:
            chunk.zero_grad_buffer()
        if optimizer is not None:
            optimizer.zero_grad()
    forward_backward_func = get_forward_backward_func()
    return forward_backward_func(
        forward_step_func=forward_step_func,
        data_iterator=[iter(batches) for _ in model] if len(model) > 1 else iter(batches),
        model=model if len(model) > 1 else model[0],
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


@torch.no_grad()
def optimizer_step(optimizer) -> Tuple[float, bool]:
    """Clip and apply the update when the global gradient norm is finite; (grad norm, applied).

    The steps of Megatron-Core's ``MegatronOptimizer.step`` / ``ChainedOptimizer.step`` (copy grads to
    the main params, global norm, clip by that norm, inner step), with the norm checked before the
    update: a NaN / Inf norm leaves parameters and optimizer state untouched. The norm is computed
    every step (also with ``--clip-grad 0``); it is the one host sync of the update, as before.
    """
    if optimizer.prepare_grads():  # found_inf of a loss scaler (fp16 only): Megatron skips the step
        return float("nan"), False
    grad_norm = float(optimizer.get_grad_norm())
    if not math.isfinite(grad_norm):
        return grad_norm, False
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        if getattr(sub, "is_stub_optimizer", False) or sub.config.clip_grad <= 0.0:
            continue
        params = sub.get_parameters()
        if params:
            clip_grad_by_total_norm_fp32(params, max_norm=sub.config.clip_grad, total_norm=grad_norm,
                                         use_decoupled_grad=sub.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return grad_norm, bool(optimizer.step_with_ready_grads())


def train_step(
    forward_step_func: Callable,
    batches: List,
    model: List[DistributedDataParallel],
    optimizer,
    *,
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool = False,
) -> Tuple[List[Dict], Optional[float], bool]:
    """One step: ``forward_backward`` then ``optimizer_step`` (see both).

    Returns the reports, the gradient norm (None when ``forward_only``) and whether the update was
    applied (False when the gradient norm is not finite).
    """
    reports = forward_backward(forward_step_func, batches, model, optimizer, num_microbatches=num_microbatches,
                               seq_length=seq_length, micro_batch_size=micro_batch_size,
                               forward_only=forward_only)
    if forward_only:
        return reports, None, False
    grad_norm, updated = optimizer_step(optimizer)
    return reports, grad_norm, updated


def data_parallel() -> Tuple[int, int]:
    """(rank, size) of this rank's data-parallel group: which micro-batches of a global batch it reads."""
    return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()


def reduce_reports(reports: List[Dict], keys=("loss_sum", "num_tokens")) -> Dict[str, float]:
    """Sum report entries over micro-batches and data- (and context-) parallel ranks, broadcast from the
    last stage.

    Every rank gets the same numbers (PP stages other than the last contribute zeros). The entries
    stay on the device until one reduction and one copy to the host at the end.
    """
    device = comm_device()
    sums = torch.zeros(len(keys), dtype=torch.float64, device=device)
    for report in reports:
        sums += torch.stack([torch.as_tensor(report[key]).to(device=device, dtype=torch.float64)
                             for key in keys])
    # over data- and context-parallel ranks: a CP rank's report holds the terms of its rows only
    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    torch.distributed.all_reduce(sums, group=group)
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.all_reduce(sums, group=parallel_state.get_pipeline_model_parallel_group())
    sums = sums.cpu()
    return {key: sums[i].item() for i, key in enumerate(keys)}

