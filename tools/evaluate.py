#!/usr/bin/env python
"""Masked-diffusion NELBO of a checkpoint on held-out data (stratified t, with a standard error).

Takes the pretraining flags (data, batch, --dllm-*) plus:
    --load DIR            the checkpoint (required)
    --eval-split NAME     valid (default) | test | train
    --eval-block-size N   block size of the evaluated layout (default: the sequence length = MDLM)
    --eval-iters N        global batches to average

    python tools/evaluate.py --load runs/demo/dllm --config examples/configs/quickstart_moe_cpu.yaml \
        --data-path 0.5 runs/demo/data/text_text_document 0.5 runs/demo/data/addition_text_document \
        --tokenizer-model runs/demo/data/tokenizer.model
Prints one JSON object: nelbo (nats/token), bits_per_token, standard_error, batches, block_size, layout
(always valid JSON: a non-finite number is written as null, with an error and exit 2). A checkpoint with
NaN / Inf weights is refused: one-line error, exit 2, no JSON. The prediction rule (token shift, label
shift, causal clean stream) is the one the checkpoint records; a --dllm-* flag that contradicts it is
refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _recorded_alignment(run, iteration):
    """The run's DiffusionConfig with the prediction rule the checkpoint records (token shift, label
    shift, causal clean stream in a BD layout); a flag that contradicts the checkpoint is refused."""
    import dataclasses

    from megatron_dllm.checkpoint.layout import read_meta, recorded_label_mode
    from megatron_dllm.config import ConfigError

    d, mode = run.diffusion, recorded_label_mode(read_meta(run.checkpoint.load, iteration))
    for flag, given, recorded in (("--dllm-token-shift", d.token_shift, mode["token_shift"]),
                                  ("--dllm-label-shift", d.label_shift, mode["label_shift"]),
                                  ("--dllm-clean-stream-causal", d.clean_stream_causal,
                                   mode["clean_stream"] == "causal")):
        if given and not recorded:
            raise ConfigError(f"{flag}: the checkpoint was trained without it (its predictions would be read "
                              "from the wrong rows): drop the flag")
    causal = mode["clean_stream"] == "causal" and d.objective == "bd"  # MDLM has no clean stream
    return dataclasses.replace(d, token_shift=mode["token_shift"], label_shift=mode["label_shift"],
                               clean_stream_causal=causal, ar_loss_weight=0.0)


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--eval-split", default="valid", choices=["train", "valid", "test"])
    own.add_argument("--eval-block-size", type=int, default=None)
    own.add_argument("-h", "--help", action="store_true")
    args, rest = own.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.help:
        print(__doc__)
        return 0
    from megatron_dllm.arguments import parse_args
    from megatron_dllm.config import ConfigError
    from megatron_dllm.data.errors import DataError

    try:
        run = parse_args(rest)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not run.checkpoint.load:
        print("error: --load DIR is required", file=sys.stderr)
        return 2
    from megatron_dllm.train.evaluation import eval_block_size

    try:
        block = eval_block_size(args.eval_block_size, run.model.seq_length)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import dataclasses

    run.training = dataclasses.replace(run.training, train_iters=1, train_tokens=None,
                                       eval_interval=1, lr_warmup_iters=0, lr_decay_iters=None)
    run.checkpoint = dataclasses.replace(run.checkpoint, no_load_optim=True, save=None, save_interval=None)
    if run.diffusion.objective != "ar" and block < run.model.seq_length:  # scored in the BD layout
        run.diffusion = dataclasses.replace(run.diffusion, objective="bd", block_schedule=f"stable:{block}@inf")
    elif run.diffusion.objective == "bd" and not run.diffusion.block_schedule:
        run.diffusion = dataclasses.replace(run.diffusion, objective="mdlm")
    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group, teardown

    device = setup_device(run.training.device)
    init_process_group(device)
    import torch.distributed as dist

    try:
        from megatron_dllm.checkpoint.state import latest_iteration
        from megatron_dllm.train.evaluation import evaluate_elbo, json_safe
        from megatron_dllm.train.nonfinite import weights_finite
        from megatron_dllm.train.preflight import check_run
        from megatron_dllm.train.setup import setup_run

        if latest_iteration(run.checkpoint.load) is None:
            raise ConfigError(f"--load {run.checkpoint.load}: no checkpoint found")
        run.diffusion = _recorded_alignment(run, latest_iteration(run.checkpoint.load))
        check_run(run, dist.get_world_size())
        setup = setup_run(run, device)
        index = {"train": 0, "valid": 1, "test": 2}[args.eval_split]
        dataset = setup.datasets[index]
        if dataset is None:
            raise ConfigError(f"the {args.eval_split} split is empty (--split {run.data.split})")
        if not weights_finite(setup.model):
            raise ConfigError(f"--load {run.checkpoint.load}: the checkpoint's weights hold NaN / Inf values: "
                              "evaluate a checkpoint from before the run diverged")
        result = evaluate_elbo(setup, setup.objective.at_block(block), block, dataset, run.training.eval_iters)
    except (ConfigError, DataError) as exc:
        if dist.get_rank() == 0:
            print(f"error: {exc}", file=sys.stderr)
        teardown()
        return 2
    safe, bad = json_safe(result)
    if dist.get_rank() == 0:
        safe["split"] = args.eval_split
        print(json.dumps(safe, allow_nan=False))
        if bad:
            print(f"error: {', '.join(bad)} not finite although the weights are (written as null): "
                  "check the data and --eval-block-size", file=sys.stderr)
    teardown()
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
