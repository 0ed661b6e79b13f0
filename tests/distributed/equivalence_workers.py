"""Workers for the parallel-equivalence tests: the same model, weights and batch under any layout.

The single-rank reference builds each tiny model from a seed and saves it with dist_checkpointing;
every parallel layout loads that checkpoint (resharding on load), so all runs start from identical
weights. Each run takes two optimizer steps on a fixed global batch in the block-diffusion layout
``[xt ; x0]`` (positions 0..L-1 twice, block-diffusion mask) and reports the first step's loss and
gradient norm and the second step's loss.
"""

from __future__ import annotations

import os

import torch

from megatron_dllm.config import ParallelConfig
from megatron_dllm.model.presets import get_preset

SEQ_LEN = 32          # clean tokens L; model input is 2L
BLOCK = 8
GLOBAL_BATCH = 4
SEED = 1234


def bd_mask(seq_len: int, block: int) -> torch.Tensor:
    """[2L, 2L] bool, True = may attend, written from the definition (tests only)."""
    idx = torch.arange(2 * seq_len)
    noisy = idx < seq_len
    blk = (idx % seq_len) // block
    qn, kn = noisy[:, None], noisy[None, :]
    qb, kb = blk[:, None], blk[None, :]
    return (qn & kn & (qb == kb)) | (qn & ~kn & (qb > kb)) | (~qn & ~kn & (qb >= kb))


def global_batch(vocab: int):
    """Deterministic global batch: list of per-sample dicts (batch dim 1)."""
    gen = torch.Generator().manual_seed(99)
    mask_id = vocab - 1
    samples = []
    for _ in range(GLOBAL_BATCH):
        x0 = torch.randint(0, vocab - 1, (1, SEQ_LEN), generator=gen)
        noise = torch.rand(1, SEQ_LEN, generator=gen) < 0.5
        xt = torch.where(noise, torch.full_like(x0, mask_id), x0)
        samples.append(
            dict(
                tokens=torch.cat([xt, x0], dim=1),
                labels=torch.cat([x0, x0], dim=1),
                loss_mask=torch.cat([noise, torch.zeros_like(noise)], dim=1).float(),
                position_ids=torch.arange(SEQ_LEN).repeat(2)[None],
                attention_mask=bd_mask(SEQ_LEN, BLOCK),
            )
        )
    return samples


def forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
    loss_mask = batch["loss_mask"]

    def loss_func(per_token_ce):
        loss_sum = (per_token_ce.float() * loss_mask).sum()
        num_tokens = loss_mask.sum().to(torch.int)
        return loss_sum, num_tokens, {"loss_sum": loss_sum.detach(), "num_tokens": num_tokens}

    return output, loss_func


def _run(kind: str, parallel: ParallelConfig, ckpt_dir: str, save: bool):
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.optimizer import OptimizerConfig

    from megatron_dllm.model.builder import build_model_chunks
    from megatron_dllm.platform.distributed import init_model_parallel
    from megatron_dllm.train.engine import build_optimizer, reduce_reports, train_step, wrap_ddp

    cfg = get_preset(f"tiny-{kind}")
    init_model_parallel(parallel, seed=SEED)
    chunks = build_model_chunks(cfg, parallel)
    if save:
        dist_checkpointing.save(chunks[0].sharded_state_dict(), ckpt_dir)
    else:
        for chunk in chunks:
            state = dist_checkpointing.load(chunk.sharded_state_dict(), ckpt_dir)
            chunk.load_state_dict(state)
    model = wrap_ddp(chunks, use_distributed_optimizer=True)
    optimizer = build_optimizer(
        model,
        OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, clip_grad=1.0,
                        use_distributed_optimizer=True, params_dtype=torch.float32),
    )
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    per_rank = GLOBAL_BATCH // dp_size
    mine = global_batch(cfg.padded_vocab_size(1))[dp_rank * per_rank:(dp_rank + 1) * per_rank]
    results = []
    for _ in range(2):
        reports, grad_norm, ok = train_step(
            forward_step, list(mine), model, optimizer,
            num_microbatches=per_rank, seq_length=2 * SEQ_LEN, micro_batch_size=1,
        )
        totals = reduce_reports(reports)
        results.append((totals["loss_sum"] / totals["num_tokens"], float(grad_norm), ok))
    return {"loss": results[0][0], "grad_norm": results[0][1], "loss_step2": results[1][0],
            "updated": results[0][2] and results[1][2]}


def reference_worker(rank, world_size, ckpt_root):
    """Single rank: build each tiny model, save it, run it."""
    out = {}
    for kind in ("dense", "moe"):
        path = os.path.join(ckpt_root, kind)
        os.makedirs(path, exist_ok=True)
        out[kind] = _run(kind, ParallelConfig(), path, save=True)
    return out


def layouts_worker(rank, world_size, ckpt_root, cases):
    """Run ``cases`` = [(kind, layout name, ParallelConfig kwargs)] one after another."""
    out = {}
    for kind, name, kwargs in cases:
        out[(kind, name)] = _run(kind, ParallelConfig(**kwargs), os.path.join(ckpt_root, kind), save=False)
    return out
