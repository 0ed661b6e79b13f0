"""Numbers of the quality ablation from what its stages print and write (pure functions).

A threshold sweep row is one JSON line of tools/eval_addition.py; a loss curve comes from the
``train`` records of a run's metrics.jsonl (``--log-interval 1``: one per iteration). Means over
seeds average each threshold's accuracy and tokens per forward first, then pick the threshold, so the
"best" setting of a mean is one threshold for all seeds (the setting a user would pick).
"""

from __future__ import annotations

import json
import statistics
from typing import Dict, List, Optional, Sequence

REFERENCE_THRESHOLD = 0.9


def sweep_rows(records: Sequence[dict], ar_decode_seconds: Optional[float]) -> List[dict]:
    """One row per threshold: accuracy, tokens per forward, decode seconds (``decode_seconds`` when
    eval_addition reports it, else its ``seconds``), model calls per problem when reported, and the
    speed-up over AR greedy decoding of the same problems (AR seconds / these seconds)."""
    rows = []
    for r in records:
        seconds = r.get("decode_seconds", r.get("seconds"))
        rows.append({
            "threshold": r["threshold"], "accuracy": r["accuracy"], "correct": r["correct"], "total": r["total"],
            "tokens_per_forward": r["tokens_per_forward"], "decode_seconds": seconds,
            "model_calls_per_problem": r.get("model_calls_per_problem"),
            "speedup_vs_ar": _ratio(ar_decode_seconds, seconds)})
    return sorted(rows, key=lambda row: -row["threshold"])


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    return round(num / den, 3) if num and den else None


def best_row(rows: Sequence[dict]) -> Optional[dict]:
    """The accuracy-maximising row; ties go to more tokens per forward, then the higher threshold."""
    if not rows:
        return None
    return max(rows, key=lambda r: (r["accuracy"], r["tokens_per_forward"], r["threshold"]))


def row_at(rows: Sequence[dict], threshold: float) -> Optional[dict]:
    return next((r for r in rows if abs(r["threshold"] - threshold) < 1e-9), None)


def loss_curve(metrics_path: str) -> Dict[str, list]:
    """iteration, loss and block size of every ``train`` record of a metrics.jsonl."""
    with open(metrics_path) as handle:
        records = [r for r in map(json.loads, filter(str.strip, handle)) if r.get("kind") == "train"]
    return {"iteration": [r["iteration"] for r in records],
            "loss": [round(r["loss"], 5) for r in records],
            "block_size": [r.get("block_size") for r in records]}


def peak_loss(curve: Dict[str, list], window: int) -> Optional[float]:
    """Highest training loss over iterations 1..window (the loss spike after the conversion)."""
    losses = [loss for it, loss in zip(curve["iteration"], curve["loss"]) if it <= window]
    return max(losses) if losses else None


def final_loss(curve: Dict[str, list], last: int = 3) -> Optional[float]:
    losses = curve["loss"][-last:]
    return round(sum(losses) / len(losses), 5) if losses else None


def _mean(xs: Sequence[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return round(statistics.fmean(xs), 5) if xs else None


def mean_sweep(per_seed_rows: Sequence[Sequence[dict]]) -> List[dict]:
    """Per threshold (those every seed has), the mean of each number over seeds."""
    if not per_seed_rows:
        return []
    common = set.intersection(*({r["threshold"] for r in rows} for rows in per_seed_rows))
    out = []
    for threshold in sorted(common, reverse=True):
        rows = [row_at(seed_rows, threshold) for seed_rows in per_seed_rows]
        mean = {"threshold": threshold}
        for key in ("accuracy", "tokens_per_forward", "decode_seconds", "model_calls_per_problem",
                    "speedup_vs_ar"):
            mean[key] = _mean([r[key] for r in rows])
        out.append(mean)
    return out


def summarise_seeds(per_seed: Dict[str, dict], loss_window: int) -> dict:
    """Mean over the seeds that finished: the sweep, its best row and the 0.9 row, NELBO, losses."""
    done = {s: r for s, r in per_seed.items() if r.get("status") == "ok"}
    if not done:
        return {}
    sweep = mean_sweep([r["sweep"] for r in done.values()])
    return {
        "seeds": sorted(done),
        "sweep": sweep,
        "best": best_row(sweep),
        "at_0_9": row_at(sweep, REFERENCE_THRESHOLD),
        "valid_nelbo": _mean([r.get("valid_nelbo") for r in done.values()]),
        f"peak_loss_first_{loss_window}": _mean([r.get(f"peak_loss_first_{loss_window}") for r in done.values()]),
        "final_train_loss": _mean([r.get("final_train_loss") for r in done.values()]),
        "best_accuracy_per_seed": {s: (r["best"] or {}).get("accuracy") for s, r in done.items()},
        "nelbo_per_seed": {s: r.get("valid_nelbo") for s, r in done.items()},
    }


def claims(variants: Dict[str, dict], loss_window: int, ar_init: str, scratch: str, gradual: str,
           abrupt: str) -> List[dict]:
    """The paper's claims against the measured means: (a) AR init beats scratch at equal tokens on
    accuracy and on NELBO, (b) the gradual warm-up's peak loss over the first ``loss_window``
    iterations is below the abrupt switch's. ``met`` is None when a variant did not finish."""
    def mean_of(name):
        return (variants.get(name) or {}).get("mean") or {}

    out = []
    a, s = mean_of(ar_init), mean_of(scratch)
    acc_a, acc_s = (a.get("best") or {}).get("accuracy"), (s.get("best") or {}).get("accuracy")
    out.append(_claim(f"AR init beats scratch at equal tokens: held-out accuracy ({ar_init} vs {scratch}, "
                      "best threshold)", acc_a, acc_s, higher_wins=True))
    out.append(_claim(f"AR init beats scratch at equal tokens: validation NELBO ({ar_init} vs {scratch})",
                      a.get("valid_nelbo"), s.get("valid_nelbo"), higher_wins=False))
    key = f"peak_loss_first_{loss_window}"
    g, b = mean_of(gradual), mean_of(abrupt)
    out.append(_claim(f"gradual warm-up has a smaller loss spike than the abrupt switch: peak training loss "
                      f"over the first {loss_window} iterations ({gradual} vs {abrupt})",
                      g.get(key), b.get(key), higher_wins=False))
    return out


def _claim(text: str, ours: Optional[float], other: Optional[float], higher_wins: bool) -> dict:
    if ours is None or other is None:
        return {"claim": text, "value": ours, "compared_to": other, "met": None}
    met = ours > other if higher_wins else ours < other
    return {"claim": text, "value": ours, "compared_to": other, "met": bool(met)}
