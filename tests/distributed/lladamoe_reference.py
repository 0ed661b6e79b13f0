"""A reference LLaDA-MoE forward (the released ``modeling_lladamoe.py``'s math), written for the tests.

Independent of Megatron and of our importer: parameters are held in a dict under the released names
(``model.embed_tokens``, ``self_attn.{q,k,v,o}_proj``, per-head ``q_norm`` / ``k_norm``, softmax
top-k router without renormalisation, ``shared_expert``, dense layers where ``moe_layer_freq`` is 0)
and the forward is bidirectional, as the released model always is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CONFIG = dict(model_type="llada", architectures=["LLaDAMoEModelLM"], vocab_size=256, hidden_size=32,
              dense_intermediate_size=48, expert_intermediate_size=8, shared_expert_intermediate_size=8,
              num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_act="silu",
              max_position_embeddings=64, initializer_range=0.02, rms_norm_eps=1e-5, use_cache=False,
              pad_token_id=1, eos_token_id=250, tie_word_embeddings=False, rope_theta=50000,
              partial_rotary_factor=1, rope_scaling=None, attention_bias=False, attention_dropout=0.0, clip_qkv=None,
              num_experts_per_tok=2, num_experts=8, output_router_logits=False, router_aux_loss_coef=0.01,
              norm_topk_prob=False, qk_layernorm=True, moe_layer_freq=[0, 1, 1], moe_router_enable_expert_bias=False,
              moe_router_score_function="softmax", routed_scaling_factor=1, router_num_group=None,
              router_topk_group=None, torch_dtype="float32")


def random_weights(config: dict, seed: int) -> dict:
    """Released tensor names -> random fp32 tensors (norms around 1)."""
    gen = torch.Generator().manual_seed(seed)
    h, heads, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    d, v = h // heads, config["vocab_size"]

    def w(*shape, norm=False):
        x = torch.randn(shape, generator=gen)
        return 1 + 0.2 * x if norm else 0.2 * x
    out = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": w(h, norm=True), "lm_head.weight": w(v, h)}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out.update({p + "input_layernorm.weight": w(h, norm=True),
                    p + "post_attention_layernorm.weight": w(h, norm=True),
                    p + "self_attn.q_proj.weight": w(heads * d, h), p + "self_attn.k_proj.weight": w(kv * d, h),
                    p + "self_attn.v_proj.weight": w(kv * d, h), p + "self_attn.o_proj.weight": w(h, h),
                    p + "self_attn.q_norm.weight": w(d, norm=True), p + "self_attn.k_norm.weight": w(d, norm=True)})
        if not config["moe_layer_freq"][n]:
            f = config["dense_intermediate_size"]
            out.update({p + "mlp.gate_proj.weight": w(f, h), p + "mlp.up_proj.weight": w(f, h),
                        p + "mlp.down_proj.weight": w(h, f)})
            continue
        f, s = config["expert_intermediate_size"], config["shared_expert_intermediate_size"]
        out[p + "mlp.gate.weight"] = w(config["num_experts"], h)
        for e in range(config["num_experts"]):
            pre = f"{p}mlp.experts.{e}."
            out.update({pre + "gate_proj.weight": w(f, h), pre + "up_proj.weight": w(f, h),
                        pre + "down_proj.weight": w(h, f)})
        out.update({p + "shared_expert.gate_proj.weight": w(s, h), p + "shared_expert.up_proj.weight": w(s, h),
                    p + "shared_expert.down_proj.weight": w(h, s)})
    return out


def _rms(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _swiglu(x, t, pre):
    return F.linear(F.silu(F.linear(x, t[pre + "gate_proj.weight"])) * F.linear(x, t[pre + "up_proj.weight"]),
                    t[pre + "down_proj.weight"])


def _rope(x, positions, theta, rot):
    inv = 1.0 / theta ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot)
    ang = positions.float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = torch.cat([-x_rot[..., rot // 2:], x_rot[..., :rot // 2]], -1)
    return torch.cat([x_rot * cos + half * sin, x_pass], -1)


@torch.no_grad()
def logits(config: dict, t: dict, ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[b, s, V]`` of token ids ``[b, s]`` (positions 0..s-1, bidirectional attention)."""
    b, s = ids.shape
    h, heads, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    d, eps = h // heads, config["rms_norm_eps"]
    rot = int(d * (config.get("partial_rotary_factor") or 1))
    x = t["model.embed_tokens.weight"][ids]
    pos = torch.arange(s)
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        y = _rms(x, t[p + "input_layernorm.weight"], eps)
        q = F.linear(y, t[p + "self_attn.q_proj.weight"]).view(b, s, heads, d)
        k = F.linear(y, t[p + "self_attn.k_proj.weight"]).view(b, s, kv, d)
        q, k = _rms(q, t[p + "self_attn.q_norm.weight"], eps), _rms(k, t[p + "self_attn.k_norm.weight"], eps)
        v = F.linear(y, t[p + "self_attn.v_proj.weight"]).view(b, s, kv, d)
        q = _rope(q.transpose(1, 2), pos, config["rope_theta"], rot)
        k = _rope(k.transpose(1, 2), pos, config["rope_theta"], rot)
        v = v.transpose(1, 2)
        k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, h)
        x = x + F.linear(a, t[p + "self_attn.o_proj.weight"])
        y = _rms(x, t[p + "post_attention_layernorm.weight"], eps)
        if not config["moe_layer_freq"][n]:
            x = x + _swiglu(y, t, p + "mlp.")
            continue
        flat = y.reshape(-1, h)
        probs = F.softmax(F.linear(flat, t[p + "mlp.gate.weight"]).float(), dim=-1)
        weight, expert = probs.topk(config["num_experts_per_tok"], dim=-1)
        out = torch.zeros_like(flat)
        for slot in range(expert.shape[1]):
            for e in expert[:, slot].unique().tolist():
                rows = (expert[:, slot] == e).nonzero()[:, 0]
                out[rows] += weight[rows, slot, None] * _swiglu(flat[rows], t, f"{p}mlp.experts.{e}.")
        x = x + out.view(b, s, h) + _swiglu(y, t, p + "shared_expert.")
    return F.linear(_rms(x, t["model.norm.weight"], eps), t["lm_head.weight"]).float()
