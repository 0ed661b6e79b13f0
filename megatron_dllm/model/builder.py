"""Build the dLLM (or AR) Megatron-Core model for this rank's place in the parallel layout.

Requires ``megatron.core.parallel_state`` to be initialised (``platform.distributed``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import List, Optional

import torch
from megatron.core import parallel_state

from megatron_dllm.config import ModelConfig, ParallelConfig, validate
from megatron_dllm.model.gpt_model import DiffusionGPTModel
from megatron_dllm.model.init import reinitialize
from megatron_dllm.model.specs import dllm_block_spec
from megatron_dllm.model.transformer_config import Execution, to_transformer_config


def build_model(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    *,
    causal: bool = False,
    attention_backend: str = "auto",
    dtype: str = "fp32",
    vp_stage: Optional[int] = None,
    meta: bool = False,
    init_seed: Optional[int] = None,
    execution: Execution = Execution(),
) -> DiffusionGPTModel:
    """One model chunk for this rank (the pipeline stage / virtual stage ``vp_stage``).

    ``causal=True`` builds the same architecture as a causal AR LM (the baseline and the source of
    conversions); otherwise attention takes explicit dLLM masks. ``meta=True`` allocates nothing
    (parameter counting, memory planning). ``init_seed`` re-initialises the weights as a function of
    (seed, parameter name) only, so every parallel layout starts from the same model
    (``model/init.py``); otherwise Megatron-Core's layout-dependent initialisation is kept.
    ``execution``: recompute, layer implementation and FP8 (``Execution``).
    """
    validate(model_cfg, parallel_cfg, context_parallel=True)
    if meta and model_cfg.moe_grouped_gemm and not execution.use_transformer_engine:
        # Counting / planning only: grouped-GEMM experts hold the parameters of one linear pair per
        # expert, which the local layers build without TE.
        model_cfg = dataclasses.replace(model_cfg, moe_grouped_gemm=False)
    tconfig = to_transformer_config(
        model_cfg, parallel_cfg, dtype=dtype, perform_initialization=not meta, execution=execution
    )
    spec = dllm_block_spec(
        tconfig, causal=causal, attention_backend=attention_backend, vp_stage=vp_stage,
        use_transformer_engine=execution.use_transformer_engine,
    )
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp != parallel_cfg.tensor_model_parallel_size:
        raise ValueError(
            f"parallel_state has TP={tp} but the config asks for "
            f"{parallel_cfg.tensor_model_parallel_size}: initialise model parallelism from the config"
        )
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = DiffusionGPTModel(
            config=tconfig,
            transformer_layer_spec=spec,
            vocab_size=model_cfg.padded_vocab_size(tp),
            max_sequence_length=model_cfg.max_position_embeddings or model_cfg.seq_length,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            parallel_output=True,
            share_embeddings_and_output_weights=not model_cfg.untie_embeddings_and_output_weights,
            position_embedding_type="rope",
            rotary_percent=model_cfg.rotary_percent,
            rotary_base=model_cfg.rotary_base,
            vp_stage=vp_stage,
        )
    if init_seed is not None and not meta:
        reinitialize(model, init_seed, model_cfg.init_method_std, model_cfg.num_layers)
    return model


def build_model_chunks(model_cfg: ModelConfig, parallel_cfg: ParallelConfig, **kwargs) -> List[DiffusionGPTModel]:
    """All model chunks of this rank: one, or one per virtual pipeline stage."""
    vpp = parallel_cfg.virtual_pipeline_model_parallel_size
    if vpp is None:
        return [build_model(model_cfg, parallel_cfg, **kwargs)]
    return [build_model(model_cfg, parallel_cfg, vp_stage=i, **kwargs) for i in range(vpp)]
