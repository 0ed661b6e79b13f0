"""Check an HF export: our transformers ``LLaDA2MoeModelLM`` gives the Megatron model's logits.

Both models run on one rank, in fp32, on the same random tokens (some of them [MASK]) under three
masks: bidirectional (MDLM), block-causal (block-diffusion decoding) and causal. Reported: max
|logits difference| per mask over the whole padded vocabulary.
"""

from __future__ import annotations

from typing import Optional

import torch

from megatron_dllm.config import ParallelConfig
from megatron_dllm.checkpoint.dcp_io import DcpReader
from megatron_dllm.checkpoint.layout import recorded_mask_token_id
from megatron_dllm.convert.readers import read_dllm_checkpoint


def load_hf_model(hf_dir: str):
    """``AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True)`` in fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True, dtype=torch.float32)
    except TypeError:  # transformers 4.x
        model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True, torch_dtype=torch.float32)
    return model.eval()


@torch.no_grad()
def compare_hf(dllm_path: str, hf_dir: str, *, batch: int = 2, seq_length: Optional[int] = None,
               seed: int = 0) -> dict:
    """Max |logits_HF - logits_Megatron| under each mask. Needs torch.distributed (one rank)."""
    from megatron_dllm.convert.verify import _build, load_dist
    from megatron_dllm.platform.distributed import init_model_parallel

    directory, meta, cfg = read_dllm_checkpoint(dllm_path)
    rows = DcpReader(directory).tensors["embedding.word_embeddings.weight"].shape[0]
    init_model_parallel(ParallelConfig(), seed=seed)
    megatron = _build(cfg, rows, causal=False)
    load_dist(megatron, directory)
    hf = load_hf_model(hf_dir)
    seq = seq_length or min(cfg.seq_length, 32)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen)
    mask_id = recorded_mask_token_id(meta)
    if mask_id is not None:
        tokens = torch.where(torch.rand(batch, seq, generator=gen) < 0.3, torch.full_like(tokens, mask_id), tokens)
    positions = torch.arange(seq)[None].expand(batch, seq)
    block = max(1, seq // 4)
    blocks = torch.arange(seq) // block
    masks = {
        "bidirectional": torch.ones(seq, seq, dtype=torch.bool),
        "block_causal": blocks[:, None] >= blocks[None, :],
        "causal": torch.ones(seq, seq, dtype=torch.bool).tril(),
    }
    report = {}
    for name, mask in masks.items():
        ref = megatron(tokens, positions, mask).float()
        hf_mask = None if name == "bidirectional" else mask[None, None].expand(batch, 1, seq, seq)
        got = hf(input_ids=tokens, attention_mask=hf_mask, position_ids=positions).logits.float()
        report[name] = (got - ref).abs().max().item()
    report["max_abs_dlogits"] = max(report[name] for name in masks)
    report["logit_scale"] = ref.abs().max().item()
    report["tokens"] = [batch, seq]
    return report
