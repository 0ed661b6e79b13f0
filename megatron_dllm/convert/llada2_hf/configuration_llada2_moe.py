"""Configuration of the LLaDA2.0 MoE architecture (``model_type: llada2_moe``) for transformers.

Field names and meanings follow the ``config.json`` of the released LLaDA2.0 models (so SGLang,
dInfer and the official remote code read an exported model), plus a few keys those readers use
or ignore: ``score_function``, ``router_dtype``, ``moe_router_enable_expert_bias``, ``use_qk_norm``,
``moe_shared_expert_intermediate_size`` and ``mask_token_id``. Written for megatron_dllm; shipped
next to exported weights so ``AutoConfig.from_pretrained(dir, trust_remote_code=True)`` works offline.
"""

from transformers.configuration_utils import PretrainedConfig


class LLaDA2MoeConfig(PretrainedConfig):
    """LLaDA2.0 MoE decoder (bidirectional attention, block-diffusion decoding).

    Layers ``[0, first_k_dense_replace)`` have a dense SwiGLU FFN of ``intermediate_size``; the others
    a MoE block: a sigmoid router with an expert bias used for selection only, group-limited top-k
    (``n_group`` groups, ``topk_group`` kept), ``num_experts_per_tok`` experts of
    ``moe_intermediate_size`` whose weights are normalised and scaled by ``routed_scaling_factor``,
    plus ``num_shared_experts`` shared experts. Attention: fused ``query_key_value`` in
    [all q | all k | all v] order, per-head RMSNorm on q and k, RoPE (rotate-half) on the first
    ``partial_rotary_factor`` of each head.
    """

    model_type = "llada2_moe"

    def __init__(
        self,
        vocab_size=157184,
        hidden_size=2048,
        intermediate_size=5120,
        num_hidden_layers=20,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=None,
        hidden_act="silu",
        use_qkv_bias=False,
        use_bias=False,
        use_qk_norm=True,
        rms_norm_eps=1e-6,
        norm_head=False,
        tie_word_embeddings=False,
        embedding_dropout=0.0,
        attention_dropout=0.0,
        output_dropout=0.0,
        initializer_range=0.02,
        max_position_embeddings=32768,
        rope_theta=600000.0,
        rope_scaling=None,
        partial_rotary_factor=0.5,
        use_cache=False,
        pad_token_id=None,
        mask_token_id=None,
        num_experts=256,
        num_shared_experts=1,
        moe_shared_expert_intermediate_size=None,
        num_experts_per_tok=8,
        n_group=8,
        topk_group=4,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        score_function="sigmoid",
        moe_router_enable_expert_bias=True,
        router_dtype="fp32",
        moe_intermediate_size=512,
        first_k_dense_replace=1,
        output_router_logits=False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.use_qkv_bias = use_qkv_bias
        self.use_bias = use_bias
        self.use_qk_norm = use_qk_norm
        self.rms_norm_eps = rms_norm_eps
        self.norm_head = norm_head
        self.embedding_dropout = embedding_dropout
        self.attention_dropout = attention_dropout
        self.output_dropout = output_dropout
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.partial_rotary_factor = partial_rotary_factor
        self.use_cache = use_cache
        self.mask_token_id = mask_token_id
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.moe_shared_expert_intermediate_size = moe_shared_expert_intermediate_size
        self.num_experts_per_tok = num_experts_per_tok
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.norm_topk_prob = norm_topk_prob
        self.score_function = score_function
        self.moe_router_enable_expert_bias = moe_router_enable_expert_bias
        self.router_dtype = router_dtype
        self.moe_intermediate_size = moe_intermediate_size
        self.first_k_dense_replace = first_k_dense_replace
        self.output_router_logits = output_router_logits
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)
