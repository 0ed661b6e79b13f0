"""The post-training part of ``make demo`` (``demo.py``): SFT, then DPO, of the quickstart's dLLM on the
addition task written as chat (``data/addition_chat.py``), and their held-out evaluations.

  SFT      ``--dllm-objective sft`` from the dLLM checkpoint (``--finetune``), block diffusion at the
           decoding block size, on ``{"messages": [user "What is 47+08?", assistant "055"]}``
  DPO      ``--dllm-objective dpo`` from the SFT checkpoint, which is also the frozen reference
           (``--ref-load``), on pairs (chosen: the right sum; rejected: one digit off by one), VRPO;
           the router's expert bias is not updated (``--moe-router-bias-update-rate 0``): the
           token counts of DPO's rows (each reply n times, EOS padding) moved it away from the
           reference's and cost accuracy whatever the learning rate
  chat     ``tools/eval_addition.py --format chat`` on the held-out problems: the dLLM before SFT,
           after SFT, after DPO (block decoding at the demo's threshold)
  pairs    ``tools/eval_preference.py`` on the held-out problems as pairs: the share of pairs whose
           chosen reply has the higher ELBO, for the SFT model (before DPO) and the DPO model (after);
           for the DPO model also DPO's implicit-reward accuracy against the SFT model and the variance
           ratio of the DPO loss estimate, naive noise over VRPO

The jobs go into the two lanes of the demo's post-training stage, each job after what it reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List

from megatron_dllm.demo import _json_lines


def _last_json(lines: List[str]) -> dict:
    return _json_lines(lines)[-1]


@dataclass
class PostTraining:
    """The jobs of the post-training stage: ``lanes[0]`` runs first in lane A (SFT, DPO),
    ``lanes[1]`` after lane A's other jobs, ``lanes[2]`` in lane B after its other jobs."""

    lanes: tuple                   # lists of (name, cmd, echo[, after]) jobs
    sft_dir: str
    dpo_dir: str
    settings: dict

    def summary(self, lines: Dict[str, List[str]]) -> dict:
        """The ``sft`` and ``dpo`` fields of summary.json from the jobs' output; printed as well."""
        before, after_sft, after_dpo = (_last_json(lines[n]) for n in ("chat_dllm", "chat_sft", "chat_dpo"))
        pref_sft, pref_dpo = (_last_json(lines[n]) for n in ("preference_sft", "preference_dpo"))
        variance = pref_dpo["variance"]
        s = self.settings
        sft = {"accuracy_before": before["accuracy"], "accuracy_after": after_sft["accuracy"],
               "problems": after_sft["total"], "format": "chat: user 'What is 47+08?', assistant '055'",
               "tokens_per_forward_after": after_sft["tokens_per_forward"], "iterations": s["sft_iters"],
               "block_size": s["sft_block"], "checkpoint": self.sft_dir,
               "examples": {"before": before["examples"], "after": after_sft["examples"]}}
        dpo = {"preference_accuracy_before": pref_sft["preference_accuracy"],
               "preference_accuracy_after": pref_dpo["preference_accuracy"],
               "accuracy_after": after_dpo["accuracy"],
               "vrpo_variance_ratio": round(variance["variance_ratio"], 2),
               "vrpo_variance_ratio_interval_90": [round(x, 2) for x in variance["variance_ratio_interval_90"]],
               "variance_repeats": variance["repeats"], "variance_pairs": variance["pairs"],
               "reward_accuracy_after": pref_dpo["reward_accuracy"], "reward_margin_after": pref_dpo["reward_margin"],
               "pairs": pref_dpo["pairs"], "elbo_samples_eval": pref_dpo["elbo_samples"],
               "iterations": s["dpo_iters"], "pairs_per_step": s["dpo_pairs"], "elbo_samples": s["dpo_samples"],
               "beta": s["dpo_beta"], "lr": s["dpo_lr"], "expert_bias_update_rate": s["dpo_expert_bias_rate"],
               "checkpoint": self.dpo_dir,
               "examples_after": after_dpo["examples"]}
        print(f"  chat (held out): accuracy {sft['accuracy_before']:.3f} before SFT -> {sft['accuracy_after']:.3f} "
              f"after SFT -> {dpo['accuracy_after']:.3f} after DPO", flush=True)
        print(f"  preference pairs (held out): chosen reply preferred {dpo['preference_accuracy_before']:.3f} "
              f"before DPO -> {dpo['preference_accuracy_after']:.3f} after; implicit-reward accuracy "
              f"{dpo['reward_accuracy_after']:.3f}; DPO loss variance naive / VRPO {dpo['vrpo_variance_ratio']:.1f}x "
              f"(90% interval {dpo['vrpo_variance_ratio_interval_90'][0]:.1f}-"
              f"{dpo['vrpo_variance_ratio_interval_90'][1]:.1f})", flush=True)
        return {"sft": sft, "dpo": dpo}


def post_training(plan, py: str, tool, out_dir: str, tok: str, chat, dllm_dir: str, task_flags: List[str],
                  config: str) -> PostTraining:
    """The commands of the post-training stage for a demo ``plan`` (``demo.Plan``)."""
    sft_dir, dpo_dir = os.path.join(out_dir, "sft"), os.path.join(out_dir, "dpo")
    model = ["--config", config, "--tokenizer-model", tok, "--split", "100,0,0", "--eval-interval", "0",
             "--data-cache-path", os.path.join(out_dir, "chat", "cache")]
    sft = [py, "-m", "megatron_dllm.pretrain", *model, "--dllm-objective", "sft",
           "--dllm-sft-block-size", str(plan.decode_block), "--data-path", chat.sft_prefix,
           "--load", dllm_dir, "--finetune", "--train-iters", str(plan.sft_iters), "--lr", str(plan.sft_lr),
           "--min-lr", str(plan.sft_lr / 10), "--lr-warmup-iters", str(max(1, plan.sft_iters // 12)),
           "--micro-batch-size", str(plan.sft_batch), "--global-batch-size", str(plan.sft_batch),
           "--log-interval", str(max(1, plan.sft_iters // 6)), "--save", sft_dir,
           "--save-interval", str(plan.sft_iters), "--tensorboard-dir", os.path.join(out_dir, "tb", "sft")]
    dpo = [py, "-m", "megatron_dllm.pretrain", *model, "--dllm-objective", "dpo", "--ref-load", sft_dir,
           "--load", sft_dir, "--finetune", "--data-path", chat.dpo_prefix, "--seq-length", str(plan.dpo_seq),
           "--dpo-block-size", str(plan.decode_block), "--dpo-elbo-samples", str(plan.dpo_samples),
           "--dpo-beta", str(plan.dpo_beta), "--moe-router-bias-update-rate", str(plan.dpo_expert_bias_rate),
           "--micro-batch-size", str(plan.dpo_pairs),
           "--global-batch-size", str(plan.dpo_pairs), "--train-iters", str(plan.dpo_iters),
           "--lr", str(plan.dpo_lr), "--min-lr", str(plan.dpo_lr / 10), "--lr-warmup-iters", "1",
           "--log-interval", str(max(1, plan.dpo_iters // 4)), "--save", dpo_dir,
           "--save-interval", str(plan.dpo_iters), "--tensorboard-dir", os.path.join(out_dir, "tb", "dpo")]
    chat_eval = [py, tool("eval_addition.py"), "--tokenizer-model", tok, *task_flags, "--format", "chat",
                 "--block-length", str(plan.decode_block), "--threshold", str(plan.decode_threshold),
                 "--minimal-topk", "0", "--examples", "3"]
    pairs = [py, tool("eval_preference.py"), "--tokenizer-model", tok, "--data-path", chat.dpo_test_prefix,
             "--seq-length", str(plan.dpo_seq), "--block-size", str(plan.decode_block),
             "--elbo-samples", str(plan.preference_samples), "--beta", str(plan.dpo_beta)]
    lanes = (  # measured on 2 cores (make demo): lane A 234 s, lane B 227 s
        [("sft", sft), ("dpo", dpo)],
        [("chat_dpo", [*chat_eval, "--load", dpo_dir], False, ("dpo",)),
         ("preference_dpo", [*pairs, "--load", dpo_dir, "--ref-load", sft_dir, "--variance-repeats",
                             str(plan.variance_repeats), "--variance-pairs", str(plan.variance_pairs),
                             "--variance-samples", str(plan.dpo_samples)], False,
          ("dpo",))],
        [("chat_dllm", [*chat_eval, "--load", dllm_dir], False),
         ("chat_sft", [*chat_eval, "--load", sft_dir], False, ("sft",)),
         ("preference_sft", [*pairs, "--load", sft_dir], False, ("sft",))],
    )
    settings = {k: getattr(plan, k) for k in ("sft_iters", "dpo_iters", "dpo_pairs", "dpo_samples", "dpo_beta",
                                               "dpo_lr", "dpo_expert_bias_rate")}
    settings["sft_block"] = plan.decode_block
    return PostTraining(lanes=lanes, sft_dir=sft_dir, dpo_dir=dpo_dir, settings=settings)
