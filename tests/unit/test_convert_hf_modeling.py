"""Our transformers LLaDA2MoeModelLM: RoPE, routing and masks against independent references."""

import itertools

import torch

from megatron_dllm.convert.llada2_hf.configuration_llada2_moe import LLaDA2MoeConfig
from megatron_dllm.convert.llada2_hf.modeling_llada2_moe import (
    LLaDA2MoeGate,
    LLaDA2MoeModelLM,
    apply_partial_rotary,
    rotary_cos_sin,
)


def _tiny_config(**kw):
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, num_experts=8, num_experts_per_tok=4, n_group=4, topk_group=2,
                moe_intermediate_size=8, first_k_dense_replace=1, num_shared_experts=1, rope_theta=10000.0,
                partial_rotary_factor=0.5, max_position_embeddings=64)
    base.update(kw)
    return LLaDA2MoeConfig(**base)


def test_partial_rope_is_a_rotation_of_half_pairs():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 8)  # [b, heads, s, d], rotate the first 4 dims
    pos = torch.arange(5)[None]
    cos, sin = rotary_cos_sin(pos, 4, 10000.0, torch.float32)
    got = apply_partial_rotary(x, cos, sin)
    # reference: pairs (i, i + 2) of the rotated block form complex numbers rotated by pos * theta_i
    theta = 1.0 / 10000.0 ** (torch.arange(0, 4, 2).float() / 4)
    z = torch.complex(x[..., :2], x[..., 2:4]) * torch.polar(torch.ones(5, 2), pos[0][:, None] * theta)
    assert torch.allclose(got[..., :2], z.real, atol=1e-6) and torch.allclose(got[..., 2:4], z.imag, atol=1e-6)
    assert torch.equal(got[..., 4:], x[..., 4:])


def test_group_limited_routing_matches_brute_force():
    torch.manual_seed(1)
    cfg = _tiny_config()
    gate = LLaDA2MoeGate(cfg)
    torch.nn.init.normal_(gate.weight)
    gate.expert_bias.normal_(0, 0.3)
    hidden = torch.randn(6, 32)
    index, weights = gate(hidden)
    scores = torch.sigmoid(hidden @ gate.weight.t())
    biased = scores + gate.expert_bias
    for t in range(6):
        best, best_set = None, None
        for groups in itertools.combinations(range(4), 2):  # keep 2 of 4 groups of 2 experts
            group_score = sum(biased[t, 2 * g:2 * g + 2].sort(descending=True).values[:2].sum() for g in groups)
            if best is None or group_score > best:
                best, best_set = group_score, [e for g in groups for e in (2 * g, 2 * g + 1)]
        chosen = sorted(best_set, key=lambda e: -biased[t, e])[:4]
        assert sorted(index[t].tolist()) == sorted(chosen)
        expected = scores[t, index[t]] / scores[t, index[t]].sum() * cfg.routed_scaling_factor
        assert torch.allclose(weights[t], expected, atol=1e-6)


def test_masks():
    torch.manual_seed(2)
    model = LLaDA2MoeModelLM(_tiny_config()).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ids = torch.randint(0, 64, (2, 6))
    with torch.no_grad():
        free = model(ids).logits
        full = model(ids, attention_mask=torch.ones(2, 1, 6, 6, dtype=torch.bool)).logits
        assert torch.allclose(free, full, atol=1e-6)  # no mask = bidirectional
        causal = torch.ones(6, 6, dtype=torch.bool).tril()[None, None].expand(2, 1, 6, 6)
        changed = ids.clone()
        changed[:, -1] = (ids[:, -1] + 1) % 64
        a = model(ids, attention_mask=causal).logits
        b = model(changed, attention_mask=causal).logits
        assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6) and not torch.allclose(a[:, -1], b[:, -1])
        additive = torch.where(causal, 0.0, float("-inf"))  # the released generate() passes this form
        assert torch.allclose(model(ids, attention_mask=additive).logits, a, atol=1e-6)
        padding = torch.ones(2, 6, dtype=torch.long)
        padding[:, -1] = 0
        c = model(ids, attention_mask=padding).logits
        d = model(changed, attention_mask=padding).logits
        assert torch.allclose(c[:, :-1], d[:, :-1], atol=1e-6)
