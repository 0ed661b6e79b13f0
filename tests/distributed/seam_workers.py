"""Single-rank checks of the model seams (run in a spawned rank with the CPU backend applied)."""

from __future__ import annotations

import torch

from megatron_dllm.config import ParallelConfig
from megatron_dllm.model.presets import get_preset
from tests.distributed.equivalence_workers import bd_mask

L, BLOCK, B = 32, 8, 2


def _block_causal(seq_len, block):
    blk = torch.arange(seq_len) // block
    return blk[:, None] >= blk[None, :]


def seams_worker(rank, world_size):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_dllm.model.builder import build_model
    from megatron_dllm.model.specs import dllm_block_spec
    from megatron_dllm.model.transformer_config import to_transformer_config
    from megatron_dllm.platform.distributed import init_model_parallel

    out = {}
    parallel = ParallelConfig()
    init_model_parallel(parallel, seed=7)
    gen = torch.Generator().manual_seed(3)
    for kind in ("dense", "moe"):
        cfg = get_preset(f"tiny-{kind}")
        model = build_model(cfg, parallel).eval()
        x0 = torch.randint(0, 255, (B, L), generator=gen)
        noise = torch.rand(B, L, generator=gen) < 0.5
        xt = torch.where(noise, torch.full_like(x0, 255), x0)
        tokens = torch.cat([xt, x0], dim=1)
        with torch.no_grad():
            repeated = model(tokens, torch.arange(L).repeat(2).expand(B, -1), bd_mask(L, BLOCK))
            naive = model(tokens, torch.arange(2 * L).expand(B, -1), bd_mask(L, BLOCK))
            clean_alone = model(x0, torch.arange(L).expand(B, -1), _block_causal(L, BLOCK))
            # noisy block k sees clean blocks < k and itself: a block-causal run on
            # [x0 blocks < k ; xt block k] reproduces it (what block-wise decoding relies on)
            semi_ar = []
            for k in range(L // BLOCK):
                end = (k + 1) * BLOCK
                seq = torch.cat([x0[:, : k * BLOCK], xt[:, k * BLOCK:end]], dim=1)
                run = model(seq, torch.arange(end).expand(B, -1), _block_causal(end, BLOCK))
                semi_ar.append(run[:, k * BLOCK:end])
            semi_ar = torch.cat(semi_ar, dim=1)
            # the AR variant of the same weights, no mask, against the dLLM model with a causal mask
            ar = build_model(cfg, parallel, causal=True).eval()
            ar.load_state_dict(model.state_dict())
            causal_ar = ar(x0, torch.arange(L).expand(B, -1), None)
            causal_dllm = model(x0, torch.arange(L).expand(B, -1), torch.ones(L, L, dtype=torch.bool).tril())
            bidir = model(x0, torch.arange(L).expand(B, -1), torch.ones(L, L, dtype=torch.bool))
        out[kind] = {
            "clean_half_err": (repeated[:, L:] - clean_alone).abs().max().item(),
            "noisy_half_err": (repeated[:, :L] - semi_ar).abs().max().item(),
            "naive_positions_err": (naive[:, :L] - semi_ar).abs().max().item(),
            "causal_err": (causal_ar - causal_dllm).abs().max().item(),
            "bidir_vs_causal": (bidir - causal_dllm).abs().max().item(),
            "logit_scale": clean_alone.abs().max().item(),
        }
    # LLaDA-MoE style router: softmax before top-k, load-balancing + z-loss reach the router gradient
    import dataclasses

    soft = dataclasses.replace(
        get_preset("tiny-moe"), moe_router_score_function="softmax", moe_router_enable_expert_bias=False,
        moe_router_pre_softmax=True, moe_router_num_groups=None, moe_router_group_topk=None,
        moe_router_topk_scaling_factor=None, moe_router_load_balancing_type="aux_loss")
    grads, losses = {}, {}
    x0 = torch.randint(0, 255, (B, L), generator=gen)
    weights = None
    for name, aux, z in (("plain", 0.0, None), ("aux", 0.01, 0.001)):
        model = build_model(dataclasses.replace(soft, moe_aux_loss_coeff=aux, moe_z_loss_coeff=z), parallel)
        if weights is None:
            weights = model.state_dict()
        else:
            model.load_state_dict(weights)
        loss = model(x0, torch.arange(L).expand(B, -1), torch.ones(L, L, dtype=torch.bool), labels=x0).mean()
        loss.backward()
        losses[name] = loss.item()
        grads[name] = model.decoder.layers[0].mlp.router.weight.grad.clone()
    out["softmax_router"] = {
        "loss_equal": losses["plain"] == losses["aux"],
        "router_grad_diff": (grads["plain"] - grads["aux"]).abs().max().item(),
    }
    # derived specs leave the stock ones untouched
    tconfig = to_transformer_config(get_preset("tiny-moe"), parallel)
    before = get_gpt_decoder_block_spec(tconfig, use_transformer_engine=False, normalization="RMSNorm")
    derived = dllm_block_spec(tconfig)
    after = get_gpt_decoder_block_spec(tconfig, use_transformer_engine=False, normalization="RMSNorm")
    for spec in (before, after):
        attn = spec.layer_specs[0].submodules.self_attention
        out.setdefault("stock", []).append(
            (attn.submodules.core_attention.__name__, attn.params["attn_mask_type"] == AttnMaskType.causal)
        )
    derived_attn = derived.layer_specs[0].submodules.self_attention
    out["derived"] = (
        derived_attn.submodules.core_attention.module.__name__,
        derived_attn.params["attn_mask_type"] == AttnMaskType.arbitrary,
    )
    return out
