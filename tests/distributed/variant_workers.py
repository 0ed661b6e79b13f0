"""Single-rank checks of the training variants of issue 12 (token shift, causal clean stream + AR
loss, complementary masking) on a real tiny model, against definitions that do not use them."""

from __future__ import annotations

import torch

from megatron_dllm.config import ParallelConfig
from megatron_dllm.diffusion.noising import NoiseConfig
from megatron_dllm.model.presets import get_preset
from megatron_dllm.objectives import OBJECTIVES, StepContext

L, B, MASK = 32, 2, 255


def _batch(gen, docs=True):
    x0 = torch.randint(0, 250, (B, L), generator=gen)
    doc = torch.zeros(B, L, dtype=torch.long)
    if docs:  # a document boundary inside the second row, off any block edge
        doc[1, 13:] = 1
    return {"tokens": x0, "loss_mask": torch.ones(B, L, dtype=torch.bool), "document_ids": doc,
            "sample_index": torch.arange(B)}


def _ctx(layout, block, eval_t=None, **kw):
    """(objective, step) of ``layout`` at ``block``; ``kw``: the objective's settings."""
    if layout == "ar":
        objective = OBJECTIVES["ar"](seq_length=L, **kw)
    else:
        objective = OBJECTIVES[layout](seq_length=L, seed=5, noise=NoiseConfig(sampling="iid"), mask_token_id=MASK,
                                       t_buckets=0, **kw)
    return objective, StepContext(iteration=0, block_size=block, eval_t=eval_t)


def _loss(model, batch, ctx):
    objective, step = ctx
    inputs = objective.prepare_inputs(batch, step)
    logits = model(inputs.tokens, inputs.position_ids, inputs.attention_mask,
                   logits_index=inputs.logits_index)
    loss_sum, count, report = objective.loss_func(inputs, step)(logits)
    return loss_sum.item(), int(count), {k: float(v) for k, v in report.items()}, inputs, logits


def variants_worker(rank, world_size):
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.distributed import init_model_parallel

    init_model_parallel(ParallelConfig(), seed=7)
    gen = torch.Generator().manual_seed(11)
    out = {}
    model = build_model(get_preset("tiny-dense"), ParallelConfig()).eval()
    batch = _batch(gen)
    with torch.no_grad():
        ar_sum, ar_count, _, _, _ = _loss(model, batch, _ctx("ar", 1))
        # token shift at block size 1 and t = 1 is AR training of the clean stream
        shift_sum, shift_count, _, _, _ = _loss(
            model, batch, _ctx("bd", 1, token_shift=True, loss_weight="none", loss_norm="masked_tokens",
                               eval_t=1.0))
        out["ar"] = (ar_sum, ar_count)
        out["shift_block1"] = (shift_sum, shift_count)
        # the AR term of a causal clean stream is the AR loss, at any block size
        _, _, rep, _, _ = _loss(model, batch, _ctx("bd", 8, clean_stream_causal=True, ar_loss_weight=0.3,
                                                   eval_t=0.5))
        out["clean_ar_term"] = (rep["ar_loss_sum"], rep["ar_tokens"])
        plain_sum, _, plain_rep, _, _ = _loss(model, batch, _ctx("bd", 8, clean_stream_causal=True, eval_t=0.5))
        weighted_sum, _, _, _, _ = _loss(model, batch, _ctx("bd", 8, clean_stream_causal=True,
                                                            ar_loss_weight=0.3, eval_t=0.5))
        out["weighted"] = (weighted_sum, plain_sum, rep["ar_loss_sum"])

        # no leak: the logits that predict a masked position i never see the clean x0[i]
        out["leaks"] = {}
        for name, kw in (("same", {}), ("token_shift", {"token_shift": True}),
                         ("causal_clean", {"clean_stream_causal": True, "ar_loss_weight": 0.3})):
            ctx = _ctx("bd", 8, eval_t=0.6, **kw)
            _, _, _, inputs, logits = _loss(model, batch, ctx)
            noised = inputs.noise.noise_mask & inputs.loss_mask
            changed_own, changed_other = 0.0, 0.0
            for row, i in [tuple(map(int, p)) for p in noised.nonzero()[:12]]:
                edited = {k: v.clone() for k, v in batch.items()}
                edited["tokens"][row, i] = (edited["tokens"][row, i] + 1) % 250
                _, _, _, _, logits2 = _loss(model, edited, ctx)
                changed_own = max(changed_own, (logits2[row, i] - logits[row, i]).abs().max().item())
                later = min(L - 1, (i // 8 + 1) * 8 + 1)  # a position of the next block sees x0[i]
                changed_other = max(changed_other, (logits2[row, later] - logits[row, later]).abs().max().item())
            out["leaks"][name] = (changed_own, changed_other)

        # complementary masking: two copies, masks disjoint and covering every loss position
        objective, step = _ctx("bd", 8, complementary=True)
        inputs = objective.prepare_inputs(batch, step)
        first, second = inputs.noise.noise_mask[:B], inputs.noise.noise_mask[B:]
        out["complementary"] = {
            "rows": int(inputs.tokens.shape[0]),
            "disjoint": bool(not (first & second).any()),
            "cover": bool((first | second).all()),
            "t_sum": float((inputs.noise.t_per_token[:B] + inputs.noise.t_per_token[B:]).max()),
            "same_x0": bool(torch.equal(inputs.tokens[:B, L:], inputs.tokens[B:, L:])),
        }
    return out
