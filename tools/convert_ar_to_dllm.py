#!/usr/bin/env python
"""Convert an AR Megatron-Core GPT checkpoint (dense or MoE) into a megatron_dllm checkpoint.

    python tools/convert_ar_to_dllm.py --load AR_DIR --save OUT_DIR \\
        [--target-tensor-model-parallel-size N --target-pipeline-model-parallel-size N \\
         --target-expert-model-parallel-size N] [--mask-token-id ID | --add-mask-token] \\
        [--mask-embedding-init mean|zero|copy:ID] [--tokenizer-model PATH] [--label-shift | --token-shift]

AR_DIR: a Megatron ``--save`` directory (torch_dist or legacy ``--ckpt-format torch``, any TP / PP /
EP, experts sequential or grouped) or one of its iteration directories. OUT_DIR must not exist; it
appears complete or not at all. The source is only read. Then resume the dLLM run with
``python -m megatron_dllm.pretrain --load OUT_DIR ...`` (iteration 0, fresh optimizer), and check it
with ``tools/verify_conversion.py --ar AR_DIR --dllm OUT_DIR``. Bad input: one ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_dllm.convert.cli_flags import add_output, add_target_layout  # noqa: E402  (no torch import)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="AR checkpoint directory (read only).")
    p.add_argument("--save", required=True, help="Output directory (must not exist).")
    add_target_layout(p)
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--mask-token-id", type=int, help="Use this id as [MASK].")
    mask.add_argument("--add-mask-token", action="store_true",
                      help="Add a new [MASK] token (a free padded row, else grow the vocabulary).")
    p.add_argument("--mask-embedding-init", default="mean",
                   help="Initialisation of new rows: mean (of the vocabulary rows), zero, or copy:ID.")
    p.add_argument("--tokenizer-model", help="Tokenizer whose mask token (<|mask|>, [MASK], <mask>) to use.")
    p.add_argument("--model-config", help="YAML of model flags, for checkpoints that record no config.")
    p.add_argument("--label-shift", action="store_true",
                   help="Record AR-aligned labels (logit i predicts token i+1, Dream style); default: LLaDA2.0's "
                        "same-position labels.")
    p.add_argument("--token-shift", action="store_true",
                   help="Record the token shift inside block diffusion (position i predicted from the output "
                        "at i-1; train with --dllm-token-shift): keeps the AR head's alignment, not served "
                        "by LLaDA2 samplers.")
    add_output(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    from megatron_dllm.convert.errors import ConversionError
    from megatron_dllm.checkpoint.output import early_path_error

    message = early_path_error(args.save, args.load)  # path errors first, before torch is imported
    if message:
        print(message, file=sys.stderr)
        return 2
    from megatron_dllm.convert.convert import ConvertRequest, prepare, resume_flags, run

    request = ConvertRequest(
        load=args.load, save=args.save,
        target_tensor_parallel=args.target_tensor_model_parallel_size,
        target_pipeline_parallel=args.target_pipeline_model_parallel_size,
        target_expert_parallel=args.target_expert_model_parallel_size,
        mask_token_id=args.mask_token_id, add_mask_token=args.add_mask_token,
        mask_embedding_init=args.mask_embedding_init, tokenizer_model=args.tokenizer_model,
        model_config=args.model_config, label_shift=args.label_shift,
        token_shift=args.token_shift, max_file_gb=args.max_file_gb)
    try:
        prepared = prepare(request)
    except (ConversionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    src = prepared.source
    print(f"source: {src.path} ({src.format}, iteration {src.iteration}, config from {src.config_origin})")
    print(f"mask token: id {prepared.plan.mask_token_id} ({prepared.plan.how}); vocabulary "
          f"{prepared.plan.source_vocab_size} -> {prepared.plan.vocab_size}, rows {prepared.plan.source_padded} "
          f"-> {prepared.plan.padded}")

    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group, teardown

    setup_device("cpu")
    init_process_group("cpu")
    try:
        summary = run(prepared, progress=not args.quiet)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        teardown()
    print(json.dumps(summary, indent=2))
    print(f"resume with: python -m megatron_dllm.pretrain {resume_flags(prepared)} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
