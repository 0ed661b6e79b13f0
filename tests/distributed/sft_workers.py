"""One-rank checks of the SFT objective (objectives/sft.py) on a tiny model, against brute-force
definitions: the noise, the [xt ; x0] mask with the dataset's documents and the loss (with CAP)
recomputed here in float64 from the model's full logits."""

from __future__ import annotations

import math

import torch

from megatron_dllm.config import ParallelConfig
from megatron_dllm.diffusion.curriculum import BlockSchedule
from megatron_dllm.diffusion.noising import NoiseConfig
from megatron_dllm.diffusion.sft import complementary_instances
from megatron_dllm.model.presets import get_preset
from megatron_dllm.objectives import OBJECTIVES, StepContext

L, BLOCK, MASK, EOD, SEED, ITERATION = 32, 8, 255, 254, 5, 3


def sft_batch():
    """Two windows: row 0 holds a two-turn conversation (an EOD after each reply, one document) and
    a second conversation; row 1 one conversation and EOS fill without loss."""
    gen = torch.Generator().manual_seed(11)
    x0 = torch.randint(0, 250, (2, L), generator=gen)
    loss = torch.zeros(2, L, dtype=torch.bool)
    docs = torch.zeros(2, L, dtype=torch.long)
    # row 0: conversation 0 = prompt 0..3, reply 4..7 (EOD at 7), prompt 8..11, reply 12..15 (EOD at 15)
    loss[0, 4:8] = loss[0, 12:16] = True
    x0[0, 7] = x0[0, 15] = EOD
    docs[0, 16:] = 1  # conversation 1 = prompt 16..21, reply 22..31
    loss[0, 22:] = True
    x0[0, 31] = EOD
    # row 1: prompt 0..9, reply 10..15 (EOD at 13, EOS padding 14..15 supervised), fill 16..31
    loss[1, 10:16] = True
    x0[1, 13:] = EOD
    docs[1, 16:] = 1
    return {"tokens": x0, "loss_mask": loss, "document_ids": docs, "sample_index": torch.tensor([6, 9])}


def objective(**kw):
    return OBJECTIVES["sft"](seq_length=L, micro_batch_size=2, seed=SEED, mask_token_id=MASK,
                             noise=NoiseConfig(t_low=0.3, t_high=0.8, sampling="iid"), complementary=True,
                             t_buckets=0, schedule=BlockSchedule.constant(BLOCK, L), **kw)


def brute_mask(docs_row: torch.Tensor) -> torch.Tensor:
    """[2L, 2L] bool from the definition (METHOD.md 5), one pair at a time."""
    out = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    for q in range(2 * L):
        for k in range(2 * L):
            qi, ki = q % L, k % L
            if docs_row[qi] != docs_row[ki]:
                continue
            bq, bk = qi // BLOCK, ki // BLOCK
            if q < L:
                out[q, k] = (bq == bk) if k < L else (bk < bq)
            else:
                out[q, k] = k >= L and bk <= bq
    return out


def sft_worker(rank, world_size):
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.distributed import init_model_parallel

    init_model_parallel(ParallelConfig(), seed=7)
    model = build_model(get_preset("tiny-dense"), ParallelConfig()).eval()
    batch = sft_batch()
    B = batch["tokens"].shape[0]
    step = StepContext(iteration=ITERATION, block_size=BLOCK)
    out = {}
    ref = complementary_instances(batch["tokens"], batch["loss_mask"], batch["sample_index"], SEED, ITERATION,
                                  NoiseConfig(t_low=0.3, t_high=0.8, sampling="iid"), MASK)
    positions = torch.arange(L).repeat(1, 2).expand(2 * B, 2 * L)
    docs2 = torch.cat([batch["document_ids"], batch["document_ids"]])
    masks = torch.stack([brute_mask(d) for d in docs2])
    with torch.no_grad():
        full = model(torch.cat([ref.xt, ref.tokens], dim=1), positions, masks).double()[:, :L]
    logp = torch.log_softmax(full, dim=-1)
    ce = -logp.gather(-1, ref.tokens.unsqueeze(-1)).squeeze(-1)
    sel = ref.noise_mask & ref.loss_mask
    out["brute"] = {
        "none/masked_tokens": (float(ce[sel].sum()), int(sel.sum())),
        "inv_t/all_tokens": (float((ce / ref.t_per_token.double())[sel].sum()), int(ref.loss_mask.sum())),
    }
    for weighting, norm in (("none", "masked_tokens"), ("inv_t", "all_tokens")):
        obj = objective(loss_weight=weighting, loss_norm=norm)
        inputs = obj.prepare_inputs(batch, step)
        with torch.no_grad():
            logits = model(inputs.tokens, inputs.position_ids, inputs.attention_mask,
                           logits_index=inputs.logits_index)
            loss_sum, count, report = obj.loss_func(inputs, step)(logits)
        out[f"{weighting}/{norm}"] = (float(loss_sum), int(count))
    out["inputs"] = {"tokens": inputs.tokens, "mask": inputs.attention_mask, "targets": inputs.targets,
                     "noise_mask": inputs.noise.noise_mask, "loss_mask": inputs.loss_mask,
                     "t": inputs.noise.t_per_token, "sample_index": inputs.sample_index}
    out["ref"] = {"xt": ref.xt, "noise_mask": ref.noise_mask, "t": ref.t_per_token, "x0": batch["tokens"],
                  "loss_mask": batch["loss_mask"], "brute_mask": masks}

    # CAP on logits where about half the positions predict their target (a random model rarely does)
    obj = objective(loss_weight="none", loss_norm="masked_tokens", cap_weight=2.0)
    inputs = obj.prepare_inputs(batch, step)
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2 * B, L, 256, generator=gen)
    boost = torch.rand(2 * B, L, generator=gen) < 0.5
    logits = logits + 6.0 * boost.unsqueeze(-1) * torch.nn.functional.one_hot(inputs.targets, 256)
    logp = torch.log_softmax(logits.double(), dim=-1)
    correct = logits.argmax(-1) == inputs.targets
    entropy = -(logp.exp() * logp).sum(-1)
    sel = inputs.noise.noise_mask & inputs.loss_mask
    ce = -logp.gather(-1, inputs.targets.unsqueeze(-1)).squeeze(-1)
    out["brute_cap"] = (float(ce[sel].sum()), int(sel.sum()), float(entropy[sel & correct].sum()),
                        int((sel & correct).sum()))
    loss_sum, count, report = obj.loss_func(inputs, step)(logits)
    out["cap"] = (float(loss_sum), int(count), float(report["cap_loss_sum"]), int(report["cap_tokens"]),
                  tuple(obj.report_keys(step)))
    # the CAP gradient flows through the entropy: d(loss)/d(logits) differs from the plain loss's
    with_cap = logits.clone().requires_grad_(True)
    obj.loss_func(inputs, step)(with_cap)[0].backward()
    plain = logits.clone().requires_grad_(True)
    objective(loss_weight="none", loss_norm="masked_tokens").loss_func(inputs, step)(plain)[0].backward()
    out["cap_grad_differs"] = not torch.allclose(with_cap.grad, plain.grad)
    out["finite"] = math.isfinite(out["cap"][0])
    return out
