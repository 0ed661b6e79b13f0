"""Worker of test_group_router: the tiny-moe preset's logits against the released LLaDA2 routing rule.

The ``tiny-moe`` preset routes top-2 of 8 experts in 4 groups, 2 groups kept: Megatron-Core's stock
``TopKRouter`` scores a group by its top 2 // 2 = 1 expert, the released LLaDA2 / BailingMoeV2 code by
its top 2. One rank:

1. build tiny-moe as the project builds it (``model/specs.py`` replaces ``TopKRouter`` by
   ``ReleasedGroupTopKRouter``; random weights, expert biases ~0.05), save it as a megatron_dllm
   checkpoint and export it with ``export_hf``;
2. the reference: our transformers class loaded from the export, each gate's ``forward`` replaced by
   the released code's (``_released_gate_forward``, group score = top-2 sum, written out here);
3. the same weights in a model built with the stock router (the replacement removed for this process
   only), to show the rules differ on this preset.

Returned: max |logits difference| vs the released reference of the project's model, of the stock
router's model and of our unpatched transformers class (the export check).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types

import torch
import torch.nn.functional as F

SEQ, BATCH, MASK_ID = 16, 2, 250


def _released_gate_forward(self, hidden):
    """The released ``modeling_llada2_moe.py`` gate: groups scored by the sum of their top-2."""
    logits = F.linear(hidden.float(), self.weight.float())
    scores = torch.sigmoid(logits)
    select = scores + self.expert_bias.float()
    tokens = select.shape[0]
    group_scores = select.view(tokens, self.n_group, -1).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(tokens, self.n_group, self.num_experts // self.n_group)
    select = select.masked_fill(~score_mask.reshape(tokens, -1).bool(), float("-inf"))
    index = torch.topk(select, k=self.top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, index)
    weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return index, weights * self.scaling


def _build(cfg, stock_router: bool):
    from megatron.core.transformer.moe.router import TopKRouter

    from megatron_dllm.config import ParallelConfig
    from megatron_dllm.model import specs
    from megatron_dllm.model.builder import build_model

    replacement = specs._CLASS_REPLACEMENTS.pop(TopKRouter) if stock_router else None
    try:
        return build_model(cfg, ParallelConfig(), causal=False, attention_backend="sdpa").eval()
    finally:
        if replacement is not None:
            specs._CLASS_REPLACEMENTS[TopKRouter] = replacement


def _save(model, cfg, root: str) -> str:
    from megatron.core import dist_checkpointing

    directory = os.path.join(root, "ckpt", "iter_0000000")
    os.makedirs(directory)
    dist_checkpointing.save(model.sharded_state_dict(), directory)
    meta = {"iteration": 0, "objective": "mdlm", "mask_token_id": MASK_ID,
            "run": {"model": dataclasses.asdict(cfg), "diffusion": {"mask_token_id": MASK_ID}}}
    with open(os.path.join(directory, "dllm_meta.json"), "w") as handle:
        json.dump(meta, handle)
    with open(os.path.join(root, "ckpt", "latest_checkpointed_iteration.txt"), "w") as handle:
        handle.write("0")
    return os.path.join(root, "ckpt")


@torch.no_grad()
def routing_worker(rank, world_size, root):
    from megatron_dllm.config import ParallelConfig
    from megatron_dllm.convert.hf_export import export_hf
    from megatron_dllm.convert.llada2_hf.modeling_llada2_moe import LLaDA2MoeGate, LLaDA2MoeModelLM
    from megatron_dllm.model.group_router import ReleasedGroupTopKRouter
    from megatron_dllm.model.presets import get_preset
    from megatron_dllm.platform.distributed import init_model_parallel

    cfg = get_preset("tiny-moe")
    init_model_parallel(ParallelConfig(), seed=3)
    ours = _build(cfg, stock_router=False)
    gen = torch.Generator().manual_seed(3)
    for name, p in list(ours.named_parameters()) + list(ours.named_buffers()):
        if name.endswith("expert_bias"):
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        elif p.is_floating_point():
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen) if "norm" in name or name.endswith(
                "layer_norm_weight") else 0.3 * torch.randn(p.shape, generator=gen))
    ckpt = _save(ours, cfg, root)
    hf_dir = os.path.join(root, "hf")
    export_hf(ckpt, hf_dir, progress=False)
    try:
        hf = LLaDA2MoeModelLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    except TypeError:  # transformers 4.x
        hf = LLaDA2MoeModelLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()

    stock = _build(cfg, stock_router=True)
    missing = stock.load_state_dict(ours.state_dict(), strict=False)
    routers = [m for m in ours.modules() if isinstance(m, ReleasedGroupTopKRouter)]

    tokens = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=gen)
    positions = torch.arange(SEQ)[None].expand(BATCH, SEQ)
    mask = torch.ones(SEQ, SEQ, dtype=torch.bool)
    vocab = cfg.vocab_size
    ours_logits = ours(tokens, positions, mask).float()[..., :vocab]
    stock_logits = stock(tokens, positions, mask).float()[..., :vocab]
    hf_class = hf(input_ids=tokens).logits.float()[..., :vocab]
    gates = [m for m in hf.modules() if isinstance(m, LLaDA2MoeGate)]
    for gate in gates:
        gate.forward = types.MethodType(_released_gate_forward, gate)
    reference = hf(input_ids=tokens).logits.float()[..., :vocab]
    return {
        "stock_vs_released_reference": (stock_logits - reference).abs().max().item(),
        "ours_vs_released_reference": (ours_logits - reference).abs().max().item(),
        "export_class_vs_released_reference": (hf_class - reference).abs().max().item(),
        "scale": reference.abs().max().item(),
        "routers": len(routers), "gates": len(gates),
        "missing_keys": list(missing.missing_keys), "unexpected_keys": list(missing.unexpected_keys),
        "preset": [cfg.moe_router_topk, cfg.moe_router_num_groups, cfg.moe_router_group_topk],
    }
