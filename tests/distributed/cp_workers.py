"""Workers of test_context_parallel: the model under context parallelism vs one rank.

``reference_worker`` (one rank) builds a tiny model, saves its weights and returns, for a fixed batch,
the logits and the gradients of a fixed linear function of the logits. ``cp_worker`` (N ranks, one CP
group) loads the same weights, feeds each rank its rows of the batch (``split_rows``), its rows of
the one-rank mask and the ``ContextParallelSplit``, and returns its logits, its rows and the
gradients summed over the CP group (what the data-parallel reduction over DP x CP does in training).
"""

from __future__ import annotations

import os

import torch

BATCH = 2


def _case(cfg, kind: str, documents: bool):
    """Tokens, positions, mask [B, S, S] and the upstream weights of a fixed case (seeded)."""
    from megatron_dllm.diffusion.masks import dense_mask, mask_length

    seq_len = cfg.seq_length
    gen = torch.Generator().manual_seed(11)
    total = mask_length(kind, seq_len)
    tokens = torch.randint(0, cfg.vocab_size, (BATCH, total), generator=gen)
    positions = (torch.arange(total) % seq_len)[None].expand(BATCH, total).contiguous()
    docs = None
    if documents:  # row 0: three documents, row 1: two
        docs = torch.zeros(BATCH, seq_len, dtype=torch.long)
        docs[0, 10:] += 1
        docs[0, 40:] += 1
        docs[1, 33:] += 1
    block = None if kind == "bidirectional" else (1 if kind == "block_causal" else 8)
    mask = torch.stack([dense_mask(kind, seq_len, block, None if docs is None else docs[b]) for b in range(BATCH)])
    upstream = torch.randn(BATCH, total, cfg.vocab_size, generator=gen)
    return tokens, positions, mask, upstream, docs, block


def _build(preset: str, cp: int):
    from megatron_dllm.config import ParallelConfig
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.model.presets import get_preset
    from megatron_dllm.platform.distributed import init_model_parallel

    cfg = get_preset(preset)
    parallel = ParallelConfig(context_parallel_size=cp)
    init_model_parallel(parallel, seed=5)
    return cfg, build_model(cfg, parallel, causal=False, attention_backend="sdpa", init_seed=5)


def _grads(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def reference_worker(rank, world_size, root, preset, kind, documents):
    cfg, model = _build(preset, 1)
    torch.save(model.state_dict(), os.path.join(root, f"{preset}.pt"))
    tokens, positions, mask, upstream, _, _ = _case(cfg, kind, documents)
    logits = model(tokens, positions, mask)[..., : cfg.vocab_size]
    (logits * upstream).sum().backward()
    return {"logits": logits.detach(), "grads": _grads(model)}


def cp_worker(rank, world_size, root, preset, kind, documents, strategy):
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_dllm.diffusion.context_split import row_work, split_rows
    from megatron_dllm.model.context_parallel import ContextParallelSplit

    cfg, model = _build(preset, world_size)
    model.load_state_dict(torch.load(os.path.join(root, f"{preset}.pt"), weights_only=True))
    tokens, positions, mask, upstream, docs, block = _case(cfg, kind, documents)
    total = tokens.shape[1]
    work = torch.stack([row_work(kind, cfg.seq_length, block, None if docs is None else docs[b])
                        for b in range(BATCH)])
    split = ContextParallelSplit(split_rows(total, world_size, strategy, chunk=8, work=work))
    cp_rank = parallel_state.get_context_parallel_rank()
    local = split.local(cp_rank)
    logits = model(tokens[:, local], positions[:, local], mask[:, local, :], cp_split=split)[..., : cfg.vocab_size]
    (logits * upstream[:, local]).sum().backward()
    grads = _grads(model)
    for grad in grads.values():
        dist.all_reduce(grad, group=parallel_state.get_context_parallel_group())
    return {"logits": logits.detach(), "rows": split.rows, "cp_rank": cp_rank, "grads": grads}
