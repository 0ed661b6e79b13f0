"""Parameter counts of a model built on the meta device (no memory is allocated)."""

from __future__ import annotations

from typing import Dict

from megatron_dllm.config import ModelConfig, ParallelConfig


def count_parameters(model, model_cfg: ModelConfig) -> Dict[str, int]:
    """Total, per-token active and embedding parameter counts of a single-rank model.

    Routed experts are active in the proportion top-k / experts; everything else (attention, dense
    and shared-expert FFNs, routers, norms, embeddings) is active for every token.
    """
    total = routed = embedding = 0
    for name, param in model.named_parameters():
        n = param.numel()
        total += n
        if ".mlp.experts." in name:
            routed += n
        if name.startswith("embedding.") or name.startswith("output_layer."):
            embedding += n
    active = total - routed
    if model_cfg.is_moe:
        active += routed * model_cfg.moe_router_topk // model_cfg.num_experts
    return {
        "total_params": total,
        "active_params": active,
        "embedding_params": embedding,
        "non_embedding_active_params": active - embedding,
        "routed_expert_params": routed,
    }


def model_info(model_cfg: ModelConfig) -> dict:
    """Build ``model_cfg`` on the meta device (one rank, no parallelism) and describe it as a dict.

    Needs an initialised process group (``platform.distributed``); allocates no parameter memory.
    """
    from megatron_dllm.model.builder import build_model
    from megatron_dllm.platform.distributed import init_model_parallel

    parallel = ParallelConfig()
    init_model_parallel(parallel)
    model = build_model(model_cfg, parallel, meta=True)
    counts = count_parameters(model, model_cfg)
    pattern = model_cfg.moe_layer_pattern() or [0] * model_cfg.num_layers
    return {
        **counts,
        "layers": [
            "moe" if is_moe else "dense" for is_moe in pattern
        ],
        "num_layers": model_cfg.num_layers,
        "hidden_size": model_cfg.hidden_size,
        "num_attention_heads": model_cfg.num_attention_heads,
        "num_query_groups": model_cfg.query_groups,
        "head_dim": model_cfg.head_dim,
        "num_experts": model_cfg.num_experts,
        "moe_router_topk": model_cfg.moe_router_topk if model_cfg.is_moe else None,
        "padded_vocab_size": model_cfg.padded_vocab_size(1),
        "seq_length": model_cfg.seq_length,
    }
