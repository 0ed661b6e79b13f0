"""AR -> dLLM quality ablation: every variant of bench/quality_variants.py from one converted checkpoint.

    python bench/quality.py                          # the whole table, one seed (bench/results/quality.json,
                                                     # two PNGs beside it, a section of BENCHMARKS.md)
    python bench/quality.py --seeds 1234,4321        # each variant per seed: means and per-seed values
    python bench/quality.py --variants llada2,warmup_none
    python bench/quality.py --quick --out /tmp/q     # tiny iteration counts, 3 variants (the test suite)

Stages, as the quickstart (megatron_dllm/demo.py) runs them: the quickstart data, AR pretraining
(examples/configs/quickstart_moe_cpu.yaml) and its conversion are built once under --out (default
runs/quality) and reused by later runs while their settings are unchanged (JSON stamps in
--out/stamps; --rebuild ignores them, e.g. after a change of the training code). Then per seed: the
AR baseline (the AR checkpoint continued as AR, same iterations and learning rates as the default
variant), and per variant: dLLM training (--log-interval 1, every iteration's loss recorded), the
validation NELBO (tools/evaluate.py, BD layout at the decoding block size, same data and t points
for all), and held-out addition over a threshold sweep (tools/eval_addition.py): accuracy, tokens
per forward, decode seconds against AR greedy decoding (KV cache on both) of the AR baseline on the
same problems.

With --jobs N the trainings (and NELBO evaluations) of N runs go side by side, each process with
CPU threads / N threads; the held-out addition of every run, the AR baseline's included, is scored
afterwards one run at a time, so the decode seconds of all runs are measured alike. The sweep uses
the pure threshold rule (--minimal-topk 0: no step cap), so the threshold alone sets the parallelism.

A variant whose flags this checkout does not have, or whose stage fails, is recorded as failed with
the reason; the others still run. --quick writes its results under --out/results and leaves
BENCHMARKS.md alone unless --results / --markdown say otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import common  # noqa: E402
import quality_metrics as qm  # noqa: E402
import quality_report  # noqa: E402
import quality_variants as qv  # noqa: E402
from megatron_dllm.demo import CONFIG, Plan, Runner, StageError, _json_lines, _short  # noqa: E402

ROOT = common.ROOT
TOOL = lambda name: os.path.join(ROOT, "tools", name)  # noqa: E731


@dataclass
class QualityPlan:
    """Sizes of one ablation run: the quickstart's (demo.Plan), or its --quick ones."""

    ar_iters: int
    dllm_iters: int
    text_chars: int
    addition_docs: int
    num_test: int
    eval_iters: int
    thresholds: tuple
    decode_block: int
    loss_window: int = 20            # iterations after the conversion of the peak-loss claim

    @classmethod
    def from_demo(cls, quick: bool, dllm_iters: Optional[int] = None) -> "QualityPlan":
        demo = Plan.quick() if quick else Plan()
        # the sweep must hold 0.9 (the reference setting); the demo's quick sweep does not. --quick
        # trains 6 dLLM iterations: its cost is mostly process start-up, 14 processes of ~6 CPU s each
        thresholds = (1.0, 0.9, 0.1) if quick else tuple(demo.thresholds)
        dllm_iters = dllm_iters or (6 if quick else demo.dllm_iters)
        return cls(ar_iters=demo.ar_iters, dllm_iters=dllm_iters, text_chars=demo.text_chars,
                   addition_docs=demo.addition_docs, num_test=demo.num_test, eval_iters=demo.eval_iters,
                   thresholds=thresholds, decode_block=demo.decode_block)


class ProgressRunner(Runner):
    """demo.Runner that numbers stages as the ablation's, shows the elapsed time, and records every
    command and its seconds."""

    def __init__(self, out_dir: str, total: int):
        super().__init__(out_dir, total)
        self.start = time.time()
        self.commands: List[str] = []
        self.stages: List[dict] = []

    def stage(self, title: str) -> None:
        self.index += 1
        elapsed = int(time.time() - self.start)
        print(f"\n[quality {self.index}/{self.total}] {title} (elapsed {elapsed // 60}:{elapsed % 60:02d})",
              flush=True)

    def run(self, name: str, cmd: List[str], echo: bool = False) -> List[str]:
        self.commands.append(" ".join(shlex.quote(_short(c)) for c in cmd))
        start, cpu = time.time(), _children_cpu_seconds()
        try:
            return super().run(name, cmd, echo=echo)
        finally:
            # CPU seconds of the stage's process: on a machine shared with other jobs, a better
            # measure of what the stage costs than its wall time
            self.stages.append({"name": name, "seconds": round(time.time() - start, 1), "cached": False,
                                "cpu_seconds": round(_children_cpu_seconds() - cpu, 1)})

    def cached(self, name: str, seconds: float) -> None:
        print(f"  cached: reusing the output of an earlier run (took {seconds:.0f} s then)", flush=True)
        self.stages.append({"name": name, "seconds": 0.0, "cached": True, "seconds_when_built": seconds})


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Stamps:
    """Settings of the cached stages (data, AR, conversion): a stage is reused when its stamp holds
    the same settings and its output exists."""

    def __init__(self, out_dir: str):
        self.dir = os.path.join(out_dir, "stamps")
        os.makedirs(self.dir, exist_ok=True)

    def lookup(self, key: str, settings: dict, output: str) -> Optional[dict]:
        path = os.path.join(self.dir, key + ".json")
        if not os.path.exists(path) or not os.path.exists(output):
            return None
        with open(path) as handle:
            stamp = json.load(handle)
        return stamp if stamp.get("settings") == json.loads(json.dumps(settings)) else None

    def write(self, key: str, settings: dict, seconds: float, result=None) -> None:
        common.write_json(os.path.join(self.dir, key + ".json"),
                          {"settings": settings, "seconds": round(seconds, 1), "result": result})


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _fresh(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    return path


def _git_commit() -> dict:
    def git(*args):
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None
    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def known_flags() -> set:
    """Every flag of megatron_dllm.pretrain (tools/evaluate.py takes the same ones)."""
    from megatron_dllm.arguments import build_parser

    return {s for action in build_parser()._actions for s in action.option_strings}


class Ablation:
    """One run of the ablation: the shared stages, then the AR baseline and the variants per seed."""

    def __init__(self, out_dir: str, plan: QualityPlan, variants: Sequence[qv.Variant], seeds: Sequence[int],
                 jobs: int = 1):
        import yaml

        self.out, self.plan, self.variants, self.seeds = out_dir, plan, list(variants), list(seeds)
        self.jobs = jobs
        self._lock = threading.Lock()
        with open(CONFIG) as handle:
            base = yaml.safe_load(handle)
        self.seq_len, self.batch = int(base["seq-length"]), int(base["global-batch-size"])
        self.tokens_per_step = self.seq_len * self.batch
        self.budget = qv.Budget(plan.dllm_iters * self.tokens_per_step, plan.dllm_iters, self.tokens_per_step,
                                plan.decode_block)
        per_seed = 2 + 3 * len(self.variants)
        self.runner = ProgressRunner(out_dir, total=4 + per_seed * len(self.seeds))
        if jobs > 1:  # side-by-side trainings share the cores instead of oversubscribing them
            self.runner.env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
        self.stamps = Stamps(out_dir)
        self.py = sys.executable
        self.flags = known_flags()

    # -- shared stages ------------------------------------------------------------------------------

    def prepare(self) -> dict:
        """Data, AR checkpoint, conversion, AR accuracy at the conversion (each reused when cached)."""
        from megatron_dllm.data.quickstart import QuickstartData, build_quickstart_data

        p, r = self.plan, self.runner
        data_dir = os.path.join(self.out, "data")
        settings = {"text_chars": p.text_chars, "addition_docs": p.addition_docs, "num_test": p.num_test}
        r.stage("data: corpus, tokenizer, indexed datasets")
        stamp = self.stamps.lookup("data", settings, data_dir)
        if stamp:
            r.cached("data", stamp["seconds"])
            self.data = QuickstartData(**stamp["result"])
        else:
            start = time.time()
            self.data = build_quickstart_data(_fresh(data_dir), text_chars=p.text_chars,
                                              addition_docs=p.addition_docs, num_test=p.num_test,
                                              log=lambda msg: print("  " + msg, flush=True))
            r.stages.append({"name": "data", "seconds": round(time.time() - start, 1), "cached": False})
            self.stamps.write("data", settings, time.time() - start, asdict(self.data))
        tok = self.data.tokenizer_model
        self.common = ["--config", CONFIG, "--data-path", *self.data.data_path, "--tokenizer-model", tok,
                       "--data-cache-path", os.path.join(data_dir, "cache")]
        self.task_flags = ["--max-digits", str(self.data.task["max_digits"]), "--num-test",
                           str(self.data.task["num_test"]), "--task-seed", str(self.data.task["seed"])]

        self.ar_dir = os.path.join(self.out, "ar")
        ar_cmd = [self.py, "-m", "megatron_dllm.pretrain", *self.common, "--dllm-objective", "ar",
                  "--train-iters", str(p.ar_iters), "--save", self.ar_dir,
                  "--lr-warmup-iters", str(min(20, max(1, p.ar_iters // 10))),
                  "--save-interval", str(p.ar_iters), "--eval-interval", str(p.ar_iters)]
        ar_settings = {"upstream": settings, "config_sha256": _sha256(CONFIG), "command": ar_cmd[1:]}
        ar_stamp = self._cached_run(f"AR pretraining, {p.ar_iters} iterations (the demo's AR stage)",
                                    "ar_pretrain", ar_cmd, ar_settings, self.ar_dir)

        self.dllm_init = os.path.join(self.out, "dllm_init")
        conv_cmd = [self.py, TOOL("convert_ar_to_dllm.py"), "--load",
                    os.path.join(self.ar_dir, f"iter_{p.ar_iters:07d}"), "--save", self.dllm_init,
                    "--tokenizer-model", tok, "--quiet"]
        conv_settings = {"upstream": ar_settings, "command": conv_cmd[1:]}
        self._cached_run(f"conversion of the AR checkpoint at iteration {p.ar_iters}", "convert", conv_cmd,
                         conv_settings, self.dllm_init)

        task_cmd = [self.py, TOOL("eval_addition.py"), "--load", self.ar_dir, "--tokenizer-model", tok,
                    *self.task_flags, "--examples", "3", "--device", "cpu"]
        stamp = self._cached_run("held-out addition of the AR model at the conversion point (greedy)",
                                 "task_ar_converted", task_cmd, {"upstream": ar_settings, "command": task_cmd[1:]},
                                 self.ar_dir, parse=lambda lines: _json_lines(lines)[-1], writes_output=False)
        ar_train = qm.loss_curve(os.path.join(self.ar_dir, "metrics.jsonl"))
        return {"iterations": p.ar_iters, "checkpoint": os.path.join(self.ar_dir, f"iter_{p.ar_iters:07d}"),
                "converted_checkpoint": self.dllm_init, "final_train_loss": qm.final_loss(ar_train),
                "accuracy_at_conversion": stamp["result"]["accuracy"], "built_seconds": ar_stamp["seconds"]}

    def _cached_run(self, title, name, cmd, settings, output, parse=None, writes_output=True) -> dict:
        """Run ``cmd`` unless a stamp with ``settings`` exists and ``output`` does; ``parse`` turns its
        output lines into the result kept in the stamp. A stage that writes ``output`` starts afresh."""
        self.runner.stage(title)
        stamp = self.stamps.lookup(name, settings, output)
        if stamp:
            self.runner.cached(name, stamp["seconds"])
            return stamp
        if writes_output:
            _fresh(output)
        start = time.time()
        lines = self.runner.run(name, cmd)
        result = parse(lines) if parse else None
        self.stamps.write(name, settings, time.time() - start, result)
        return {"settings": settings, "seconds": round(time.time() - start, 1), "result": result}

    # -- per seed -----------------------------------------------------------------------------------

    def _continued(self, iters: int) -> List[str]:
        """Iterations and the learning-rate schedule shape shared by every continued run."""
        return ["--train-iters", str(iters), "--lr-warmup-iters", str(max(1, iters // 30)),
                "--save-interval", str(iters), "--eval-interval", str(iters), "--log-interval", "1"]

    def _timed(self, name: str, cmd: List[str], out: dict, key: str) -> List[str]:
        """Run a stage of a run; its command, wall seconds and CPU seconds go to ``out["commands"]``,
        ``out["seconds"]`` and ``out["cpu_seconds"]`` under ``key``."""
        start = time.time()
        out.setdefault("commands", {})[key] = " ".join(shlex.quote(_short(c)) for c in cmd)
        try:
            return self.runner.run(name, cmd)
        finally:
            out.setdefault("seconds", {})[key] = round(time.time() - start, 1)
            mine = [st for st in self.runner.stages if st["name"] == name]  # other jobs append too
            out.setdefault("cpu_seconds", {})[key] = mine[-1]["cpu_seconds"] if mine else None

    def ar_baseline(self, seed: int) -> dict:
        p, r = self.plan, self.runner
        run_dir = _fresh(os.path.join(self.out, "runs", "ar_baseline", f"seed{seed}"))
        out = {"status": "failed", "checkpoint": run_dir, "seconds": {}}
        try:
            r.stage(f"AR baseline, seed {seed}: the AR checkpoint continued as AR, {p.dllm_iters} iterations")
            flags = qv.merge_flags(list(qv.AR_BASELINE_FLAGS))
            self._timed(f"ar_baseline_s{seed}_train", [
                self.py, "-m", "megatron_dllm.pretrain", *self.common, "--dllm-objective", "ar",
                *self._continued(p.dllm_iters), *flags, "--seed", str(seed), "--load", self.ar_dir,
                "--finetune", "--save", run_dir], out, "train")
            out["flags"] = flags
            out["status"] = "trained"
        except StageError as exc:
            out["error"] = str(exc)
            print(f"  AR baseline seed {seed} failed: {str(exc).splitlines()[0]}", flush=True)
        return out

    def ar_baseline_task(self, seed: int, out: dict) -> dict:
        r, run_dir = self.runner, out["checkpoint"]
        if out["status"] != "trained":
            return out
        try:
            r.stage(f"AR baseline, seed {seed}: held-out addition, greedy with KV cache")
            lines = self._timed(f"ar_baseline_s{seed}_task", [
                self.py, TOOL("eval_addition.py"), "--load", run_dir, "--tokenizer-model",
                self.data.tokenizer_model, *self.task_flags, "--examples", "3", "--device", "cpu"], out, "task")
            task = _json_lines(lines)[-1]
            out.update(accuracy=task["accuracy"], tokens_per_forward=task["tokens_per_forward"],
                       decode_seconds=task.get("decode_seconds", task.get("seconds")),
                       model_calls_per_problem=task.get("model_calls_per_problem"), examples=task["examples"])
            out["train_loss"] = qm.loss_curve(os.path.join(run_dir, "metrics.jsonl"))
            out["status"] = "ok"
            print(f"  AR baseline seed {seed}: accuracy {out['accuracy']:.3f}, decode {out['decode_seconds']} s",
                  flush=True)
        except StageError as exc:
            out["error"] = str(exc)
            print(f"  AR baseline seed {seed} failed: {str(exc).splitlines()[0]}", flush=True)
        return out

    def missing_flags(self, variant: qv.Variant) -> List[str]:
        names = qv.flag_names(variant.resolved_flags(self.budget)) + qv.flag_names(variant.eval_flags)
        return sorted({n for n in names if n not in self.flags})

    def variant(self, variant: qv.Variant, seed: int) -> dict:
        """Training and validation NELBO of one variant (status "trained" when both ran)."""
        p, r = self.plan, self.runner
        name = f"{variant.name}_s{seed}"
        iters = p.dllm_iters if variant.init == "converted" else p.ar_iters + p.dllm_iters
        flags = variant.resolved_flags(self.budget)
        out = {"status": "failed", "flags": flags, "iterations": iters, "seconds": {}}
        missing = self.missing_flags(variant)
        if missing:
            r.index += 3
            out.update(stage="flags", error=f"{', '.join(missing)}: not a megatron_dllm.pretrain flag in this "
                       "checkout (not implemented yet?); variant skipped")
            print(f"\n[quality] {variant.name}, seed {seed}: skipped: {out['error']}", flush=True)
            return out
        run_dir = _fresh(os.path.join(self.out, "runs", variant.name, f"seed{seed}"))
        out["checkpoint"] = run_dir
        init = ["--load", self.dllm_init] if variant.init == "converted" else []
        stage = "train"
        try:
            r.stage(f"{variant.name}, seed {seed}: dLLM training, {iters} iterations "
                    f"({'from the converted checkpoint' if init else 'from scratch'})")
            self._timed(f"{name}_train", [
                self.py, "-m", "megatron_dllm.pretrain", *self.common, "--dllm-objective", "bd",
                *self._continued(iters), *flags, "--seed", str(seed), *init, "--save", run_dir], out, "train")
            curve = qm.loss_curve(os.path.join(run_dir, "metrics.jsonl"))
            out.update(train_loss=curve, final_train_loss=qm.final_loss(curve))
            out[f"peak_loss_first_{p.loss_window}"] = qm.peak_loss(curve, p.loss_window)

            stage = "nelbo"
            r.stage(f"{variant.name}, seed {seed}: validation NELBO (block {p.decode_block})")
            # the BD objective with a fixed block: the layout a causal clean stream needs, the same for all
            block = str(p.decode_block)
            lines = self._timed(f"{name}_nelbo", [
                self.py, TOOL("evaluate.py"), *self.common, "--dllm-objective", "bd", "--dllm-block-schedule",
                f"stable:{block}@inf", *variant.eval_flags, "--eval-iters", str(p.eval_iters),
                "--eval-block-size", block, "--load", run_dir], out, "nelbo")
            nelbo = _json_lines(lines)[-1]
            out.update(valid_nelbo=nelbo["nelbo"], valid_nelbo_standard_error=nelbo["standard_error"])
            out["status"] = "trained"
        except StageError as exc:
            out.update(stage=stage, error=str(exc))
            print(f"  {variant.name} seed {seed} failed at {stage}: {str(exc).splitlines()[0]}", flush=True)
        return out

    def variant_task(self, variant: qv.Variant, seed: int, out: dict, ar_decode_seconds: Optional[float]) -> dict:
        """Held-out addition over the threshold sweep of a trained variant (one run at a time)."""
        p, r = self.plan, self.runner
        name, run_dir, stage = f"{variant.name}_s{seed}", out.get("checkpoint"), "task"
        if out["status"] != "trained":
            return out
        try:
            r.stage(f"{variant.name}, seed {seed}: held-out addition, thresholds "
                    f"{' '.join(map(str, p.thresholds))}")
            lines = self._timed(f"{name}_task", [
                self.py, TOOL("eval_addition.py"), "--load", run_dir, "--tokenizer-model",
                self.data.tokenizer_model, *self.task_flags, "--block-length", str(p.decode_block),
                "--threshold", *map(str, p.thresholds), "--minimal-topk", "0", "--examples", "3",
                "--device", "cpu"], out, "task")
            records = [x for x in _json_lines(lines) if "threshold" in x]
            out["sweep"] = qm.sweep_rows(records, ar_decode_seconds)
            out["best"], out["at_0_9"] = qm.best_row(out["sweep"]), qm.row_at(out["sweep"], qm.REFERENCE_THRESHOLD)
            out["examples"] = records[0]["examples"] if records else []
            out["status"] = "ok"
            best = out["best"]
            print(f"  {variant.name} seed {seed}: best accuracy {best['accuracy']:.3f} at threshold "
                  f"{best['threshold']} ({best['tokens_per_forward']:.2f} tokens per forward), NELBO "
                  f"{out['valid_nelbo']:.3f}, peak loss over the first {p.loss_window} iterations "
                  f"{out[f'peak_loss_first_{p.loss_window}']:.3f}", flush=True)
        except StageError as exc:
            out.update(stage=stage, error=str(exc))
            print(f"  {variant.name} seed {seed} failed at {stage}: {str(exc).splitlines()[0]}", flush=True)
        return out

    # -- the whole run ------------------------------------------------------------------------------

    def run(self, command: str) -> dict:
        start = time.time()
        ar = self.prepare()
        baseline: Dict[str, dict] = {}
        variants = {v.name: {"name": v.name, "description": v.description, "llada2_compatible": v.llada2_compatible,
                             "init": v.init, "eval_flags": list(v.eval_flags), "per_seed": {}}
                    for v in self.variants}
        for seed in self.seeds:
            def train(job):
                key = str(seed)
                result = self.ar_baseline(seed) if job is None else self.variant(job, seed)
                with self._lock:
                    if job is None:
                        baseline[key] = result
                    else:
                        variants[job.name]["per_seed"][key] = result
                    self._write_partial(ar, baseline, variants)

            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                # longest first (from scratch: AR + dLLM iterations), so side-by-side jobs end together
                order = sorted(self.variants, key=lambda v: v.init == "converted")
                list(pool.map(train, [*order[:1], None, *order[1:]]))
            # scoring, one run at a time: decode seconds measured alike for all runs
            baseline[str(seed)] = self.ar_baseline_task(seed, baseline[str(seed)])
            ar_seconds = baseline[str(seed)].get("decode_seconds")
            for v in self.variants:
                runs = variants[v.name]["per_seed"]
                runs[str(seed)] = self.variant_task(v, seed, runs[str(seed)], ar_seconds)
                self._write_partial(ar, baseline, variants)
        for entry in variants.values():
            runs = entry["per_seed"].values()
            entry["flags"] = next(iter(runs))["flags"]
            entry["status"] = "ok" if all(x["status"] == "ok" for x in runs) else \
                ("partial" if any(x["status"] == "ok" for x in runs) else "failed")
            entry["errors"] = sorted({x["error"].splitlines()[0] for x in runs if x.get("error")})
            entry["mean"] = qm.summarise_seeds(entry["per_seed"], self.plan.loss_window)
        ok = [b for b in baseline.values() if b["status"] == "ok"]
        mean = lambda key: qm._mean([b.get(key) for b in ok])  # noqa: E731
        result = {
            "date": common.now_iso(), "command": command, "git": _git_commit(), "machine": common.machine_info(),
            "plan": asdict(self.plan), "seeds": self.seeds, "config": os.path.relpath(CONFIG, ROOT),
            "tokens_per_step": self.tokens_per_step, "dllm_tokens": self.budget.dllm_tokens,
            "nelbo_layout": "bd", "nelbo_block_size": self.plan.decode_block,
            "data": {"data_path": self.data.data_path, "tokenizer_model": self.data.tokenizer_model,
                     "task": self.data.task, "tokens": self.data.stats},
            "ar": ar,
            "ar_baseline": {"per_seed": baseline, "mean": {
                "accuracy": mean("accuracy"), "decode_seconds": mean("decode_seconds"), "tokens_per_forward": 1.0}},
            "variants": list(variants.values()),
            "claims": qm.claims(variants, self.plan.loss_window, qv.CLAIM_AR_INIT, qv.CLAIM_SCRATCH,
                                qv.CLAIM_GRADUAL, qv.CLAIM_ABRUPT),
            "commands": self.runner.commands,
            "stages": self.runner.stages,
            "logs_dir": self.runner.logs,
        }
        result["seconds"] = round(time.time() - start, 1)
        return result

    def _write_partial(self, ar, baseline, variants) -> None:
        common.write_json(os.path.join(self.out, "partial.json"),
                          {"ar": ar, "ar_baseline": baseline, "variants": variants})


def parse_seeds(text: str) -> List[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 1234,4321")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: give one or more distinct integers, e.g. --seeds 1234,4321")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny iteration counts and variants "
                   f"{','.join(qv.QUICK_VARIANTS)} (the test suite)")
    p.add_argument("--variants", help="comma-separated subset of: " + ",".join(v.name for v in qv.VARIANTS))
    p.add_argument("--seeds", default="1234", help="training seeds, comma-separated (default 1234)")
    p.add_argument("--jobs", type=int, default=1, help="trainings side by side (default 1; 2 on 2 idle "
                   "cores halves the wall time); addition scoring stays one at a time")
    p.add_argument("--dllm-iters", type=int, default=None, help="dLLM iterations per variant (default: the "
                   "demo's, 300; --quick 6)")
    p.add_argument("--out", default=None, help="work directory; the data, AR and converted checkpoints "
                   "there are reused while their settings are unchanged (default runs/quality, "
                   "--quick runs/quality_quick)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the data, AR and converted checkpoints "
                   "even when their stamps match (e.g. after a change of the training code)")
    p.add_argument("--results", default=None, help="directory of quality.json and the PNGs (default "
                   "bench/results; --quick: OUT/results)")
    p.add_argument("--markdown", default=None, help="markdown file whose quality section is rewritten "
                   "(default BENCHMARKS.md; --quick: none; '' for none)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        names = args.variants.split(",") if args.variants else \
            (list(qv.QUICK_VARIANTS) if args.quick else [v.name for v in qv.VARIANTS])
        variants = qv.by_name([n.strip() for n in names if n.strip()])
        seeds = parse_seeds(args.seeds)
        if args.jobs < 1:
            raise ValueError(f"--jobs {args.jobs}: must be at least 1")
        if args.dllm_iters is not None and args.dllm_iters < 1:
            raise ValueError(f"--dllm-iters {args.dllm_iters}: must be at least 1")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out or os.path.join(ROOT, "runs", "quality_quick" if args.quick else "quality"))
    results = os.path.abspath(args.results or (os.path.join(out, "results") if args.quick else common.RESULTS_DIR))
    markdown = args.markdown if args.markdown is not None else ("" if args.quick else
                                                                 os.path.join(ROOT, "BENCHMARKS.md"))
    os.makedirs(out, exist_ok=True)
    if args.rebuild:
        shutil.rmtree(os.path.join(out, "stamps"), ignore_errors=True)
    plan = QualityPlan.from_demo(args.quick, args.dllm_iters)
    command = "python bench/quality.py" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
    print(f"quality ablation: {len(variants)} variant(s) x {len(seeds)} seed(s), {plan.dllm_iters} dLLM "
          f"iterations each; work directory {out}", flush=True)
    ablation = Ablation(out, plan, variants, seeds, jobs=args.jobs)
    try:
        result = ablation.run(command)
    except StageError as exc:
        print(f"quality: {exc}", file=sys.stderr)
        return 1
    result["pictures"] = quality_report.pictures(result, results)
    path = os.path.join(results, "quality.json")
    common.write_json(path, result)
    if markdown:
        quality_report.update_markdown(markdown, result, path)
    print(quality_report.summary_text(result, path, markdown), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
