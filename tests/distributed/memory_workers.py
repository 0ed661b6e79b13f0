"""Workers for the memory-planner tests: plan a layout, then build and step it as training does.

Each case plans the layout (``model.memory.plan_memory``, fp32 CPU path), then builds the real model,
Megatron DDP and our optimizer exactly as ``train/setup.py`` does, takes one optimizer step (so Adam
state exists) and measures what is allocated: the storages of the parameters, the DDP gradient
buffers and the optimizer's tensors (main parameters and states), each storage counted once. The
activation check records every tensor autograd saves for backward during the step.
"""

from __future__ import annotations

import contextlib
import gc
import weakref

import torch

SEQ = 64
SEED = 7


def _run_config(preset: str, flags):
    from megatron_dllm.arguments import parse_args

    return parse_args(["--preset", preset, "--seq-length", str(SEQ), "--device", "cpu",
                       "--dllm-attention-backend", "sdpa", *flags])


def _plan(run, dp: int, micro_batch: int, num_microbatches: int = 1):
    from megatron_dllm.model.memory import PlanOptions, plan_memory

    opts = PlanOptions(data_parallel_size=dp, micro_batch_size=micro_batch,
                       global_batch_size=micro_batch * dp * num_microbatches,
                       bf16=False, device="cpu", attention_backend="sdpa",
                       distributed_optimizer=run.training.use_distributed_optimizer)
    return plan_memory(run.model, run.parallel, opts)


def _batch(vocab: int, micro_batch: int, rank: int):
    gen = torch.Generator().manual_seed(100 + rank)
    return {"tokens": torch.randint(0, vocab - 2, (micro_batch, SEQ), generator=gen),
            "loss_mask": torch.ones(micro_batch, SEQ, dtype=torch.bool),
            "document_ids": torch.zeros(micro_batch, SEQ, dtype=torch.long),
            "sample_index": torch.arange(micro_batch) + rank * micro_batch}


def _allocated(chunks, model, optimizer) -> dict:
    """Bytes per kind (params, grads, optimizer), every storage counted once, in that order."""
    seen, out = set(), {"params": 0, "grads": 0, "optimizer": 0}

    def add(kind, tensor):
        if tensor is None:
            return
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            out[kind] += storage.nbytes()

    for chunk in chunks:
        for param in chunk.parameters():
            add("params", param)
    for ddp in model:
        for buffer in ddp.buffers + ddp.expert_parallel_buffers:
            add("grads", buffer.grad_data)
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        for group in inner.param_groups:
            for param in group["params"]:
                add("optimizer", param)
        for state in inner.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    add("optimizer", value)
    return out


class _Held:
    """What autograd keeps instead of a saved tensor, so its release can be observed."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


class _SavedTensors:
    """Context that tracks the bytes autograd holds for backward (storages once, parameters excluded).

    ``peak`` is the largest amount held at once during the context (with pipelining, several
    micro-batches are in flight); ``total`` everything ever saved.
    """

    def __init__(self, chunks):
        self.exclude = {p.untyped_storage().data_ptr() for c in chunks for p in c.parameters()}
        self.refs, self.sizes = {}, {}
        self.live = self.peak = self.total = 0

    def _release(self, ptr):
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            self.live -= self.sizes[ptr]

    def _pack(self, tensor):
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return tensor
        ptr = storage.data_ptr()
        if ptr in self.exclude:
            return tensor
        if self.refs.get(ptr, 0) == 0:
            self.sizes[ptr] = storage.nbytes()
            self.live += storage.nbytes()
            self.total += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self.refs[ptr] = self.refs.get(ptr, 0) + 1
        held = _Held(tensor)
        weakref.finalize(held, self._release, ptr)
        return held

    @staticmethod
    def _unpack(held):
        return held.tensor if isinstance(held, _Held) else held

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def _step(setup, run, layout: str, micro_batch: int, rank: int, saved=None, num_microbatches: int = 1):
    from megatron_dllm.diffusion.noising import NoiseConfig
    from megatron_dllm.objectives import OBJECTIVES, StepContext
    from megatron_dllm.train.engine import train_step

    chunks, model, optimizer = setup
    L = run.model.seq_length
    objective = OBJECTIVES[layout](seq_length=L, micro_batch_size=micro_batch, seed=SEED, noise=NoiseConfig(),
                                   mask_token_id=run.model.vocab_size - 1, attention_backend="sdpa")
    step = StepContext(iteration=0, block_size=8 if layout == "bd" else L)
    batches = [_batch(run.model.vocab_size, micro_batch, rank * num_microbatches + i)
               for i in range(num_microbatches)]
    with saved if saved is not None else contextlib.nullcontext():
        _, _, ok = train_step(objective.forward_step(step), batches, model, optimizer,
                              num_microbatches=num_microbatches,
                              seq_length=objective.model_seq_length, micro_batch_size=micro_batch)
    assert ok


def _build(run):
    from megatron_dllm.model.builder import build_model_chunks
    from megatron_dllm.platform.distributed import init_model_parallel
    from megatron_dllm.train.engine import build_optimizer, wrap_ddp
    from megatron_dllm.train.loop import optimizer_config

    t = run.training
    init_model_parallel(run.parallel, seed=t.seed)
    chunks = build_model_chunks(run.model, run.parallel, attention_backend="sdpa", dtype="fp32",
                                init_seed=t.seed)
    model = wrap_ddp(chunks, use_distributed_optimizer=t.use_distributed_optimizer,
                     overlap_grad_reduce=t.overlap_grad_reduce)
    return chunks, model, build_optimizer(model, optimizer_config(run))


def plan_and_measure_worker(rank, world_size, cases, micro_batch=2):
    """For each (preset, flags, layouts): this rank's plan next to what one training step allocates.

    The step of each layout runs ``PP`` micro-batches (so the first pipeline stage holds PP at once)
    while autograd's saved tensors are tracked; the static bytes are measured after the last step.
    """
    from megatron.core import parallel_state

    results = []
    for preset, flags, layouts in cases:
        run = _run_config(preset, flags)
        p = run.parallel
        pp = p.pipeline_model_parallel_size
        plan = _plan(run, world_size // (p.tensor_model_parallel_size * pp), micro_batch, num_microbatches=pp)
        setup = _build(run)
        stage = plan.stages[parallel_state.get_pipeline_model_parallel_rank()]
        result = {"case": " ".join([preset, *flags]), "stage": stage.stage, "activations": {},
                  "planned": {"params": stage.param_bytes, "grads": stage.grad_bytes,
                              "optimizer": stage.optimizer_bytes}}
        for layout in layouts:
            saved = _SavedTensors(setup[0])
            _step(setup, run, layout, micro_batch, rank, saved, num_microbatches=pp)
            # autograd's saved tensors hold everything but the logits alive during the loss
            planned = stage.activation_bytes[layout] - stage.loss_transient_bytes[layout]
            result["activations"][layout] = {"planned": planned, "saved_peak": saved.peak}
        result["allocated"] = _allocated(*setup)
        results.append(result)
        del setup
        gc.collect()
    return results
