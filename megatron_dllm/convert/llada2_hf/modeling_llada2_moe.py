"""LLaDA2.0 MoE (``LLaDA2MoeModelLM``) as a transformers model, written for megatron_dllm.

Exported checkpoints (``tools/export_hf.py``) ship this file and ``configuration_llada2_moe.py`` with
an ``auto_map`` so that ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads
them offline. Parameter names and layouts are those of the released LLaDA2.0 models:

    model.word_embeddings.weight                              [V, h]
    model.layers.N.input_layernorm.weight                     [h]
    model.layers.N.attention.query_key_value.weight           [(H + 2 KV) * d, h]  rows: all q | all k | all v
    model.layers.N.attention.query_layernorm.weight           [d]     (per-head RMSNorm on q, before RoPE)
    model.layers.N.attention.key_layernorm.weight             [d]
    model.layers.N.attention.dense.weight                     [h, H * d]
    model.layers.N.post_attention_layernorm.weight            [h]
    model.layers.N.mlp.{gate,up,down}_proj.weight             dense layers (N < first_k_dense_replace)
    model.layers.N.mlp.gate.weight / .expert_bias             [E, h] / [E]   router of MoE layers
    model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight   routed experts
    model.layers.N.mlp.shared_experts.{gate,up,down}_proj.weight
    model.norm.weight, lm_head.weight                         [h], [V, h]

The computation follows Megatron-Core's GPT / MoE layers as megatron_dllm builds them, so logits
match the Megatron model to float precision: pre-norm blocks, RMSNorm in fp32, RoPE on the first
``partial_rotary_factor * d`` dims with rotate-half, GQA, SDPA with scale 1/sqrt(d), SwiGLU; router
logits in fp32, sigmoid scores, selection on ``score + expert_bias`` with group-limited top-k
(group score = sum of the group's top-2 scores, as the released code and megatron_dllm's
``ReleasedGroupTopKRouter``, whatever ``num_experts_per_tok`` is), combine weights = unbiased scores
normalised to sum 1 (top-k > 1) times ``routed_scaling_factor``; shared experts added unweighted.

Attention is bidirectional unless a mask is given: ``attention_mask`` may be ``[b, s]`` (1 = real
token, padding keys hidden), ``[b, 1, s, s]`` / ``[b, s, s]`` bool (True = may attend) or additive
float (0 / -inf), as the released ``generate()`` passes its block-diffusion mask.
A 2-D mask is always a padding mask; pass square masks as ``[b, s, s]`` or ``[b, 1, s, s]``.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import __version__ as _transformers_version
from transformers.modeling_outputs import CausalLMOutput
from transformers.modeling_utils import PreTrainedModel

from .configuration_llada2_moe import LLaDA2MoeConfig

_TRANSFORMERS_MAJOR = int(_transformers_version.split(".")[0])


class LLaDA2MoeRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_cos_sin(position_ids: torch.Tensor, rot_dim: int, base: float, dtype: torch.dtype):
    """cos, sin ``[b, s, rot_dim]`` for integer positions ``[b, s]`` (frequencies in fp32)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float32, device=position_ids.device) / rot_dim))
    freqs = position_ids.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_partial_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the first ``cos.shape[-1]`` dims of ``x [b, heads, s, d]``; the rest pass through."""
    rot = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


class LLaDA2MoeMLP(nn.Module):
    def __init__(self, config: LLaDA2MoeConfig, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LLaDA2MoeGate(nn.Module):
    """Sigmoid router: returns (expert indices [T, k], combine weights [T, k] fp32)."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_experts
        self.n_group = config.n_group or 1
        self.topk_group = config.topk_group or 1
        self.scaling = config.routed_scaling_factor or 1.0
        self.use_bias = bool(getattr(config, "moe_router_enable_expert_bias", True))
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts, dtype=torch.float32))

    def forward(self, hidden: torch.Tensor):
        logits = F.linear(hidden.float(), self.weight.float())
        scores = torch.sigmoid(logits)
        select = scores + self.expert_bias.float() if self.use_bias else scores
        tokens = select.shape[0]
        if self.n_group > 1 or self.topk_group > 1:
            per_group = select.view(tokens, self.n_group, -1)
            group_scores = per_group.topk(min(2, per_group.shape[-1]), dim=-1)[0].sum(dim=-1)
            groups = group_scores.topk(self.topk_group, dim=-1, sorted=False)[1]
            keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, groups, True)
            keep = keep[:, :, None].expand_as(per_group).reshape(tokens, -1)
            select = select.masked_fill(~keep, float("-inf"))
        index = select.topk(self.top_k, dim=-1)[1]
        weights = scores.gather(1, index)
        if self.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return index, weights * self.scaling


class LLaDA2MoeSparseMoeBlock(nn.Module):
    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.experts = nn.ModuleList(
            [LLaDA2MoeMLP(config, config.moe_intermediate_size) for _ in range(config.num_experts)])
        self.gate = LLaDA2MoeGate(config)
        shared = config.moe_shared_expert_intermediate_size or (
            (config.num_shared_experts or 0) * config.moe_intermediate_size)
        self.shared_experts = LLaDA2MoeMLP(config, shared) if shared else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape
        flat = hidden.reshape(-1, shape[-1])
        index, weights = self.gate(flat)
        out = torch.zeros_like(flat)
        for e in torch.unique(index).tolist():
            rows, slot = (index == e).nonzero(as_tuple=True)
            out.index_add_(0, rows, self.experts[e](flat[rows]) * weights[rows, slot, None].to(flat.dtype))
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(shape)


class LLaDA2MoeAttention(nn.Module):
    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.rot_dim = int(self.head_dim * (config.partial_rotary_factor or 1.0))
        self.base = float(config.rope_theta)
        self.query_key_value = nn.Linear(config.hidden_size, (self.heads + 2 * self.kv_heads) * self.head_dim,
                                         bias=config.use_qkv_bias)
        self.dense = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=config.use_bias)
        self.use_qk_norm = getattr(config, "use_qk_norm", True)
        if self.use_qk_norm:
            self.query_layernorm = LLaDA2MoeRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.key_layernorm = LLaDA2MoeRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor, mask: Optional[torch.Tensor]):
        b, s, _ = hidden.shape
        qkv = self.query_key_value(hidden).view(b, s, self.heads + 2 * self.kv_heads, self.head_dim)
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=2)
        if self.use_qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = rotary_cos_sin(position_ids, self.rot_dim, self.base, q.dtype)
        q, k = apply_partial_rotary(q, cos, sin), apply_partial_rotary(k, cos, sin)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5)
        return self.dense(out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class LLaDA2MoeDecoderLayer(nn.Module):
    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attention = LLaDA2MoeAttention(config)
        self.post_attention_layernorm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        moe = config.num_experts is not None and layer_idx >= config.first_k_dense_replace
        self.mlp = LLaDA2MoeSparseMoeBlock(config) if moe else LLaDA2MoeMLP(config, config.intermediate_size)

    def forward(self, hidden, position_ids, mask):
        hidden = hidden + self.attention(self.input_layernorm(hidden), position_ids, mask)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class LLaDA2MoePreTrainedModel(PreTrainedModel):
    config_class = LLaDA2MoeConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDA2MoeDecoderLayer"]
    _supports_sdpa = True


def _attention_mask(mask: Optional[torch.Tensor], batch: int, seq: int, dtype: torch.dtype):
    """SDPA mask (bool True = attend, or additive float) ``[b, 1, s, s]``; None = bidirectional.

    ``[b, s]`` is a key-padding mask (1 = real token); ``[b, s, s]`` and ``[b, 1, s, s]`` are full masks.
    """
    if mask is None:
        return None
    if mask.dim() == 2:
        return mask.bool()[:, None, None, :].expand(batch, 1, seq, seq)
    if mask.dim() == 3:
        mask = mask[:, None]
    return mask if mask.dtype == torch.bool else mask.to(dtype)


class LLaDA2MoeModel(LLaDA2MoePreTrainedModel):
    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LLaDA2MoeDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.word_embeddings

    def set_input_embeddings(self, value):
        self.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        """Hidden states ``[b, s, h]`` after the final norm."""
        hidden = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        b, s, _ = hidden.shape
        if position_ids is None:
            position_ids = torch.arange(s, device=hidden.device)[None].expand(b, s)
        mask = _attention_mask(attention_mask, b, s, hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, position_ids, mask)
        return self.norm(hidden)


class LLaDA2MoeModelLM(LLaDA2MoePreTrainedModel):
    """The model with its LM head. ``forward`` returns logits ``[b, s, V]`` (fp32); ``labels`` (same
    positions, no shift, -100 = ignored) give the masked-token cross-entropy of a dLLM."""

    _tied_weights_keys = ({"lm_head.weight": "model.word_embeddings.weight"} if _TRANSFORMERS_MAJOR >= 5
                          else ["lm_head.weight"])

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.model = LLaDA2MoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.word_embeddings

    def set_input_embeddings(self, value):
        self.model.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None,
                return_dict=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            inputs_embeds=inputs_embeds)
        logits = self.lm_head(hidden).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)
