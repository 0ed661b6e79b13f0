"""Typed configuration of a megatron_dllm run.

Every field has a help text (``field(metadata={"help": ...})``) so command-line flags can be generated
from these dataclasses. Field names follow Megatron-LM's flag names with dashes turned into
underscores (``num_layers`` <-> ``--num-layers``), so operators' launch scripts carry over.

``validate(model, parallel, world_size)`` checks everything that can be checked before any compute and
raises :class:`ConfigError` whose message names the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional, Union


class ConfigError(ValueError):
    """A configuration that cannot run; the message says how to fix it."""


def _f(default, help: str, **kw):  # noqa: A002 - mirrors argparse's name
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    """Architecture of the Megatron-Core GPT / MoE model (LLaDA2.0 style when MoE)."""

    num_layers: int = _f(2, "Number of transformer layers.")
    hidden_size: int = _f(64, "Hidden size.")
    ffn_hidden_size: Optional[int] = _f(None, "FFN size of dense layers (default 4 x hidden).")
    num_attention_heads: int = _f(4, "Number of query heads.")
    num_query_groups: Optional[int] = _f(
        None, "Number of key/value heads for grouped-query attention (default: one per head)."
    )
    kv_channels: Optional[int] = _f(None, "Head dimension (default hidden / heads).")
    seq_length: int = _f(128, "Training sequence length L (clean tokens per sample).")
    max_position_embeddings: Optional[int] = _f(
        None, "Largest position the RoPE table covers (default: seq-length)."
    )
    vocab_size: int = _f(256, "Vocabulary size of the tokenizer (before padding).")
    make_vocab_size_divisible_by: int = _f(
        128, "Pad the vocabulary to a multiple of this times the tensor-parallel size."
    )
    normalization: str = _f("RMSNorm", "LayerNorm or RMSNorm.", choices=["LayerNorm", "RMSNorm"])
    norm_epsilon: float = _f(1e-5, "Epsilon of the normalisation layers.")
    qk_layernorm: bool = _f(False, "Per-head normalisation of queries and keys before RoPE.")
    position_embedding_type: str = _f("rope", "Position embedding type.", choices=["rope"])
    rotary_percent: float = _f(1.0, "Fraction of each head's dims that RoPE rotates (LLaDA2.0: 0.5).")
    rotary_base: int = _f(10000, "RoPE base (LLaDA2.0: 600000).")
    swiglu: bool = _f(True, "SwiGLU feed-forward (gated SiLU).")
    add_bias_linear: bool = _f(False, "Biases in linear layers.")
    untie_embeddings_and_output_weights: bool = _f(
        True, "Separate input embedding and output layer weights."
    )
    init_method_std: float = _f(0.02, "Standard deviation of the weight initialisation.")
    hidden_dropout: float = _f(0.0, "Dropout on hidden states.")
    attention_dropout: float = _f(0.0, "Dropout on attention probabilities.")
    # --- MoE -------------------------------------------------------------------------------------
    num_experts: Optional[int] = _f(None, "Routed experts per MoE layer (None: dense model).")
    moe_ffn_hidden_size: Optional[int] = _f(None, "FFN size of each routed expert.")
    moe_layer_freq: Union[int, List[int]] = _f(
        1, "MoE layer pattern: N = every N-th layer, or a list of 0/1 per layer."
    )
    moe_first_k_dense: int = _f(
        0, "Make the first K layers dense (LLaDA2.0: 1); overrides moe_layer_freq for those layers."
    )
    moe_router_topk: int = _f(2, "Experts per token.")
    moe_router_score_function: str = _f(
        "softmax", "Router score function.", choices=["softmax", "sigmoid"]
    )
    moe_router_enable_expert_bias: bool = _f(
        False, "Aux-loss-free balancing: a per-expert bias used only for expert selection."
    )
    moe_router_bias_update_rate: float = _f(1e-3, "Update rate of the expert bias.")
    moe_router_topk_scaling_factor: Optional[float] = _f(
        None, "Scale of the combine weights (LLaDA2.0: 2.5)."
    )
    moe_router_num_groups: Optional[int] = _f(None, "Expert groups for group-limited routing.")
    moe_router_group_topk: Optional[int] = _f(None, "Groups selected per token.")
    moe_router_pre_softmax: bool = _f(False, "Softmax before top-k (softmax router only).")
    moe_router_dtype: Optional[str] = _f("fp32", "Router compute dtype.", choices=["fp32", "fp64"])
    moe_router_load_balancing_type: str = _f(
        "aux_loss", "Balancing loss.", choices=["aux_loss", "seq_aux_loss", "none"]
    )
    moe_aux_loss_coeff: float = _f(0.0, "Coefficient of the load-balancing loss.")
    moe_z_loss_coeff: Optional[float] = _f(None, "Coefficient of the router z-loss.")
    moe_shared_expert_intermediate_size: Optional[int] = _f(
        None, "FFN size of the shared expert (None: no shared expert)."
    )
    moe_token_dispatcher_type: str = _f(
        "alltoall", "Token dispatcher.", choices=["alltoall", "allgather", "flex"]
    )
    moe_grouped_gemm: bool = _f(False, "Grouped GEMM experts (GPU with TE only).")

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts)

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    def moe_layer_pattern(self) -> Optional[List[int]]:
        """0/1 per layer (1 = MoE), or None for a dense model."""
        if not self.is_moe:
            return None
        if isinstance(self.moe_layer_freq, int):
            pattern = [1 if i % self.moe_layer_freq == 0 else 0 for i in range(self.num_layers)]
        else:
            pattern = list(self.moe_layer_freq)
        for i in range(min(self.moe_first_k_dense, self.num_layers)):
            pattern[i] = 0
        return pattern

    def padded_vocab_size(self, tensor_model_parallel_size: int = 1) -> int:
        """Vocabulary padded as Megatron-LM pads it (multiple of divisor x TP)."""
        multiple = self.make_vocab_size_divisible_by * tensor_model_parallel_size
        return -(-self.vocab_size // multiple) * multiple


@dataclass
class ParallelConfig:
    """Parallel layout; data parallelism is what is left of the world size."""

    tensor_model_parallel_size: int = _f(1, "Tensor-parallel size (TP).")
    pipeline_model_parallel_size: int = _f(1, "Pipeline-parallel size (PP).")
    virtual_pipeline_model_parallel_size: Optional[int] = _f(
        None, "Virtual pipeline stages per rank (interleaved schedule)."
    )
    expert_model_parallel_size: int = _f(1, "Expert-parallel size (EP).")
    expert_tensor_parallel_size: Optional[int] = _f(
        None, "Tensor-parallel size inside experts (default: TP)."
    )
    context_parallel_size: int = _f(1, "Context-parallel size: each of N ranks holds 1/N of every sequence's "
                                    "positions (work-balanced split; objectives ar, mdlm, bd).")
    sequence_parallel: bool = _f(False, "Sequence parallelism (required for MoE with TP > 1).")

    def data_parallel_size(self, world_size: int) -> int:
        model_parallel = (
            self.tensor_model_parallel_size
            * self.pipeline_model_parallel_size
            * self.context_parallel_size
        )
        return world_size // model_parallel


@dataclass
class DiffusionConfig:
    """The masked-diffusion recipe (flags ``--dllm-*``); METHOD.md sections 2-6."""

    objective: str = _f(
        "mdlm", "mdlm: full-sequence masked diffusion; bd: block diffusion following "
        "--dllm-block-schedule; ar: causal AR baseline with next-token labels; dpo: DPO with VRPO "
        "on preference pairs (--ref-load); sft: supervised fine-tuning on conversations (block diffusion "
        "at --dllm-sft-block-size, prompt never masked, complementary masks, t in [0.3, 0.8] by default).",
        choices=["mdlm", "bd", "ar", "dpo", "sft"], flag="--dllm-objective")
    block_schedule: Optional[str] = _f(
        None, "Block-size curriculum (grammar in megatron_dllm.diffusion.curriculum), e.g. "
        "'warmup:1@2M,4@2M;stable:L@20M;decay:32@2M'. Needed by --dllm-objective bd.",
        flag="--dllm-block-schedule")
    mask_token_id: Optional[int] = _f(
        None, "Id of [MASK] (default: the tokenizer's '<|mask|>' token).", flag="--dllm-mask-token-id")
    label_shift: bool = _f(
        False, "Keep AR alignment: the logit at i predicts token i+1 (Dream style).",
        flag="--dllm-label-shift")
    token_shift: bool = _f(
        False, "Token shift inside block diffusion (Fast-dLLM v2, I-DLM): the masked token at i is "
        "predicted from the output at i-1, the first token of a block from the last clean token of "
        "the previous block (x0 stream). Keeps the AR model's next-token head; block size 1 is "
        "exactly AR training. Not served by LLaDA2 samplers (SGLang, dInfer); written into every "
        "checkpoint and honoured by generation, export and verification.", flag="--dllm-token-shift")
    clean_stream_causal: bool = _f(
        False, "The clean half x0 of [xt ; x0] attends strictly causally (Efficient-DLM, I-DLM) "
        "instead of block-causally; the model then also decodes as AR. Block-diffusion phases only.",
        flag="--dllm-clean-stream-causal")
    ar_loss_weight: float = _f(
        0.0, "Weight of a next-token loss on the causal clean stream (reference: 0.3); summed over "
        "the clean tokens and divided by the diffusion loss's normaliser. Needs "
        "--dllm-clean-stream-causal.", flag="--dllm-ar-loss-weight")
    complementary_masking: bool = _f(
        False, "Every sample of a micro-batch appears twice, with a mask and its complement "
        "(t -> 1 - t), so each token is noised in exactly one copy. Doubles the rows of a step: "
        "halve --global-batch-size to keep the compute.", flag="--dllm-complementary-masking")
    t_eps: float = _f(1e-3, "t ~ U[eps, 1].", flag="--dllm-t-eps")
    t_low: Optional[float] = _f(None, "Lower end of a t band (SFT: 0.3).", flag="--dllm-t-low")
    t_high: Optional[float] = _f(None, "Upper end of a t band (SFT: 0.8).", flag="--dllm-t-high")
    t_sampling: str = _f("antithetic", "How t is spread over the global batch.",
                         choices=["iid", "antithetic", "stratified"], flag="--dllm-t-sampling")
    t_granularity: str = _f("sequence", "One t per sequence or per block.",
                            choices=["sequence", "block"], flag="--dllm-t-granularity")
    loss_weight: str = _f("inv_t", "Weight of each noised token's CE: 1/t (ELBO) or none.",
                          choices=["inv_t", "none"], flag="--dllm-loss-weight")
    loss_norm: str = _f("all_tokens", "Normaliser: all loss tokens (LLaDA pre-training), noised "
                        "tokens (dFactory), or per sequence (LLaDA SFT).",
                        choices=["all_tokens", "masked_tokens", "sequence"], flag="--dllm-loss-norm")
    embedding_noise_std: float = _f(
        0.0, "Std of Gaussian noise added to the embedding output at [MASK] positions "
        "(LLaDA2.0 stability trick for converted AR models; 0 = off).", flag="--dllm-embedding-noise-std")
    embedding_noise_iters: int = _f(
        0, "Apply the embedding noise during the first N iterations.", flag="--dllm-embedding-noise-iters")
    attention_backend: str = _f("auto", "Core attention backend (auto: flex on CUDA, sdpa on CPU).",
                                choices=["auto", "sdpa", "flex", "te"], flag="--dllm-attention-backend")
    bd_micro_batch_size: Optional[int] = _f(
        None, "Micro-batch size in block-diffusion phases (input is 2L); default --micro-batch-size.",
        flag="--dllm-bd-micro-batch-size")
    t_buckets: int = _f(5, "Number of t buckets for per-t loss logging.", flag="--dllm-t-buckets")
    eval_t_points: int = _f(5, "Fixed stratified t values of the validation ELBO.",
                            flag="--dllm-eval-t-points")
    sft_block_size: Optional[int] = _f(
        None, "SFT: the one block size of the [xt ; x0] layout; conversations are padded with supervised "
        "EOS to a multiple of it (default 32, LLaDA2.0).", flag="--dllm-sft-block-size")
    cap_weight: float = _f(
        0.0, "SFT: weight lambda of the CAP confidence term (METHOD.md 6.4; entropy of the correctly "
        "predicted masked tokens, divided by the SFT loss's normaliser; dFactory recommends 2.0; 0 = off).",
        flag="--dllm-cap-weight")
    ref_load: Optional[str] = _f(
        None, "DPO: checkpoint directory of the frozen reference model (same architecture; loaded "
        "under this run's parallel layout, no optimizer). Needed by --dllm-objective dpo.",
        flag="--ref-load")
    dpo_beta: float = _f(0.1, "DPO temperature beta (LLaDA2.0: 0.1).", flag="--dpo-beta")
    dpo_elbo_samples: int = _f(
        4, "DPO: noise draws n per ELBO estimate (each response is scored n times by the policy and "
        "the reference in the same micro-batch).", flag="--dpo-elbo-samples")
    dpo_block_size: Optional[int] = _f(
        None, "DPO: score the replies in the block-diffusion layout [xt ; x0] at this block size (LLaDA2.0: "
        "32, the SFT block size, so the ELBO is the one the SFT model was trained on); default: the MDLM "
        "layout (xt, bidirectional within the conversation).", flag="--dpo-block-size")
    dpo_sampling: str = _f(
        "vrpo", "DPO noise: vrpo (n stratified t x 1 mask, shared by policy / reference and by the "
        "pair; LLaDA 1.5) or naive (independent draws for each of the four ELBO estimates).",
        choices=["vrpo", "naive"], flag="--dpo-sampling")


@dataclass
class TrainingConfig:
    """Optimisation, schedule and batch (Megatron-LM flag names)."""

    micro_batch_size: int = _f(1, "Samples per micro-batch per data-parallel rank.")
    global_batch_size: int = _f(8, "Samples per optimizer step over all data-parallel ranks.")
    train_iters: Optional[int] = _f(None, "Optimizer steps to train.")
    train_tokens: Optional[int] = _f(None, "Clean tokens to train (alternative to --train-iters).")
    train_samples: Optional[int] = _f(
        None, "Samples to train (Megatron-LM; alternative to --train-iters): train iterations = "
        "train samples // global batch size.")
    lr: float = _f(3e-4, "Peak learning rate.")
    min_lr: float = _f(0.0, "Final learning rate.")
    lr_decay_style: str = _f("linear", "LR decay.", choices=["constant", "linear", "cosine",
                                                             "inverse-square-root", "WSD"])
    lr_warmup_iters: int = _f(0, "Linear LR warm-up steps.")
    lr_warmup_init: float = _f(0.0, "Learning rate at the start of the warm-up.")
    lr_warmup_samples: Optional[int] = _f(
        None, "Warm-up in samples (with --train-samples); converted to ceil(samples / global batch) steps.")
    lr_decay_samples: Optional[int] = _f(
        None, "Decay in samples (with --train-samples); converted to ceil(samples / global batch) steps.")
    lr_wsd_decay_samples: Optional[int] = _f(
        None, "WSD decay in samples (with --train-samples); converted to ceil(samples / global batch) steps.")
    lr_decay_iters: Optional[int] = _f(None, "Steps over which the LR decays (default: train iters).")
    lr_wsd_decay_iters: Optional[int] = _f(None, "Decay steps at the end of a WSD LR schedule.")
    lr_wsd_decay_style: str = _f("exponential", "Shape of the WSD decay.",
                                 choices=["linear", "cosine", "exponential", "minus_sqrt"])
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    adam_beta1: float = _f(0.9, "Adam beta1.")
    adam_beta2: float = _f(0.999, "Adam beta2.")
    adam_eps: float = _f(1e-8, "Adam epsilon.")
    clip_grad: float = _f(1.0, "Gradient clipping by global norm (0 = off).")
    seed: int = _f(1234, "Random seed (weights, noise, data order).")
    bf16: bool = _f(False, "bf16 mixed precision (GPU).")
    use_distributed_optimizer: bool = _f(False, "Shard optimizer state over data-parallel ranks.")
    overlap_grad_reduce: bool = _f(False, "Overlap the gradient reduce-scatter with backward.")
    overlap_param_gather: bool = _f(
        False, "Overlap the distributed optimizer's parameter all-gather with the next forward "
        "(needs --use-distributed-optimizer and --overlap-grad-reduce, as in Megatron-LM).")
    transformer_impl: Optional[str] = _f(
        None, "Layer implementation: 'local' (Megatron-Core's torch layers, our core attention; CPU "
        "and GPU) or 'transformer_engine' (TE linears / norms / grouped GEMM with our core attention; "
        "GPU with Transformer Engine installed). Default: local, or transformer_engine when "
        "--moe-grouped-gemm or --fp8-format asks for TE (Megatron-LM's default is TE).",
        choices=["local", "transformer_engine"])
    fp8_format: Optional[str] = _f(
        None, "FP8 training with Transformer Engine: 'e4m3' or 'hybrid' (e4m3 forward, e5m2 gradients).",
        choices=["e4m3", "hybrid"])
    fp8_recipe: str = _f("delayed", "FP8 scaling recipe (Transformer Engine).",
                         choices=["delayed", "tensorwise", "blockwise", "mxfp8"])
    fp8_param_gather: bool = _f(False, "Keep parameters in FP8 for the all-gather (Transformer Engine).")
    recompute_granularity: Optional[str] = _f(
        None, "Activation recompute: 'full' (a layer keeps only its input) or 'selective' (the modules "
        "of --recompute-modules). Losses and gradients are unchanged.", choices=["full", "selective"])
    recompute_method: Optional[str] = _f(
        None, "With full recompute: 'uniform' (groups of --recompute-num-layers layers) or 'block' (the "
        "first --recompute-num-layers layers of each pipeline stage).", choices=["uniform", "block"])
    recompute_num_layers: Optional[int] = _f(
        None, "Layers per recompute group (uniform) or recomputed layers per stage (block).")
    recompute_modules: Optional[List[str]] = _f(
        None, "Modules recomputed with --recompute-granularity selective (Megatron-Core's names: "
        "core_attn, moe_act, layernorm, mla_up_proj, mlp, moe, shared_experts; default core_attn).")
    device: str = _f("auto", "cpu, cuda, or auto (cuda when present).", choices=["auto", "cpu", "cuda"])
    eval_interval: Optional[int] = _f(None, "Validate every N steps (None: never).")
    eval_iters: int = _f(2, "Validation batches per evaluation.")
    exit_interval: Optional[int] = _f(
        None, "Save and exit at the first iteration divisible by N (Megatron-LM's rule: a run resumed "
        "at iteration 20 with N = 15 exits at 30).")
    exit_duration_in_mins: Optional[int] = _f(
        None, "Save and exit once this many minutes have passed since start-up (checked after every "
        "iteration, the same decision on every rank).")
    distributed_timeout_minutes: int = _f(
        10, "Timeout of torch.distributed collectives (init_process_group), in minutes.")
    skip_nonfinite_iters: int = _f(
        0, "A NaN / Inf loss or gradient norm stops the run with a one-line error naming the iteration "
        "and exit code 3, saving nothing of it (earlier checkpoints are kept). With N > 0 the first N "
        "such iterations of this process are skipped instead: the optimizer update is not applied "
        "(parameters, optimizer state and LR schedule stay as they were) and the batch is dropped.")


@dataclass
class CheckpointConfig:
    """Checkpoints: torch_dist (dist_checkpointing), atomic, resharding on load."""

    save: Optional[str] = _f(None, "Directory to save checkpoints in.")
    load: Optional[str] = _f(None, "Directory to resume from (its latest checkpoint).")
    save_interval: Optional[int] = _f(None, "Save every N steps.")
    keep_last: int = _f(0, "Keep the last K checkpoints (0 = keep all, as Megatron-LM).",
                        flag="--ckpt-keep-last")
    no_load_optim: bool = _f(False, "Load model weights only; start a fresh optimizer.")
    no_load_rng: bool = _f(False, "Do not restore RNG states.")
    finetune: bool = _f(False, "Load weights only and restart at iteration 0 (no optimizer, no RNG "
                        "state, as Megatron-LM).")
    exit_signal_handler: bool = _f(False, "On SIGTERM: save a checkpoint and exit 0 (preemption).")


@dataclass
class LoggingConfig:
    """Console, TensorBoard and metrics.jsonl."""

    log_interval: int = _f(10, "Print / record metrics every N steps.")
    tensorboard_dir: Optional[str] = _f(None, "TensorBoard log directory.")
    metrics_path: Optional[str] = _f(
        None, "JSON-lines metrics file (default: <save or tensorboard-dir>/metrics.jsonl).")


def validate(model: ModelConfig, parallel: ParallelConfig, world_size: Optional[int] = None,
             context_parallel: bool = False) -> None:
    """Check a model / parallel configuration before any compute; raise ConfigError naming the fix.

    ``context_parallel``: the caller handles CP > 1 (the model itself does: ``model/context_parallel.py``;
    the training, generation and conversion paths do not yet, so they leave it False).
    """
    tp = parallel.tensor_model_parallel_size
    pp = parallel.pipeline_model_parallel_size
    ep = parallel.expert_model_parallel_size
    for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size",
                 "expert_model_parallel_size", "context_parallel_size"):
        if getattr(parallel, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("virtual_pipeline_model_parallel_size", "expert_tensor_parallel_size"):
        value = getattr(parallel, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {value} must be >= 1 (or left out)")
    if parallel.context_parallel_size != 1 and not context_parallel:
        raise ConfigError("context parallelism is not supported yet: use --context-parallel-size 1")
    if model.num_attention_heads % tp:
        raise ConfigError(
            f"--num-attention-heads {model.num_attention_heads} is not divisible by "
            f"--tensor-model-parallel-size {tp}: choose a TP size that divides the head count"
        )
    if model.query_groups % tp:
        raise ConfigError(
            f"--num-query-groups {model.query_groups} is not divisible by "
            f"--tensor-model-parallel-size {tp}: choose a TP size that divides the KV head count"
        )
    if model.num_attention_heads % model.query_groups:
        raise ConfigError(
            f"--num-attention-heads {model.num_attention_heads} is not a multiple of "
            f"--num-query-groups {model.query_groups}"
        )
    if model.num_layers % pp:
        raise ConfigError(
            f"--num-layers {model.num_layers} is not divisible by "
            f"--pipeline-model-parallel-size {pp}: choose a PP size that divides the layer count"
        )
    vpp = parallel.virtual_pipeline_model_parallel_size
    if vpp is not None and model.num_layers % (pp * vpp):
        raise ConfigError(
            f"--num-layers {model.num_layers} is not divisible by PP x virtual stages = {pp * vpp}"
        )
    ffn = model.ffn_hidden_size or 4 * model.hidden_size
    if ffn % tp:
        raise ConfigError(f"--ffn-hidden-size {ffn} is not divisible by TP {tp}")
    if not 0.0 < model.rotary_percent <= 1.0:
        raise ConfigError("--rotary-percent must be in (0, 1]")
    if model.is_moe:
        if model.num_experts % ep:
            raise ConfigError(
                f"--num-experts {model.num_experts} is not divisible by "
                f"--expert-model-parallel-size {ep}: choose an EP size that divides the expert count"
            )
        if model.moe_router_topk > model.num_experts:
            raise ConfigError("--moe-router-topk exceeds --num-experts")
        if model.moe_router_num_groups:
            if model.num_experts % model.moe_router_num_groups:
                raise ConfigError("--num-experts must be divisible by --moe-router-num-groups")
            if not model.moe_router_group_topk:
                raise ConfigError("--moe-router-num-groups needs --moe-router-group-topk")
        if model.moe_router_enable_expert_bias and model.moe_router_score_function != "sigmoid":
            raise ConfigError("--moe-router-enable-expert-bias needs --moe-router-score-function sigmoid")
        if isinstance(model.moe_layer_freq, list) and len(model.moe_layer_freq) != model.num_layers:
            raise ConfigError("--moe-layer-freq as a list needs one 0/1 entry per layer")
        if tp > 1 and not parallel.sequence_parallel:
            raise ConfigError(
                "MoE with --tensor-model-parallel-size > 1 needs --sequence-parallel (Megatron-Core refuses "
                "to train without it): add --sequence-parallel"
            )
        if model.add_bias_linear:
            raise ConfigError("MoE models need --disable-bias-linear (add_bias_linear=False)")
    if world_size is not None:
        model_parallel = tp * pp * parallel.context_parallel_size
        if world_size % model_parallel:
            raise ConfigError(
                f"world size {world_size} is not divisible by TP x PP x CP = {model_parallel}"
            )
        etp = parallel.expert_tensor_parallel_size or tp
        if world_size % (ep * etp * pp):
            raise ConfigError(
                f"world size {world_size} is not divisible by EP x expert-TP x PP = {ep * etp * pp}"
            )


def replace(cfg, **changes):
    """dataclasses.replace re-exported for callers that build variants of a config."""
    return dataclasses.replace(cfg, **changes)
