"""`make demo`: the quickstart, end to end on CPU, from nothing but this machine.

  1. data       standard-library docstrings + fixed-width addition problems (data/quickstart.py),
                a sentencepiece tokenizer with <|mask|>, indexed .bin/.idx datasets (a 50/50 blend);
                the addition problems as chat: SFT conversations and DPO pairs (data/addition_chat.py)
  2. AR         pretrain a small MoE as an autoregressive model (--dllm-objective ar)
  3. convert    the AR checkpoint -> a dLLM checkpoint (tools/convert_ar_to_dllm.py)
  4. NELBO      of the converted model (tools/evaluate.py, MDLM layout, fixed stratified t)
  5. dLLM       continue as a dLLM: block-size warm-up 1 -> 4, then the decoding block size 8
                (LLaDA2.0's alignment: same-position logits, served by SGLang / dInfer); and the
                best variant of the ablation that is not LLaDA2-compatible (token shift), the same way
  6. NELBO      of the trained dLLM, same data and t points as step 4
  7. post-training and baseline, on two cores (demo_post_training.py):
                SFT of the dLLM on the chat conversations, then DPO (VRPO) on the pairs, the SFT model
                being the reference; beside it the AR baseline: the AR checkpoint continued as AR,
                same iterations and learning rates as step 5. Then the held-out evaluations:
                addition accuracy of the dLLMs (block decoding) against the AR baseline (greedy) and
                the AR model at the conversion point (tools/eval_addition.py, with the decoding wall
                time of each, KV cache on all); chat accuracy before SFT, after SFT and after DPO
                (--format chat); the share of held-out pairs whose chosen reply has the higher ELBO
                before and after DPO, and the variance of the DPO loss estimate, naive over VRPO
                (tools/eval_preference.py)
  8. samples    tools/generate.py on a few prompts at several confidence thresholds: the samples,
                and tokens per forward against the threshold

Every stage is the command a user would run; each is printed before it runs and logged under
runs/demo/logs. The results go to runs/demo/summary.json. ``--quick`` runs the same stages on a
few iterations (for the test suite); ``--out`` moves the output directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "examples", "configs", "quickstart_moe_cpu.yaml")
PROMPTS = ("Return the", "This module provides", "The default value is")


@dataclass
class Plan:
    """Iteration counts and sizes of one demo run (the full one, or --quick)."""

    ar_iters: int = 900              # AR pretraining before the conversion
    dllm_iters: int = 300            # dLLM continued pretraining (the AR baseline: as many AR ones)
    dllm_lr: float = 1.5e-3          # 3/4 of the AR peak: the no-shift dLLM re-learns its output alignment
    warmup_share: float = 1 / 3      # share of the dLLM tokens at block sizes 1 and 4
    best_variant_flags: tuple = ("--dllm-token-shift",)   # best overall in bench/quality.py
    text_chars: int = 1_000_000
    addition_docs: int = 40_000
    num_test: int = 200
    eval_iters: int = 4              # global batches of the NELBO evaluations
    thresholds: tuple = (1.0, 0.9, 0.7, 0.5, 0.3, 0.1)   # the tokens-per-forward sweep (samples)
    decode_threshold: float = 0.5    # the setting of the task accuracy (bench/quality.py sweep)
    decode_block: int = 8            # the block size the curriculum decays to
    sample_tokens: int = 32
    # post-training (demo_post_training.py): SFT and DPO of the dLLM on the task written as chat
    sft_conversations: int = 5000    # training problems as SFT conversations
    dpo_pairs_data: int = 1000       # training problems as preference pairs
    sft_iters: int = 60              # SFT steps of sft_batch windows of 128 tokens (~5 conversations each)
    sft_lr: float = 5e-4
    sft_batch: int = 8
    dpo_iters: int = 20
    dpo_pairs: int = 16              # pairs per DPO step (one micro-batch)
    dpo_samples: int = 4             # --dpo-elbo-samples
    dpo_beta: float = 0.1
    dpo_lr: float = 2e-5             # higher rates lower the chosen replies' likelihood and the accuracy
    dpo_expert_bias_rate: float = 0.0  # --moe-router-bias-update-rate of DPO: the policy's expert bias stays
    #                                    the reference's (DPO rows moved it: chat accuracy 0.83 vs 0.86)
    dpo_seq: int = 32                # tokens per reply window (a conversation padded to 32)
    preference_samples: int = 8      # noise draws per ELBO of the preference evaluation
    variance_repeats: int = 48       # noise draws of the DPO loss variance ratio (24: 90% interval 1.7-135x)
    variance_pairs: int = 16

    @classmethod
    def quick(cls) -> "Plan":
        return cls(ar_iters=12, dllm_iters=15, text_chars=150_000, addition_docs=4000, num_test=20,
                   eval_iters=1, thresholds=(1.0, 0.1), sample_tokens=8, sft_conversations=400,
                   dpo_pairs_data=100, sft_iters=4, sft_batch=4, dpo_iters=2, dpo_pairs=4, dpo_samples=2,
                   preference_samples=2, variance_repeats=4, variance_pairs=4)

    def block_schedule(self, tokens_per_step: int) -> str:
        """Warm-up 1 -> 4 over the first ``warmup_share`` of the dLLM tokens, then the decoding
        block size for the rest. On this budget the full-sequence (L) stage and the decay of the
        LLaDA2.0 recipe cost accuracy (bench/quality.py, BENCHMARKS.md): block 1 re-learns the
        same-position output with an AR-like context, and the rest trains what decoding uses."""
        per_size = max(1, int(self.dllm_iters * self.warmup_share / 2)) * tokens_per_step
        return f"warmup:1->4@{per_size}; stable:{self.decode_block}@inf"

    def legacy_block_schedule(self, tokens_per_step: int) -> str:
        """The quickstart's schedule before the ablation (warm-up 1 -> 4 -> 16 -> 32, stable L,
        decay 32 -> 8), kept as a variant of bench/quality.py."""
        unit = max(1, self.dllm_iters // 15) * tokens_per_step
        return (f"warmup:1->4->16->32@{2 * unit}; stable:L@{3 * unit}; "
                f"decay:32->{self.decode_block}@{2 * unit}")


class StageError(RuntimeError):
    pass


class _NotRun(StageError):
    """A job that waited for a job that failed."""


class Runner:
    """Runs the stages as subprocesses, echoing and logging their output."""

    def __init__(self, out_dir: str, total: int):
        self.out_dir, self.total, self.index = out_dir, total, 0
        self.logs = os.path.join(out_dir, "logs")
        os.makedirs(self.logs, exist_ok=True)
        # one CPU thread per stage: float reductions, and so the trained models and every number of
        # the summary, are then the same on any machine (and equal bench/quality.py's runs)
        self.env = dict(os.environ, PYTHONWARNINGS="ignore::FutureWarning,ignore::DeprecationWarning",
                        TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1")

    def stage(self, title: str) -> None:
        self.index += 1
        print(f"\n[demo {self.index}/{self.total}] {title}", flush=True)

    def run(self, name: str, cmd: List[str], echo: bool = True, tag: str = "") -> List[str]:
        shown = " ".join(shlex.quote(_short(c)) for c in cmd)
        print(f"$ {shown}", flush=True)
        log_path = os.path.join(self.logs, f"{name}.log")
        lines = []
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1)
            for line in proc.stdout:
                log.write(line)
                lines.append(line.rstrip("\n"))
                if echo and _worth_showing(line):
                    print(f"  {tag}" + line.rstrip("\n"), flush=True)
            rc = proc.wait()
        if rc != 0:
            tail = "\n".join("  " + x for x in lines[-15:])
            raise StageError(f"stage {name} failed with exit code {rc}; full log: {log_path}\n{tail}")
        return lines

    def run_side_by_side(self, jobs: List[tuple]) -> List[List[str]]:
        """``run`` for independent (name, cmd) jobs at once, one per core (each stage is one thread,
        so the results are those of running them one after the other); output lines are tagged."""
        lines = self.run_lanes([[job] for job in jobs])
        return [lines[name] for name, _ in jobs]

    def run_lanes(self, lanes: List[List[tuple]]) -> Dict[str, List[str]]:
        """Lanes of jobs at once, one lane per core; a lane runs its jobs one after the other. A job
        is (name, cmd) or (name, cmd, echo, after): ``after`` names jobs (of any lane) it waits for.
        Returns every job's output lines by name; the first failure is raised once every lane has
        stopped (a failed job stops its lane and every job that waits for it)."""
        import threading
        from concurrent.futures import ThreadPoolExecutor

        def spelled(job):
            name, cmd, *rest = job
            return name, cmd, rest[0] if rest else True, tuple(rest[1]) if len(rest) > 1 else ()

        jobs = [[spelled(job) for job in lane] for lane in lanes]
        done = {job[0]: threading.Event() for lane in jobs for job in lane}
        results: Dict[str, List[str]] = {}

        def lane(queue):
            for name, cmd, echo, after in queue:
                for other in after:
                    done[other].wait()
                    if other not in results:
                        raise _NotRun(f"stage {name} not run: {other} failed")
                try:
                    results[name] = self.run(name, cmd, echo, f"[{name}] ")
                finally:
                    done[name].set()

        def release(queue):  # a stopped lane releases every job it would have run
            for name, *_ in queue:
                done[name].set()

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [pool.submit(lane, queue) for queue in jobs]
            for future, queue in zip(futures, jobs):
                future.add_done_callback(lambda _f, q=queue: release(q))
            errors = [f.exception() for f in futures]
        errors = [e for e in errors if e is not None]
        if errors:  # a failure, rather than a job it stopped
            raise min(errors, key=lambda e: isinstance(e, _NotRun))
        return results


def _short(arg: str) -> str:
    """Paths inside the checkout relative to it (the commands run there), others as given."""
    if os.path.isabs(arg) and (arg == ROOT or arg.startswith(ROOT + os.sep)):
        return os.path.relpath(arg, ROOT)
    return arg


def _worth_showing(line: str) -> bool:
    noise = ("Cannot save the BlendedDataset", "Warning", "warnings.warn", "checkpoint.load_state_dict",
             "return func(")
    return bool(line.strip()) and not any(n in line for n in noise)


def _json_lines(lines: List[str]) -> List[dict]:
    return [json.loads(x) for x in lines if x.startswith("{")]


def _records(path: str, kind: str) -> List[dict]:
    with open(path) as handle:
        return [r for r in map(json.loads, filter(str.strip, handle)) if r["kind"] == kind]


def _phases(schedule_spec: str, seq_len: int, tokens_per_step: int, iters: int) -> List[dict]:
    """(phase, block size, iterations) of the dLLM run, from the schedule the loop follows."""
    from megatron_dllm.diffusion.curriculum import BlockSchedule

    schedule = BlockSchedule.parse(schedule_spec, seq_len)
    phases: List[dict] = []
    for i in range(iters):
        key = (schedule.phase_at(i * tokens_per_step), schedule.block_size_at(i * tokens_per_step))
        if not phases or (phases[-1]["phase"], phases[-1]["block_size"]) != key:
            phases.append({"phase": key[0], "block_size": key[1], "iterations": 0})
        phases[-1]["iterations"] += 1
    return phases


def _mean_loss(records: List[dict], upto: int, last: int = 3) -> float:
    chosen = [r["loss"] for r in records if r["iteration"] <= upto][-last:]
    return round(sum(chosen) / len(chosen), 4)


def run_demo(out_dir: str, plan: Plan) -> dict:
    import yaml

    from megatron_dllm.data.addition import AdditionTask
    from megatron_dllm.data.addition_chat import build_addition_chat_data
    from megatron_dllm.data.quickstart import build_quickstart_data
    from megatron_dllm.demo_post_training import post_training

    with open(CONFIG) as handle:
        base = yaml.safe_load(handle)
    seq_len, batch = int(base["seq-length"]), int(base["global-batch-size"])
    tokens_per_step = seq_len * batch
    py = sys.executable
    tool = lambda name: os.path.join(ROOT, "tools", name)  # noqa: E731
    runner = Runner(out_dir, total=8)
    start = time.time()

    runner.stage("data: corpus, tokenizer, indexed datasets; the chat data of post-training")
    data = build_quickstart_data(os.path.join(out_dir, "data"), text_chars=plan.text_chars,
                                 addition_docs=plan.addition_docs, num_test=plan.num_test,
                                 log=lambda msg: print("  " + msg, flush=True))
    tok = data.tokenizer_model
    chat = build_addition_chat_data(os.path.join(out_dir, "chat"), tok, AdditionTask(**data.task),
                                    sft_count=plan.sft_conversations, dpo_count=plan.dpo_pairs_data)
    print(f"  chat data: {chat.sft_conversations} SFT conversations ({chat.sft_prefix}), {chat.dpo_pairs} "
          f"preference pairs ({chat.dpo_prefix}), the held-out problems as chat ({chat.dpo_test_prefix})",
          flush=True)
    common = ["--config", CONFIG, "--data-path", *data.data_path, "--tokenizer-model", tok,
              "--data-cache-path", os.path.join(out_dir, "data", "cache")]
    task_flags = ["--max-digits", str(data.task["max_digits"]), "--num-test", str(data.task["num_test"]),
                  "--task-seed", str(data.task["seed"])]

    ar_dir, dllm_init, dllm_dir, best_dir, base_dir = (os.path.join(out_dir, n) for n in
                                                       ("ar", "dllm_init", "dllm", "dllm_best", "ar_baseline"))
    baseline_iters = plan.ar_iters + plan.dllm_iters
    # both continuations (dLLM and AR baseline) use the same iterations and learning rates
    continued = ["--train-iters", str(plan.dllm_iters), "--lr", str(plan.dllm_lr),
                 "--min-lr", str(plan.dllm_lr / 10), "--lr-warmup-iters", str(max(1, plan.dllm_iters // 30)),
                 "--save-interval", str(plan.dllm_iters)]
    runner.stage(f"AR pretraining, {plan.ar_iters} iterations")
    runner.run("ar_pretrain", [py, "-m", "megatron_dllm.pretrain", *common, "--dllm-objective", "ar",
                               "--train-iters", str(plan.ar_iters), "--save", ar_dir,
                               "--lr-warmup-iters", str(min(20, max(1, plan.ar_iters // 10))),
                               "--save-interval", str(plan.ar_iters), "--eval-interval", str(plan.ar_iters),
                               "--tensorboard-dir", os.path.join(out_dir, "tb", "ar")])

    runner.stage(f"conversion of the AR checkpoint at iteration {plan.ar_iters} to a dLLM checkpoint")
    runner.run("convert", [py, tool("convert_ar_to_dllm.py"), "--load",
                           os.path.join(ar_dir, f"iter_{plan.ar_iters:07d}"), "--save", dllm_init,
                           "--tokenizer-model", tok, "--quiet"])

    evaluate = [py, tool("evaluate.py"), *common, "--eval-iters", str(plan.eval_iters)]
    runner.stage("validation NELBO right after conversion (MDLM layout)")
    nelbo_init = _json_lines(runner.run("nelbo_converted", [*evaluate, "--load", dllm_init]))[-1]

    schedule = plan.block_schedule(tokens_per_step)
    runner.stage(f"dLLM continued pretraining, {plan.dllm_iters} iterations: {schedule}; LLaDA2.0's "
                 f"alignment, then the best other variant ({' '.join(plan.best_variant_flags)})")
    dllm_cmd = [py, "-m", "megatron_dllm.pretrain", *common, "--dllm-objective", "bd",
                  "--dllm-block-schedule", schedule, *continued, "--load", dllm_init,
                  "--eval-interval", str(max(1, plan.dllm_iters // 3))]
    runner.run_side_by_side([
        ("dllm_pretrain", [*dllm_cmd, "--save", dllm_dir, "--tensorboard-dir", os.path.join(out_dir, "tb", "dllm")]),
        ("dllm_best_pretrain", [*dllm_cmd, *plan.best_variant_flags, "--save", best_dir,
                                "--tensorboard-dir", os.path.join(out_dir, "tb", "dllm_best")])])

    runner.stage("validation NELBO after dLLM training (same data and t points)")
    nelbo_final = _json_lines(runner.run("nelbo_trained", [*evaluate, "--load", dllm_dir]))[-1]

    post = post_training(plan, py, tool, out_dir, tok, chat, dllm_dir, task_flags, CONFIG)
    runner.stage(f"post-training of the dLLM on chat data (SFT {plan.sft_iters} iterations, then DPO "
                 f"{plan.dpo_iters}), beside the AR baseline (the AR checkpoint continued as AR for "
                 f"{plan.dllm_iters} iterations, same learning rates); then the held-out evaluations")
    addition = [py, tool("eval_addition.py"), "--tokenizer-model", tok, *task_flags, "--examples", "3"]
    diffusion = ["--block-length", str(plan.decode_block), "--threshold", str(plan.decode_threshold),
                 "--minimal-topk", "0"]  # the threshold alone sets the parallelism
    lines = runner.run_lanes([
        [*post.lanes[0],
         ("task_dllm", [*addition, "--load", dllm_dir, *diffusion], False),
         ("task_dllm_best", [*addition, "--load", best_dir, *diffusion], False),
         *post.lanes[1]],
        [("ar_baseline", [py, "-m", "megatron_dllm.pretrain", *common, "--dllm-objective", "ar",
                          *continued, "--load", ar_dir, "--finetune", "--save", base_dir,
                          "--eval-interval", str(plan.dllm_iters),
                          "--tensorboard-dir", os.path.join(out_dir, "tb", "ar_baseline")]),
         ("task_ar_baseline", [*addition, "--load", base_dir], False),
         ("task_ar_converted", [*addition, "--load", ar_dir], False),
         *post.lanes[2]]])
    dllm_task, best_task, ar_task, converted_task = (_json_lines(lines[name])[-1] for name in (
        "task_dllm", "task_dllm_best", "task_ar_baseline", "task_ar_converted"))
    for name, r in (("dLLM", dllm_task), ("dLLM, token shift", best_task), ("AR baseline", ar_task),
                    ("AR at the conversion", converted_task)):
        shown = ", ".join(f"{e['prompt']}{e['completion']}" for e in r["examples"])
        print(f"  addition, {name}: accuracy {r['accuracy']:.3f} ({r['correct']}/{r['total']}), "
              f"{r['tokens_per_forward']:.2f} tokens per forward, decoding {r['decode_seconds']:.1f} s, "
              f"e.g. {shown}", flush=True)
    post_summary = post.summary(lines)

    runner.stage("samples from the dLLM, and tokens per forward against the confidence threshold")
    flags = [f for p in PROMPTS for f in ("--prompt", p)]
    generated = _json_lines(runner.run("generate", [
        py, tool("generate.py"), "--load", dllm_dir, "--tokenizer-model", tok, *flags, "--json",
        "--gen-length", str(plan.sample_tokens), "--block-length", str(plan.decode_block),
        "--threshold", *map(str, plan.thresholds), "--no-eos-early-stop", "--device", "cpu"], echo=False))
    sweep = []
    for threshold in plan.thresholds:
        rows = [g for g in generated if g["threshold"] == threshold]
        # decoded slots (EOS and what follows it included) over decoding forwards, all prompts
        tokens = sum(round(g["tokens_per_forward"] * g["num_forward_passes"]) for g in rows)
        forwards = sum(g["num_forward_passes"] for g in rows)
        sweep.append({"threshold": threshold, "tokens_per_forward": round(tokens / max(forwards, 1), 3),
                      "tokens": tokens, "forward_passes": forwards})
        print(f"  threshold {threshold}: {sweep[-1]['tokens_per_forward']:.2f} tokens per forward", flush=True)
    samples = [g for g in generated if g["threshold"] == plan.decode_threshold] or \
        [g for g in generated if g["threshold"] == plan.thresholds[0]]
    for s in samples:
        print(f"  {s['prompt']!r} -> {s['text']!r} ({s['tokens_per_forward']:.2f} tokens per forward)",
              flush=True)

    ar_train = _records(os.path.join(ar_dir, "metrics.jsonl"), "train")
    dllm_train = _records(os.path.join(dllm_dir, "metrics.jsonl"), "train")
    return {
        "config": os.path.relpath(CONFIG, ROOT),
        "tokenizer_model": tok,
        "data_path": data.data_path,
        "data_tokens": data.stats,
        "ar_checkpoint": os.path.join(ar_dir, f"iter_{plan.ar_iters:07d}"),
        "ar_iterations": plan.ar_iters,
        "ar_final_loss": _mean_loss(ar_train, plan.ar_iters),
        "dllm_checkpoint": dllm_dir,
        "dllm_phases": _phases(schedule, seq_len, tokens_per_step, plan.dllm_iters),
        "dllm_block_schedule": schedule,
        "dllm_final_loss": _mean_loss(dllm_train, plan.dllm_iters),
        "dllm_valid_nelbo_after_conversion": nelbo_init["nelbo"],
        "dllm_final_valid_nelbo": nelbo_final["nelbo"],
        "dllm_valid_nelbo_standard_error": nelbo_final["standard_error"],
        "synthetic_task": {"task": "addition", **data.task,
                           "format": "fixed width, e.g. '47+08=055'"},
        "synthetic_task_accuracy": {
            "dllm": dllm_task["accuracy"], "dllm_threshold": plan.decode_threshold,
            "dllm_block_length": plan.decode_block, "dllm_step_cap": "off (--minimal-topk 0)", "dllm_tokens_per_forward": dllm_task["tokens_per_forward"],
            "dllm_decode_seconds": dllm_task["decode_seconds"], "ar_decode_seconds": ar_task["decode_seconds"],
            "dllm_model_calls_per_problem": dllm_task["model_calls_per_problem"],
            "ar_model_calls_per_problem": ar_task["model_calls_per_problem"],
            "ar_baseline": ar_task["accuracy"], "ar_baseline_checkpoint": base_dir,
            "ar_at_conversion": converted_task["accuracy"],
            "ar_baseline_iterations": baseline_iters, "training_tokens_each": baseline_iters * tokens_per_step,
            "problems": dllm_task["total"]},
        "best_variant": {
            "flags": list(plan.best_variant_flags), "llada2_compatible": False, "checkpoint": best_dir,
            "accuracy": best_task["accuracy"], "tokens_per_forward": best_task["tokens_per_forward"],
            "decode_seconds": best_task["decode_seconds"], "threshold": plan.decode_threshold},
        **post_summary,
        "tokens_per_forward_by_threshold": sweep,
        "task_examples": {"dllm": dllm_task["examples"], "ar_baseline": ar_task["examples"]},
        "samples": [{"prompt": s["prompt"], "text": s["text"], "tokens_per_forward": s["tokens_per_forward"]}
                    for s in samples],
        "tensorboard_dir": os.path.join(out_dir, "tb"),
        "logs_dir": runner.logs,
        "seconds": round(time.time() - start, 1),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "demo"), help="output directory "
                        "(default: runs/demo; replaced)")
    parser.add_argument("--quick", action="store_true", help="a few iterations per stage (smoke test)")
    args = parser.parse_args(argv)
    out_dir = os.path.abspath(args.out)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    plan = Plan.quick() if args.quick else Plan()
    print(f"megatron_dllm demo: AR pretraining -> conversion -> dLLM curriculum -> SFT -> DPO -> evaluation "
          f"on CPU; "
          f"outputs in {out_dir}", flush=True)
    try:
        summary = run_demo(out_dir, plan)
    except StageError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    path = os.path.join(out_dir, "summary.json")
    with open(path, "w") as handle:
        json.dump(summary, handle, indent=2)
    acc = summary["synthetic_task_accuracy"]
    print(f"\ndemo done in {summary['seconds']:.0f} s. Summary: {path}\n"
          f"  AR loss at conversion {summary['ar_final_loss']}; dLLM validation NELBO "
          f"{summary['dllm_valid_nelbo_after_conversion']:.3f} after conversion -> "
          f"{summary['dllm_final_valid_nelbo']:.3f} after training\n"
          f"  addition (held out): dLLM {acc['dllm']:.3f} at {acc['dllm_tokens_per_forward']:.2f} tokens per "
          f"forward, decoding {acc['ar_decode_seconds'] / max(acc['dllm_decode_seconds'], 1e-9):.2f}x as fast "
          f"as AR; AR baseline {acc['ar_baseline']:.3f}; token shift {summary['best_variant']['accuracy']:.3f}\n"
          f"  chat (held out): {summary['sft']['accuracy_before']:.3f} before SFT -> "
          f"{summary['sft']['accuracy_after']:.3f} after SFT -> {summary['dpo']['accuracy_after']:.3f} after DPO; "
          f"chosen reply preferred {summary['dpo']['preference_accuracy_before']:.3f} -> "
          f"{summary['dpo']['preference_accuracy_after']:.3f}; DPO loss variance naive / VRPO "
          f"{summary['dpo']['vrpo_variance_ratio']:.1f}x\n"
          f"Look at the curves: .venv/bin/tensorboard --logdir {summary['tensorboard_dir']}\n"
          f"Generate: .venv/bin/python tools/generate.py --load {summary['dllm_checkpoint']} "
          f"--tokenizer-model {summary['tokenizer_model']} --prompt 'Return the'", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
