"""bench/quality.py --quick end to end: data, AR, conversion, the AR baseline and three variants on a
few iterations; the results JSON has every field in range, the pictures and the markdown section exist."""

import json
import os
import subprocess
import sys

import pytest

from tests.e2e.cli import ROOT, env

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(ROOT, "bench", "quality.py")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quality")
    md = tmp / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nkept\n")
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", str(tmp / "run"), "--markdown", str(md)],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp / "run" / "results" / "quality.json") as handle:
        return tmp, json.load(handle), proc.stdout, md.read_text()


def test_progress_names_each_stage(quick):
    _, result, stdout, _ = quick
    total = 4 + 2 + 3 * 3
    for i in range(1, total + 1):
        assert f"[quality {i}/{total}]" in stdout
    assert "llada2, seed 1234: dLLM training, 6 iterations" in stdout
    assert "scratch, seed 1234: dLLM training, 18 iterations (from scratch)" in stdout


def test_every_variant_has_its_numbers_in_range(quick):
    _, result, _, _ = quick
    assert [v["name"] for v in result["variants"]] == ["llada2", "warmup_none", "scratch"]
    thresholds = result["plan"]["thresholds"]
    for v in result["variants"]:
        assert v["status"] == "ok", v.get("errors")
        run = v["per_seed"]["1234"]
        assert [r["threshold"] for r in run["sweep"]] == sorted(thresholds, reverse=True)
        for row in run["sweep"]:
            assert 0.0 <= row["accuracy"] <= 1.0 and row["total"] == 20
            assert 0.0 < row["tokens_per_forward"] <= result["plan"]["decode_block"]
            assert row["decode_seconds"] > 0 and row["speedup_vs_ar"] > 0
        assert run["best"] in run["sweep"] and run["at_0_9"]["threshold"] == 0.9
        assert run["best"]["accuracy"] == max(r["accuracy"] for r in run["sweep"])
        assert 0 < run["valid_nelbo"] < 20  # nats per token; the vocabulary has 1024 pieces (6.9 nats)
        curve = run["train_loss"]
        assert curve["iteration"] == list(range(1, run["iterations"] + 1))  # every iteration recorded
        assert run["peak_loss_first_20"] == max(curve["loss"][:20])
        assert set(run["seconds"]) == set(run["commands"]) == {"train", "nelbo", "task"}
        assert "--log-interval 1 " in run["commands"]["train"] and "--seed 1234" in run["commands"]["train"]
        assert v["mean"]["best"]["accuracy"] == run["best"]["accuracy"]
    by_name = {v["name"]: v for v in result["variants"]}
    assert by_name["scratch"]["per_seed"]["1234"]["iterations"] == 12 + 6
    assert "--load" not in by_name["scratch"]["flags"]
    assert by_name["warmup_none"]["flags"][:2] == ["--dllm-block-schedule", "stable:8@inf"]
    # the abrupt switch trains at block 8 from the first step, the warm-up starts at block 1
    assert set(by_name["warmup_none"]["per_seed"]["1234"]["train_loss"]["block_size"]) == {8}
    assert by_name["llada2"]["per_seed"]["1234"]["train_loss"]["block_size"][0] == 1


def test_ar_baseline_claims_commands_and_stages(quick):
    _, result, _, _ = quick
    base = result["ar_baseline"]["per_seed"]["1234"]
    assert base["status"] == "ok" and 0.0 <= base["accuracy"] <= 1.0 and base["decode_seconds"] > 0
    assert base["tokens_per_forward"] == 1.0 and base["seconds"]["train"] > 0
    assert 0.0 <= result["ar"]["accuracy_at_conversion"] <= 1.0
    assert [c["met"] in (True, False) for c in result["claims"]] == [True, True, True]
    assert len(result["git"]["commit"]) == 40
    assert any(c.startswith(".venv/bin/python tools/convert_ar_to_dllm.py") or "convert_ar_to_dllm.py" in c
               for c in result["commands"])
    names = [s["name"] for s in result["stages"]]
    assert names[:4] == ["data", "ar_pretrain", "convert", "task_ar_converted"]
    assert all(s["seconds"] >= 0 for s in result["stages"])


def test_pictures_and_markdown(quick):
    tmp, result, _, md = quick
    for key in ("tradeoff", "conversion_loss"):
        path = result["pictures"][key]
        assert path.startswith(str(tmp / "run" / "results"))
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert md.startswith("# Benchmarks\n\nkept\n")
    assert "## Quality: AR -> dLLM ablation" in md and "`python bench/quality.py --quick" in md
    assert "| `scratch` | yes |" in md and "### The paper's claims, measured" in md


def test_a_rerun_reuses_the_cached_stages_and_rejects_bad_input(quick):
    tmp, _, _, _ = quick
    stamps = sorted(os.listdir(tmp / "run" / "stamps"))
    assert stamps == ["ar_pretrain.json", "convert.json", "data.json", "task_ar_converted.json"]
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", str(tmp / "run"), "--variants", "nope"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown variant(s) nope; choose from llada2,")
