"""Checkpoint conversion: AR Megatron-Core GPT -> megatron_dllm dLLM, dLLM -> HF LLaDA2.0, and HF -> ours.

One job per module (the tools in ``tools/`` are thin CLIs over them):

    readers.py            open a source (torch_dist or legacy ``mp_rank_*``), read any box of a global tensor
    legacy_file.py        a Megatron-LM ``model_optim_rng.pt``, memory-mapped (safe load), read tensor by tensor
    keymap.py             legacy / torch_dist key spellings -> our sharded keys, TP split rules
    source_config.py      ModelConfig from dllm_meta.json or Megatron-LM's saved args
    mask_token.py         mask-token policy and new embedding / output rows
    targets.py            the tensors of our checkpoint, from Megatron-Core's sharded_state_dict (meta device)
    writer.py             stream the converted tensors into our checkpoint layout (+ dllm_meta.json)
    convert.py            prepare (all checks, nothing written) and run (atomic output)
    verify.py             converted model run causally == AR model (max |dlogits|, KL) + dLLM sanity run
    hf_keymap.py          our keys -> LLaDA2MoeModelLM names, qkv regrouping, config.json
    safetensors_stream.py safetensors shards written one tensor at a time
    hf_export.py          the HF export; hf_check.py: its logits vs Megatron's
    hf_import_config.py   ModelConfig from an HF config.json (LLaDA2MoE, BailingMoeV2): mapped / checked keys
    hf_lladamoe.py        LLaDA-MoE's config.json keys and tensor names (softmax router, split q/k/v)
    hf_source.py          HF safetensors as a Source: our keys assembled from HF tensors, read box by box
    hf_import.py          the HF import (tools/import_hf.py) over convert.run
    llada2_hf/            our transformers LLaDA2MoeModelLM (shipped with exports, trust_remote_code)
    merge.py              top-k checkpoint averaging over dcp_io (tools/merge_checkpoints.py)
    cli_flags.py          flags shared by the converter CLIs (target layout, output files)
    progress.py, errors.py, bench_synthetic.py (peak memory vs ``cp -r``)

Finding checkpoints, reading their pickles safely, the DCP reader / writer and the tools' output
folders belong to the checkpoint layer (``megatron_dllm/checkpoint/``).
"""
