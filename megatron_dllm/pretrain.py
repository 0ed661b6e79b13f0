"""Entry point: ``torchrun --nproc-per-node N -m megatron_dllm.pretrain [flags]`` (or one plain process).

Flags: ``python -m megatron_dllm.pretrain --help``. Bad input exits 2 with a one-line error before any
compute; SIGTERM with ``--exit-signal-handler`` saves and exits 0. ``--dry-run`` validates the flags for
``WORLD_SIZE`` ranks, builds the model on the meta device, prints the resolved config, the layout and
the memory plan, and exits 0 (train/dry_run.py).
"""

from __future__ import annotations

import sys
import warnings


def main(argv=None) -> int:
    warnings.filterwarnings("ignore", category=UserWarning)
    from megatron_dllm.arguments import parse_args
    from megatron_dllm.config import ConfigError
    from megatron_dllm.data.errors import DataError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        run = parse_args(argv)
        if "--dry-run" in argv:
            from megatron_dllm.train.dry_run import dry_run

            return dry_run(run)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group, teardown
    from megatron_dllm.train.preflight import check_run, resolve_vocab_size

    try:
        device = setup_device(run.training.device)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    init_process_group(device, timeout_s=60 * run.training.distributed_timeout_minutes)
    import torch.distributed as dist

    rank0 = dist.get_rank() == 0
    if rank0:
        for line in run.accepted_flags:
            print(f"accepted, no effect here: {line}", flush=True)
        for line in run.notes:
            print(f"note: {line}", flush=True)
    try:
        check_run(run, dist.get_world_size())
        note = resolve_vocab_size(run)
        if note and rank0:
            print(f"note: {note}", flush=True)
        from megatron_dllm.train.loop import train
        from megatron_dllm.train.setup import setup_run

        setup = setup_run(run, device)
    except (ConfigError, DataError) as exc:
        if rank0:
            print(f"error: {exc}", file=sys.stderr)
        teardown()
        return 2
    try:
        return train(setup)
    finally:
        setup.logger.close()
        teardown()


if __name__ == "__main__":
    sys.exit(main())
