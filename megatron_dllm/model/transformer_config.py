"""Adapter from our typed configs to Megatron-Core's ``TransformerConfig``.

The one place that knows ``TransformerConfig``'s field names (they change between megatron-core
releases, DESIGN.md decision 1): a later upgrade edits this file.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_dllm.config import ConfigError, ModelConfig, ParallelConfig

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RECOMPUTE_MODULES = ("core_attn", "moe_act", "layernorm", "mlp", "moe", "shared_experts")


def transformer_engine_installed() -> bool:
    """Whether Transformer Engine can be imported here (never on our CPU machines)."""
    return importlib.util.find_spec("transformer_engine") is not None


@dataclass(frozen=True)
class Execution:
    """How the layers run: activation recompute (same losses and gradients), the layer implementation
    (Megatron-Core's local torch layers or Transformer Engine's) and FP8 (TE only)."""

    recompute_granularity: Optional[str] = None
    recompute_method: Optional[str] = None
    recompute_num_layers: Optional[int] = None
    recompute_modules: Optional[Tuple[str, ...]] = None
    transformer_impl: str = "local"
    fp8_format: Optional[str] = None
    fp8_recipe: str = "delayed"
    fp8_param_gather: bool = False

    @classmethod
    def from_training(cls, training, model: Optional[ModelConfig] = None) -> "Execution":
        """The execution options of a ``TrainingConfig`` (``--recompute-*``, ``--transformer-impl``, ``--fp8-*``).

        Without ``--transformer-impl``, a run that asks for TE's features (``--moe-grouped-gemm`` of
        ``model``, ``--fp8-format``) gets the TE path, as under Megatron-LM's default; otherwise local.
        """
        modules = training.recompute_modules
        impl = training.transformer_impl
        if impl is None:
            wants_te = training.fp8_format is not None or (model is not None and model.moe_grouped_gemm)
            impl = "transformer_engine" if wants_te else "local"
        return cls(training.recompute_granularity, training.recompute_method, training.recompute_num_layers,
                   tuple(modules) if modules else None, impl, training.fp8_format,
                   training.fp8_recipe, training.fp8_param_gather)

    @property
    def use_transformer_engine(self) -> bool:
        return self.transformer_impl == "transformer_engine"

    def check(self, model: ModelConfig, parallel: ParallelConfig, *, bf16: Optional[bool] = None,
              require_installed: bool = True) -> None:
        """One-line errors for the combinations Megatron-Core refuses, naming the flag to change.

        ``require_installed=False`` (``--dry-run`` on a login node) skips the check that TE imports here.
        """
        self._check_implementation(model, bf16, require_installed)
        g, method, n = self.recompute_granularity, self.recompute_method, self.recompute_num_layers
        if g is None:
            if method or n or self.recompute_modules:
                raise ConfigError("--recompute-method / --recompute-num-layers / --recompute-modules need "
                                  "--recompute-granularity full or selective")
            return
        if g == "full":
            if method is None or n is None:
                raise ConfigError("--recompute-granularity full needs --recompute-method uniform|block and "
                                  "--recompute-num-layers N (Megatron-LM: uniform 1 recomputes every layer)")
            per_stage = model.num_layers // parallel.pipeline_model_parallel_size
            if not 1 <= n <= per_stage:
                raise ConfigError(f"--recompute-num-layers {n}: give 1..{per_stage} (layers per pipeline stage)")
            if self.recompute_modules:
                raise ConfigError("--recompute-modules applies to --recompute-granularity selective only")
            return
        if method is not None or n is not None:
            raise ConfigError("--recompute-granularity selective takes --recompute-modules, not "
                              "--recompute-method / --recompute-num-layers")
        unknown = sorted(set(self.recompute_modules or ()) - set(RECOMPUTE_MODULES))
        if unknown:
            raise ConfigError(f"--recompute-modules {' '.join(unknown)}: not supported here; choose from "
                              f"{', '.join(RECOMPUTE_MODULES)}")
        modules = set(self.recompute_modules or ("core_attn",))
        if "moe_act" in modules and not model.moe_grouped_gemm:
            raise ConfigError("--recompute-modules moe_act needs --moe-grouped-gemm (Megatron-Core's rule)")
        if modules & {"moe", "moe_act", "shared_experts"} and not model.is_moe:
            raise ConfigError("--recompute-modules moe / moe_act / shared_experts need an MoE model "
                              "(--num-experts)")

    def _check_implementation(self, model: ModelConfig, bf16: Optional[bool], require_installed: bool) -> None:
        if self.use_transformer_engine:
            if require_installed and not transformer_engine_installed():
                raise ConfigError("--transformer-impl transformer_engine: Transformer Engine is not installed "
                                  "here (GPU only; see the Dockerfile): use --transformer-impl local")
        elif model.moe_grouped_gemm:
            raise ConfigError("--moe-grouped-gemm needs --transformer-impl transformer_engine (TE's grouped "
                              "GEMM experts); with local layers drop --moe-grouped-gemm")
        if self.fp8_format is None:
            if self.fp8_param_gather:
                raise ConfigError("--fp8-param-gather needs --fp8-format e4m3|hybrid")
            return
        if not self.use_transformer_engine:
            raise ConfigError(f"--fp8-format {self.fp8_format} needs --transformer-impl transformer_engine")
        if bf16 is False:
            raise ConfigError(f"--fp8-format {self.fp8_format} needs --bf16 (FP8 GEMMs inside bf16 training)")

    def transformer_config_kwargs(self) -> dict:
        out = {}
        if self.fp8_format is not None:
            out.update(fp8=self.fp8_format, fp8_recipe=self.fp8_recipe, fp8_param=self.fp8_param_gather)
        if self.recompute_granularity is not None:
            out.update(recompute_granularity=self.recompute_granularity, recompute_method=self.recompute_method,
                       recompute_num_layers=self.recompute_num_layers,
                       recompute_modules=list(self.recompute_modules) if self.recompute_modules else None)
        return out


def to_transformer_config(
    model: ModelConfig,
    parallel: ParallelConfig,
    *,
    dtype: str = "fp32",
    use_cpu_initialization: bool = True,
    perform_initialization: bool = True,
    execution: Execution = Execution(),
) -> TransformerConfig:
    """Build the Megatron-Core TransformerConfig for ``model`` under ``parallel``.

    ``dtype`` is the compute / parameter dtype: 'fp32' (CPU), 'bf16' (GPU mixed precision).
    ``execution``: recompute, layer implementation, FP8 (checked first, one-line errors).
    """
    execution.check(model, parallel, bf16=dtype == "bf16")
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    kwargs = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size or 4 * model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.query_groups,
        kv_channels=model.head_dim,
        normalization=model.normalization,
        layernorm_epsilon=model.norm_epsilon,
        qk_layernorm=model.qk_layernorm,
        gated_linear_unit=model.swiglu,
        activation_func=F.silu if model.swiglu else F.gelu,
        add_bias_linear=model.add_bias_linear,
        init_method_std=model.init_method_std,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        rotary_interleaved=False,
        apply_rope_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        expert_model_parallel_size=parallel.expert_model_parallel_size,
        expert_tensor_parallel_size=parallel.expert_tensor_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=_DTYPES[dtype],
        pipeline_dtype=_DTYPES[dtype],
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        use_cpu_initialization=use_cpu_initialization,
        perform_initialization=perform_initialization,
        # Our loss contract is (loss sum, token count); DDP reads this at construction to sum
        # (not average) gradients over data-parallel ranks before the per-token normalisation.
        calculate_per_token_loss=True,
        **execution.transformer_config_kwargs(),
    )
    if model.is_moe:
        kwargs.update(
            num_moe_experts=model.num_experts,
            moe_ffn_hidden_size=model.moe_ffn_hidden_size or kwargs["ffn_hidden_size"],
            moe_layer_freq=model.moe_layer_pattern(),
            moe_router_topk=model.moe_router_topk,
            moe_router_score_function=model.moe_router_score_function,
            moe_router_enable_expert_bias=model.moe_router_enable_expert_bias,
            moe_router_bias_update_rate=model.moe_router_bias_update_rate,
            moe_router_topk_scaling_factor=model.moe_router_topk_scaling_factor,
            moe_router_num_groups=model.moe_router_num_groups,
            moe_router_group_topk=model.moe_router_group_topk,
            moe_router_pre_softmax=model.moe_router_pre_softmax,
            moe_router_dtype=model.moe_router_dtype,
            moe_router_load_balancing_type=model.moe_router_load_balancing_type,
            moe_aux_loss_coeff=model.moe_aux_loss_coeff,
            moe_z_loss_coeff=model.moe_z_loss_coeff,
            moe_shared_expert_intermediate_size=model.moe_shared_expert_intermediate_size,
            moe_token_dispatcher_type=model.moe_token_dispatcher_type,
            moe_grouped_gemm=model.moe_grouped_gemm,
            moe_permute_fusion=False,
        )
    return TransformerConfig(**kwargs)
