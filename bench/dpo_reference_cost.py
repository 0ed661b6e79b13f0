"""What the frozen reference costs a DPO step: reference ELBOs in the same step vs looked up (a cache).

A DPO run (``--dllm-objective dpo``) runs the reference model's forward on every micro-batch
(``objectives/dpo.py``). A cache of reference ELBOs per pair would skip that forward but needs a pass
over the pairs first (the same forwards, once per pair) and fixes each pair's noise for the whole run
(VRPO's cancellation needs the policy to see the cached noise: ``diffusion/vrpo.py``). This measures
the step time both ways on one CPU rank, through the normal run set-up (a tiny MoE, mock pairs,
``--load`` / ``--ref-load`` a 1-step MDLM checkpoint written first):

    same_step   DpoObjective as trained: reference forward without grad, then the policy fwd + bwd;
    cached      the reference ELBOs of each micro-batch computed once (first round) and looked up after.

Rounds alternate the two; the median time per step is reported, and ``reference_share`` = 1 -
cached / same_step, the part of a step a cache would save (minus its own pre-pass).

    python bench/dpo_reference_cost.py                  # ~1 min on one core
    python bench/dpo_reference_cost.py --samples 8 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

FLAGS = ["--preset", "tiny-moe", "--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size", "4",
         "--device", "cpu", "--mock-data", "--log-interval", "1000", "--seed", "1234"]


def _reference_checkpoint(root: str) -> str:
    path = os.path.join(root, "ref")
    subprocess.run([sys.executable, "-m", "megatron_dllm.pretrain", *FLAGS, "--dllm-objective", "mdlm",
                    "--train-iters", "1", "--save", path], check=True, capture_output=True)
    return path


def measure(reference: str, samples: int, rounds: int, steps: int) -> dict:
    """Median seconds per DPO step with the reference in the step and with its ELBOs looked up."""
    warnings.filterwarnings("ignore")
    import torch

    from megatron_dllm.arguments import parse_args
    from megatron_dllm.objectives.dpo import DpoObjective
    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group
    from megatron_dllm.train.loop import run_step
    from megatron_dllm.train.preflight import check_run
    from megatron_dllm.train.setup import setup_run

    torch.set_num_threads(1)
    setup_device("cpu")
    init_process_group("cpu")
    run = parse_args(FLAGS + ["--dllm-objective", "dpo", "--ref-load", reference, "--load", reference,
                              "--finetune", "--dpo-elbo-samples", str(samples), "--train-iters", "1000"])
    check_run(run, 1)
    setup = setup_run(run, "cpu")
    objective, block, _ = setup.objective.phase_at(0)
    in_step = DpoObjective.reference_elbos
    cache = {}

    def looked_up(self, inputs):  # one micro-batch's reference ELBOs, computed once
        key = (tuple(inputs.tokens.shape), int(inputs.tokens.sum()))
        if key not in cache:
            cache[key] = in_step(self, inputs)
        return cache[key]

    def timed(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            run_step(setup, objective, block)  # the same global batch each time: the cache hits
        return (time.perf_counter() - t0) / n

    timed(2)  # warm-up: optimizer state, mask caches
    times = {"same_step": [], "cached": []}
    for _ in range(rounds):
        times["same_step"].append(timed(steps))
        DpoObjective.reference_elbos = looked_up
        try:
            timed(1)  # fills the cache
            times["cached"].append(timed(steps))
        finally:
            DpoObjective.reference_elbos = in_step
    same, cached = (statistics.median(times[k]) for k in ("same_step", "cached"))
    return {"model": "tiny-moe", "seq_length": 64, "pairs_per_micro_batch": 2, "elbo_samples": samples,
            "rows_per_micro_batch": 2 * 2 * samples, "s_per_step": {"same_step": same, "cached": cached},
            "reference_share": 1.0 - cached / same, "rounds": rounds, "steps_per_round": steps}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=4, help="--dpo-elbo-samples n")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="steps timed per round and mode")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        result = measure(_reference_checkpoint(root), args.samples, args.rounds, args.steps)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
