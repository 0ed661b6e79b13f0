"""bench/quality.py's pieces that need no training: the variant table, flag merging, the numbers
picked from a threshold sweep, the claims, and the replaced section of the markdown file."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import quality_metrics as qm  # noqa: E402
import quality_report  # noqa: E402
import quality_variants as qv  # noqa: E402
from megatron_dllm.diffusion.curriculum import BlockSchedule  # noqa: E402

BUDGET = qv.Budget(dllm_tokens=300 * 2048, dllm_iters=300, tokens_per_step=2048, decode_block=8)


def _blocks(spec, iters=(0, 49, 50, 99, 100, 199, 200, 299)):
    schedule = BlockSchedule.parse(spec, 128)
    return [schedule.block_size_at(i * 2048) for i in iters]


def test_merge_flags_keeps_first_position_and_last_value():
    merged = qv.merge_flags(["--lr", "1", "--switch", "--data-path", "0.5", "a", "0.5", "b", "--lr", "2"])
    assert merged == ["--lr", "2", "--switch", "--data-path", "0.5", "a", "0.5", "b"]
    with pytest.raises(ValueError, match="expected a --flag, got 'x'"):
        qv.merge_flags(["x", "--lr", "1"])


def test_schedules_in_iterations_of_a_300_iteration_run():
    # llada2: 1 for 50 iterations, 4 for 50, then 8 (a third of the tokens at 1 -> 4)
    flags = qv.by_name(["llada2"])[0].resolved_flags(BUDGET)
    assert _blocks(flags[flags.index("--dllm-block-schedule") + 1]) == [1, 1, 4, 4, 8, 8, 8, 8]
    flags = qv.by_name(["warmup_none"])[0].resolved_flags(BUDGET)
    assert _blocks(flags[flags.index("--dllm-block-schedule") + 1]) == [8] * 8
    # 1 -> 2 -> 4 over two thirds: about 66.7 iterations each
    flags = qv.by_name(["warmup_long"])[0].resolved_flags(BUDGET)
    assert _blocks(flags[flags.index("--dllm-block-schedule") + 1], (0, 66, 67, 133, 134, 199, 200)) == \
        [1, 1, 2, 2, 4, 4, 8]
    assert flags.count("--dllm-block-schedule") == 1 and flags[flags.index("--lr") + 1] == "1.5e-3"


def test_variants_override_only_what_they_change():
    low = qv.by_name(["lr_low"])[0].resolved_flags(BUDGET)
    assert low[low.index("--lr") + 1] == "5e-4" and low[low.index("--min-lr") + 1] == "5e-5"
    assert low.count("--lr") == 1
    base = qv.by_name(["llada2"])[0].resolved_flags(BUDGET)
    old = qv.by_name(["demo_schedule_old"])[0].resolved_flags(BUDGET)
    assert old[old.index("--dllm-block-schedule") + 1].startswith("warmup:1->4->16->32@")
    assert [f for f in old if f.startswith("--")] == [f for f in base if f.startswith("--")]
    names = [v.name for v in qv.VARIANTS]
    assert len(set(names)) == len(names) and set(qv.QUICK_VARIANTS) <= set(names)
    assert [v.name for v in qv.VARIANTS if v.init == "scratch"] == ["scratch"]


def test_every_prediction_rule_flag_also_reaches_the_nelbo_evaluation():
    for v in qv.VARIANTS:
        used = [f for f in v.resolved_flags(BUDGET) if f in qv.PREDICTION_RULE_FLAGS]
        assert sorted(used) == sorted(v.eval_flags), v.name
    assert qv.by_name(["token_shift"])[0].eval_flags == ("--dllm-token-shift",)


def test_unknown_variant_names_are_listed():
    with pytest.raises(ValueError, match=r"unknown variant\(s\) nope; choose from llada2, token_shift"):
        qv.by_name(["llada2", "nope"])


def _row(threshold, acc, tpf, seconds=1.0):
    return {"threshold": threshold, "accuracy": acc, "correct": int(acc * 10), "total": 10,
            "tokens_per_forward": tpf, "seconds": seconds, "examples": []}


def test_sweep_rows_best_and_speedup():
    rows = qm.sweep_rows([_row(0.5, 0.8, 2.0, 0.5), _row(0.9, 0.8, 1.2, 1.0), _row(1.0, 0.7, 1.0, 2.0)],
                         ar_decode_seconds=1.5)
    assert [r["threshold"] for r in rows] == [1.0, 0.9, 0.5]
    assert qm.best_row(rows)["threshold"] == 0.5  # tie on accuracy: more tokens per forward wins
    assert qm.row_at(rows, 0.9)["speedup_vs_ar"] == 1.5 and qm.row_at(rows, 0.5)["speedup_vs_ar"] == 3.0
    assert qm.row_at(rows, 0.3) is None
    # eval_addition's decode_seconds, when reported, is what the speed-up uses
    (row,) = qm.sweep_rows([{**_row(0.9, 1.0, 2.0, 9.0), "decode_seconds": 0.75}], ar_decode_seconds=1.5)
    assert row["decode_seconds"] == 0.75 and row["speedup_vs_ar"] == 2.0


def test_peak_and_final_loss():
    curve = {"iteration": [1, 2, 3, 4, 5], "loss": [3.0, 5.0, 4.0, 9.0, 1.0], "block_size": [1] * 5}
    assert qm.peak_loss(curve, 3) == 5.0 and qm.peak_loss(curve, 20) == 9.0
    assert qm.final_loss(curve) == round((4.0 + 9.0 + 1.0) / 3, 5)


def _seed(acc_by_threshold, nelbo, peak):
    sweep = qm.sweep_rows([_row(t, a, 1.0 + (1 - t)) for t, a in acc_by_threshold.items()], 1.0)
    return {"status": "ok", "sweep": sweep, "best": qm.best_row(sweep), "valid_nelbo": nelbo,
            "peak_loss_first_20": peak, "final_train_loss": 1.0}


def test_mean_over_seeds_picks_one_threshold_for_all():
    per_seed = {"1": _seed({0.9: 0.8, 0.5: 0.6}, 3.0, 6.0), "2": _seed({0.9: 0.4, 0.5: 0.7}, 4.0, 8.0),
                "3": {"status": "failed", "error": "x"}}
    mean = qm.summarise_seeds(per_seed, 20)
    assert mean["seeds"] == ["1", "2"]
    assert mean["best"]["threshold"] == 0.5 and mean["best"]["accuracy"] == pytest.approx(0.65)
    assert mean["at_0_9"]["accuracy"] == pytest.approx(0.6)
    assert mean["valid_nelbo"] == 3.5 and mean["peak_loss_first_20"] == 7.0
    assert mean["best_accuracy_per_seed"] == {"1": 0.8, "2": 0.7}


def test_claims_compare_the_named_variants():
    variants = {"a": {"mean": {"best": {"accuracy": 0.9}, "valid_nelbo": 3.0, "peak_loss_first_20": 7.0}},
                "s": {"mean": {"best": {"accuracy": 0.2}, "valid_nelbo": 2.5}},
                "b": {"mean": {"peak_loss_first_20": 6.0}}}
    acc, nelbo, spike = qm.claims(variants, 20, "a", "s", "a", "b")
    assert (acc["met"], nelbo["met"], spike["met"]) == (True, False, False)
    assert (spike["value"], spike["compared_to"]) == (7.0, 6.0)
    assert qm.claims(variants, 20, "a", "missing", "a", "b")[0]["met"] is None


def _result():
    runs = {"1234": _seed({0.9: 0.5, 0.5: 0.6}, 3.0, 6.0)}
    variant = {"name": "llada2", "description": "d", "llada2_compatible": True, "init": "converted", "flags": [],
               "status": "ok", "per_seed": runs, "mean": qm.summarise_seeds(runs, 20)}
    failed = {"name": "token_shift", "description": "d", "llada2_compatible": False, "init": "converted",
              "flags": ["--dllm-token-shift"], "status": "failed", "per_seed": {"1234": {"status": "failed"}},
              "errors": ["--dllm-token-shift: not a megatron_dllm.pretrain flag"], "mean": {}}
    return {"command": "python bench/quality.py", "date": "d", "git": {"commit": "abc"}, "machine": {},
            "seconds": 1.0, "seeds": [1234], "tokens_per_step": 2048, "nelbo_layout": "bd", "nelbo_block_size": 8,
            "plan": {"loss_window": 20, "dllm_iters": 300, "ar_iters": 900, "decode_block": 8, "eval_iters": 4,
                     "thresholds": [0.9, 0.5]},
            "ar": {"iterations": 900, "accuracy_at_conversion": 0.85},
            "data": {"task": {"num_test": 200}},
            "ar_baseline": {"mean": {"accuracy": 1.0}, "per_seed": {"1234": {"accuracy": 1.0}}},
            "variants": [variant, failed], "claims": qm.claims({"llada2": variant}, 20, "llada2", "scratch",
                                                               "llada2", "warmup_none")}


def test_markdown_section_is_replaced_and_the_rest_kept(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nhand-written\n")
    quality_report.update_markdown(str(md), _result(), str(tmp_path / "q.json"))
    quality_report.update_markdown(str(md), _result(), str(tmp_path / "q.json"))
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written\n") and text.count(quality_report.BEGIN) == 1
    assert quality_report.TITLE in text and "Generated by `python bench/quality.py`" in text
    assert "| `llada2` | yes | 60.0% (0.5) | 1.50 | 50.0% | 1.10 |" in text
    assert "| `token_shift` | no | failed: --dllm-token-shift: not a megatron_dllm.pretrain flag |" in text
    assert "not measured (a variant did not run)" in text
    table = ("| variant | LLaDA2-compatible" + text.split("| variant | LLaDA2-compatible", 1)[1]).split("\n\n")[0]
    widths = [line.count("|") for line in table.splitlines()]
    assert len(widths) == 5 and len(set(widths)) == 1  # head, rule, AR baseline, 2 variants


def test_stamps_reuse_only_identical_settings_with_the_output_present(tmp_path):
    import quality

    stamps = quality.Stamps(str(tmp_path))
    out = tmp_path / "ar"
    settings = {"upstream": {"text_chars": 10}, "command": ["a", "b"]}
    stamps.write("ar", settings, 12.34, result={"x": 1})
    assert stamps.lookup("ar", settings, str(out)) is None  # the output is gone
    out.mkdir()
    assert stamps.lookup("ar", settings, str(out)) == {"settings": settings, "seconds": 12.3, "result": {"x": 1}}
    assert stamps.lookup("ar", {**settings, "command": ["a", "c"]}, str(out)) is None
    assert stamps.lookup("convert", settings, str(out)) is None


def test_a_variant_with_a_flag_this_checkout_lacks_is_recorded_and_skipped(tmp_path, capsys):
    import quality

    plan = quality.QualityPlan.from_demo(quick=True)
    good = qv.by_name(["llada2"])[0]
    bad = qv.Variant("future", "d", False, (*qv.LLADA2, "--dllm-no-such-flag"), eval_flags=("--dllm-other",))
    ablation = quality.Ablation(str(tmp_path), plan, [good, bad], [1234])
    assert ablation.missing_flags(good) == []
    out = ablation.variant(bad, 1234)
    assert out["status"] == "failed" and out["stage"] == "flags"
    assert out["error"] == ("--dllm-no-such-flag, --dllm-other: not a megatron_dllm.pretrain flag in this "
                            "checkout (not implemented yet?); variant skipped")
    assert ablation.runner.index == 3 and not os.path.exists(tmp_path / "runs")  # its 3 stages counted, none run
    assert "future, seed 1234: skipped" in capsys.readouterr().out


def test_quick_plan_sweeps_through_0_9_and_seeds_are_checked():
    import quality

    plan = quality.QualityPlan.from_demo(quick=True)
    assert 0.9 in plan.thresholds and plan.dllm_iters == 6
    assert quality.QualityPlan.from_demo(quick=False).dllm_iters == quality.Plan().dllm_iters
    assert quality.parse_seeds("1234, 4321") == [1234, 4321]
    with pytest.raises(ValueError, match="expected comma-separated integers"):
        quality.parse_seeds("12a")
    with pytest.raises(ValueError, match="distinct integers"):
        quality.parse_seeds("1,1")
