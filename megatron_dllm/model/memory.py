"""Per-GPU training memory of a parallel layout: parameters, gradients, optimizer state, activations.

Parameter counts come from the model built on the meta device for TP = PP = EP = 1 (one process can
create no real TP/PP/EP groups), split the way Megatron-Core splits them on one rank of the layout:

* column-parallel linears (qkv, fc1) hold ``rows / TP``, row-parallel ones (proj, fc2) ``cols / TP``;
  the embedding and output layer hold ``padded_vocab(TP) / TP`` rows (the vocabulary is padded to a
  multiple of ``make_vocab_size_divisible_by * TP``); norms and routers are replicated;
* a rank holds ``num_experts / EP`` routed experts, their linears split by the expert TP size (ETP);
* layers are split evenly over PP (and virtual stages); the first stage holds the embedding, the last
  the final norm and output layer, and with tied embeddings and PP > 1 a copy of the embedding.

Bytes follow our training set-up (train/engine.py, train/loop.py): parameters in the training dtype
(bf16 2 B, fp32 4 B); gradients in fp32 DDP buffers (``grad_reduce_in_fp32=True``); Adam's two fp32
moments, plus fp32 main parameters when training in bf16. The distributed optimizer shards the main
parameters and moments over the data-parallel group (routed experts with EP > 1: over the
expert-data-parallel group, ``TP * DP / (EP * ETP)`` ranks), and DDP then keeps parameters and
gradients in padded buffers (each parameter starts at a multiple of 64 elements, each bucket ends at
a multiple of ``lcm(DP, 128)``); this module lays the buffers out the same way. The largest rank of
the data-parallel group is reported. Activations: ``model/activations.py`` (an estimate).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from megatron_dllm.config import ConfigError, ModelConfig, ParallelConfig, validate
from megatron_dllm.model import activations

GRAD_BYTES = 4          # train/engine.py wrap_ddp: grad_reduce_in_fp32=True
ADAM_BYTES = 8          # exp_avg + exp_avg_sq, fp32
MAIN_PARAM_BYTES = 4    # fp32 master copy of bf16 parameters
LAYOUTS = ("bd", "mdlm")


@dataclass(frozen=True)
class ParamEntry:
    """One parameter as one rank of the layout holds it."""

    name: str
    numel: int
    expert: bool = False              # a routed expert's weight (expert-parallel when EP > 1)
    shared_embedding: bool = False    # tied embedding under PP > 1 (own DDP bucket)


@dataclass
class PlanOptions:
    """What the planner needs beyond the model and the TP / PP / EP layout."""

    data_parallel_size: int = 1
    micro_batch_size: int = 1
    bd_micro_batch_size: Optional[int] = None     # default micro_batch_size
    seq_length: Optional[int] = None              # L; default the model's
    global_batch_size: Optional[int] = None       # None: at least PP micro-batches (1F1B steady state)
    bf16: bool = True
    device: str = "cuda"                          # cuda: fused norm, flex attention; cpu: composite, sdpa
    distributed_optimizer: bool = True
    overlap_grad_reduce: bool = False
    recompute: str = "none"
    attention_backend: Optional[str] = None       # default: flex on cuda, sdpa on cpu
    rows_per_sample: int = 1                      # 2 with complementary copies (SFT; --dllm-complementary-masking)


@dataclass
class StageMemory:
    """Bytes on the largest rank of one pipeline stage."""

    stage: int
    num_params: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: Dict[str, int] = field(default_factory=dict)   # per layout (bd, mdlm), peak
    loss_transient_bytes: Dict[str, int] = field(default_factory=dict)  # of which: logits during the loss

    @property
    def static_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes

    def total(self, layout: str) -> int:
        return self.static_bytes + self.activation_bytes[layout]


@dataclass
class MemoryPlan:
    stages: List[StageMemory]
    micro_batches: Dict[str, Optional[int]]        # per layout; None = not given (>= PP assumed)

    def peak(self, layout: str) -> StageMemory:
        """The stage with the largest total for ``layout``."""
        return max(self.stages, key=lambda s: s.total(layout))

    def to_dict(self) -> dict:
        """Plain numbers (bytes) per stage and the peak per layout."""
        stages = [dict(stage=s.stage, num_params=s.num_params, param_bytes=s.param_bytes,
                       grad_bytes=s.grad_bytes, optimizer_bytes=s.optimizer_bytes,
                       activation_bytes=dict(s.activation_bytes),
                       loss_transient_bytes=dict(s.loss_transient_bytes),
                       total_bytes={k: s.total(k) for k in LAYOUTS}) for s in self.stages]
        peak = {k: dict(stage=self.peak(k).stage, total_bytes=self.peak(k).total(k)) for k in LAYOUTS}
        return dict(stages=stages, peak=peak, micro_batches=dict(self.micro_batches))


# --- parameters per rank ------------------------------------------------------------------------

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_EXPERT = re.compile(r"\.mlp\.experts\.local_experts\.(\d+)\.")


def _split_rule(module):
    """'column' | 'row' | 'vocab' | 'replicated' for a module holding parameters directly."""
    import torch
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
    from megatron.core.transformer.moe.router import Router

    if isinstance(module, VocabParallelEmbedding):
        return "vocab"
    if isinstance(module, ColumnParallelLinear):
        return "column"
    if isinstance(module, RowParallelLinear):
        return "row"
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm, Router)):
        return "replicated"
    raise NotImplementedError(
        f"the memory planner does not know how Megatron shards {type(module).__name__}: "
        "add it to megatron_dllm/model/memory.py _split_rule"
    )


def _local_numel(shape, rule: str, name: str, split: int, vocab_rows: int) -> int:
    dims = list(shape)
    if rule == "vocab" or name == "output_layer.weight":   # vocab-parallel rows
        dims[0] = vocab_rows
    elif rule == "column":
        dims[0] //= split
    elif rule == "row" and name.endswith("weight"):
        dims[1] //= split
    return math.prod(dims)


def layer_ranks(num_layers: int, pp: int, vpp: Optional[int]) -> List[tuple]:
    """(pipeline rank, virtual chunk) of each layer, as Megatron-Core assigns them."""
    v = vpp or 1
    per_chunk = num_layers // (pp * v)
    return [((i // per_chunk) % pp, (i // per_chunk) // pp) for i in range(num_layers)]


def rank_parameters(model, model_cfg: ModelConfig, parallel: ParallelConfig) -> List[List[List[ParamEntry]]]:
    """``[pipeline rank][virtual chunk]`` -> parameters in the chunk's ``named_parameters`` order.

    ``model`` is ``model_cfg`` built with TP = PP = EP = 1 (meta device is fine). Every rank of one
    pipeline stage holds the same shapes; its experts are the first ``num_experts / EP``.
    """
    tp, pp, ep = (parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size,
                  parallel.expert_model_parallel_size)
    etp = parallel.expert_tensor_parallel_size or tp
    v = parallel.virtual_pipeline_model_parallel_size or 1
    vocab_rows = model_cfg.padded_vocab_size(tp) // tp
    where = layer_ranks(model_cfg.num_layers, pp, v)
    local_experts = (model_cfg.num_experts or 0) // ep
    tied_copy = not model_cfg.untie_embeddings_and_output_weights and pp > 1
    out = [[[] for _ in range(v)] for _ in range(pp)]
    for mod_name, module in model.named_modules():
        params = list(module.named_parameters(recurse=False))
        if not params:
            continue
        rule = _split_rule(module)
        expert_module = bool(getattr(module, "is_expert", False))
        for pname, param in params:
            name = f"{mod_name}.{pname}" if mod_name else pname
            expert = _EXPERT.search(name)
            if ".mlp.experts." in name and not expert:
                raise NotImplementedError(f"unknown expert parameter layout {name!r} (SequentialMLP expected)")
            if expert and int(expert.group(1)) >= local_experts:
                continue
            numel = _local_numel(param.shape, rule, name, etp if expert_module else tp, vocab_rows)
            layer = _LAYER.match(name)
            if layer:
                rank, chunk = where[int(layer.group(1))]
            elif name.startswith("embedding."):
                rank, chunk = 0, 0
            else:                                   # final norm, output layer
                rank, chunk = pp - 1, v - 1
            shared = tied_copy and name.startswith("embedding.word_embeddings")
            out[rank][chunk].append(ParamEntry(name, numel, expert=bool(expert), shared_embedding=shared))
    if tied_copy:  # the last stage's output_layer.weight, a copy of the embedding (Megatron-Core)
        out[pp - 1][v - 1].append(ParamEntry("output_layer.weight", vocab_rows * model_cfg.hidden_size,
                                             shared_embedding=True))
    return out


# --- DDP buffers and optimizer shards -----------------------------------------------------------

def _pad(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def buffer_layout(entries: List[ParamEntry], dp: int, distributed: bool, bucket_size: Optional[int]):
    """(buffer numel, per-DP-rank parameter elements of its optimizer shard) of one DDP buffer.

    Mirrors ``_ParamAndGradBuffer``: parameters in reverse order; with the distributed optimizer each
    starts at a multiple of 64 and each bucket is padded to ``lcm(dp, 128)`` and split in ``dp``
    equal shards; a shared embedding gets a bucket of its own.
    """
    buckets, current = [], []
    start = bucket_start = 0

    def close(end: int) -> int:
        nonlocal bucket_start, current
        padded = _pad(end, math.lcm(dp, 128)) if distributed else end
        buckets.append((bucket_start, padded, current))
        bucket_start, current = padded, []
        return padded

    end = 0
    for entry in reversed(entries):
        if distributed:
            start = _pad(start, 64)
        own = entry.shared_embedding and distributed
        if own and current:
            start = close(start)
        end = start + entry.numel
        current.append((start, end))
        if own or (bucket_size is not None and end - bucket_start >= bucket_size):
            start = close(end)
        else:
            start = end
    if current:
        close(end)
    total = buckets[-1][1] if buckets else 0
    per_rank = [0] * dp
    for b_start, b_end, spans in buckets:
        shard = (b_end - b_start) // dp if distributed else (b_end - b_start)
        for lo, hi in spans:
            if not distributed:
                per_rank[0] += hi - lo
                continue
            for r in range((lo - b_start) // shard, (hi - 1 - b_start) // shard + 1):
                r_lo, r_hi = b_start + r * shard, b_start + (r + 1) * shard
                per_rank[r] += min(hi, r_hi) - max(lo, r_lo)
    return total, per_rank


def static_bytes(chunks: List[List[ParamEntry]], parallel: ParallelConfig, opts: PlanOptions,
                 pp_rank: int) -> Dict[str, int]:
    """Parameter, gradient and optimizer bytes of one rank holding ``chunks`` (one DDP module each)."""
    tp, ep = parallel.tensor_model_parallel_size, parallel.expert_model_parallel_size
    etp = parallel.expert_tensor_parallel_size or tp
    dp = opts.data_parallel_size * parallel.context_parallel_size  # gradients / optimizer shards: DP x CP
    groups = {"dense": dp, "expert": tp * dp // (ep * etp)}
    param_b = 2 if opts.bf16 else 4
    opt_b = ADAM_BYTES + (MAIN_PARAM_BYTES if opts.bf16 else 0)
    dist = opts.distributed_optimizer
    out = dict(num_params=0, param_bytes=0, grad_bytes=0, optimizer_bytes=0)
    for i, chunk in enumerate(chunks):
        bucketed = opts.overlap_grad_reduce and i == 0 and pp_rank == 0
        bucket_size = max(40_000_000, 1_000_000 * dp) if bucketed else None
        for group, size in groups.items():
            # Megatron tags experts 'allreduce=False' (own buffers, expert-DP group) only when EP > 1.
            entries = [e for e in chunk if (e.expert and ep > 1) == (group == "expert")]
            if not entries:
                continue
            numel, shard = buffer_layout(entries, size, dist, bucket_size)
            out["num_params"] += sum(e.numel for e in entries)
            out["param_bytes"] += numel * param_b
            out["grad_bytes"] += numel * GRAD_BYTES
            out["optimizer_bytes"] += max(shard) * opt_b
    return out


# --- the plan -----------------------------------------------------------------------------------

def check_layout(model_cfg: ModelConfig, parallel: ParallelConfig, opts: PlanOptions) -> None:
    """Raise ConfigError naming the fix for a layout that cannot run."""
    for name, flag in (("data_parallel_size", "--dp"), ("micro_batch_size", "--micro-batch-size")):
        if getattr(opts, name) < 1:
            raise ConfigError(f"{flag} must be >= 1, got {getattr(opts, name)}")
    if opts.bd_micro_batch_size is not None and opts.bd_micro_batch_size < 1:
        raise ConfigError(f"--bd-micro-batch-size must be >= 1, got {opts.bd_micro_batch_size}")
    if opts.recompute not in activations.RECOMPUTE:
        raise ConfigError(f"--recompute {opts.recompute!r}: choose one of {', '.join(activations.RECOMPUTE)}")
    backend = opts.attention_backend
    if backend is not None and backend not in activations.BACKENDS:
        raise ConfigError(f"--attention-backend {backend!r}: choose one of {', '.join(activations.BACKENDS)}")
    tp, dp = parallel.tensor_model_parallel_size, opts.data_parallel_size
    cp = parallel.context_parallel_size
    experts = parallel.expert_model_parallel_size * (parallel.expert_tensor_parallel_size or tp)
    if experts >= 1 and (tp * cp * dp) % experts:
        what = "TP x DP" if cp == 1 else "TP x CP x DP"
        raise ConfigError(
            f"{what} = {tp} x {dp if cp == 1 else f'{cp} x {dp}'} is not divisible by EP x expert-TP = {experts} "
            f"(experts are spread over the {what} ranks of a stage): choose --dp a multiple of "
            f"{experts // math.gcd(experts, tp * cp)}")
    cp = parallel.context_parallel_size
    validate(model_cfg, parallel, world_size=tp * parallel.pipeline_model_parallel_size * cp * dp,
             context_parallel=True)
    L = opts.seq_length or model_cfg.seq_length
    if cp > 1 and L % (cp * (tp if parallel.sequence_parallel else 1)):
        raise ConfigError(f"--seq-length {L} must be a multiple of --cp {cp}"
                          + (f" x --tp {tp} (sequence parallelism)" if parallel.sequence_parallel and tp > 1 else ""))
    if (opts.seq_length or model_cfg.seq_length) < 1:
        raise ConfigError("--seq-length must be >= 1")
    etp = parallel.expert_tensor_parallel_size or parallel.tensor_model_parallel_size
    moe_ffn = model_cfg.moe_ffn_hidden_size or model_cfg.ffn_hidden_size or 4 * model_cfg.hidden_size
    if model_cfg.is_moe and moe_ffn % etp:
        raise ConfigError(f"the expert FFN size {moe_ffn} is not divisible by the expert TP size {etp}: "
                          "choose an --etp that divides it")
    if opts.global_batch_size is not None:
        for layout, mbs in (("mdlm", opts.micro_batch_size), ("bd", opts.bd_micro_batch_size)):
            if mbs and opts.global_batch_size % (mbs * opts.data_parallel_size):
                raise ConfigError(
                    f"--global-batch-size {opts.global_batch_size} is not divisible by micro-batch "
                    f"size x DP = {mbs} x {opts.data_parallel_size} ({layout} layout)")


def _micro_batch_size(opts: PlanOptions, layout: str) -> int:
    from megatron_dllm.objectives import objective_type

    return objective_type(layout).micro_batch_size_of(opts.micro_batch_size, opts.bd_micro_batch_size)


def _num_microbatches(opts: PlanOptions, layout: str) -> Optional[int]:
    if not opts.global_batch_size:
        return None
    return opts.global_batch_size // (_micro_batch_size(opts, layout) * opts.data_parallel_size)


def _activation_bytes(model_cfg, parallel, opts, moe_layers, pp_rank, layout):
    """(peak activation bytes of rank ``pp_rank``, of which the loss transient) for ``layout``."""
    tp = parallel.tensor_model_parallel_size
    from megatron_dllm.objectives import objective_type

    L = opts.seq_length or model_cfg.seq_length
    cp = parallel.context_parallel_size  # each CP rank holds L / cp of every stream
    bd = objective_type(layout).streams == 2  # [xt ; x0]
    env = activations.ActivationEnv(
        tp=tp, etp=parallel.expert_tensor_parallel_size or tp, sequence_parallel=parallel.sequence_parallel,
        act_bytes=2 if opts.bf16 else 4, fused_norm=opts.device == "cuda",
        backend=opts.attention_backend or ("flex" if opts.device == "cuda" else "sdpa"),
        recompute=opts.recompute, cp=cp)
    local = L // cp
    return activations.stage_bytes(
        model_cfg, moe_layers, env, seq=2 * local if bd else local,
        micro_batch=_micro_batch_size(opts, layout) * opts.rows_per_sample,
        loss_positions=local,
        logit_positions=local if (bd and not parallel.sequence_parallel) else (2 * local if bd else local),
        vocab_per_rank=model_cfg.padded_vocab_size(tp) // tp, pp_rank=pp_rank,
        pp=parallel.pipeline_model_parallel_size, vpp=parallel.virtual_pipeline_model_parallel_size or 1,
        num_microbatches=_num_microbatches(opts, layout))


def plan_from_parameters(model_cfg: ModelConfig, parallel: ParallelConfig, opts: PlanOptions,
                         ranks: List[List[List[ParamEntry]]]) -> MemoryPlan:
    """The plan from per-rank parameters (``rank_parameters``); pure arithmetic."""
    pp = parallel.pipeline_model_parallel_size
    pattern = model_cfg.moe_layer_pattern() or [0] * model_cfg.num_layers
    where = layer_ranks(model_cfg.num_layers, pp, parallel.virtual_pipeline_model_parallel_size)
    stages = []
    for r in range(pp):
        static = static_bytes(ranks[r], parallel, opts, r)
        layers = [pattern[i] for i in range(model_cfg.num_layers) if where[i][0] == r]
        act = {layout: _activation_bytes(model_cfg, parallel, opts, layers, r, layout) for layout in LAYOUTS}
        stages.append(StageMemory(stage=r, activation_bytes={k: v[0] for k, v in act.items()},
                                  loss_transient_bytes={k: v[1] for k, v in act.items()}, **static))
    return MemoryPlan(stages=stages, micro_batches={k: _num_microbatches(opts, k) for k in LAYOUTS})


def plan_memory(model_cfg: ModelConfig, parallel: ParallelConfig, opts: PlanOptions) -> MemoryPlan:
    """Check the layout, build the model on the meta device and plan its per-GPU memory.

    Needs an initialised process group (``platform.distributed``); re-initialises Megatron-Core's
    model-parallel state to TP = PP = EP = 1 for the meta build (callers re-initialise their own).
    """
    check_layout(model_cfg, parallel, opts)
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.distributed import init_model_parallel

    single = ParallelConfig(sequence_parallel=False)
    init_model_parallel(single)
    model = build_model(model_cfg, single, meta=True)
    return plan_from_parameters(model_cfg, parallel, opts, rank_parameters(model, model_cfg, parallel))
