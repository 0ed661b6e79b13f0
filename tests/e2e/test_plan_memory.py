"""tools/plan_memory.py: JSON and table output, presets at their example layouts, one-line errors."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIB = 2 ** 30


def _run(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "plan_memory.py"), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--preset", "tiny-moe", "--ep", "3"], "--num-experts 8 is not divisible by --expert-model-parallel-size 3"),
        (["--preset", "tiny-moe", "--tp", "3"], "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3"),
        (["--preset", "tiny-dense", "--pp", "3"], "--num-layers 2 is not divisible by --pipeline-model-parallel-size 3"),
        (["--preset", "tiny-moe", "--tp", "2"], "needs --sequence-parallel"),
        (["--preset", "llada2.0-mini", "--ep", "8", "--dp", "2"], "choose --dp a multiple of 8"),
        (["--preset", "tiny-dense", "--dp", "0"], "--dp must be >= 1"),
        (["--preset", "nope"], "unknown preset 'nope'; choose one of:"),
        (["--config", "does_not_exist.yaml"], "config file not found: does_not_exist.yaml"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(args, message):
    proc = _run(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert proc.stdout == ""


def test_tiny_json_is_consistent():
    proc = _run("--preset", "tiny-moe", "--device", "cpu", "--micro-batch-size", "2", "--json",
                "--gpu-memory-gb", "0.001", "--reserved-gb", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout)
    (stage,) = plan["stages"]
    assert stage["num_params"] == 169344                          # tools/model_info.py total_params
    assert stage["param_bytes"] >= 4 * stage["num_params"]         # fp32, padded DDP buffer
    for layout in ("bd", "mdlm"):
        assert stage["total_bytes"][layout] == (stage["param_bytes"] + stage["grad_bytes"]
                                                + stage["optimizer_bytes"] + stage["activation_bytes"][layout])
    # the BD input [xt ; x0] is twice as long as the MDLM input
    assert stage["activation_bytes"]["bd"] > 1.8 * stage["activation_bytes"]["mdlm"]
    assert plan["fits"] == {"bd": False, "mdlm": False}


# (config, total parameters (tools/model_info.py), routed-expert parameters of the whole model)
EXAMPLES = [
    ("llada2_mini.yaml", 16.26e9, 19 * 256 * 3 * 2048 * 512),
    ("llada2_flash.yaml", 102.9e9, 31 * 256 * 3 * 4096 * 1024),
    ("llada_moe_7b.yaml", 7.03e9, 16 * 64 * 3 * 2048 * 1024),
]


@pytest.mark.parametrize("config,total,routed", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_layouts(config, total, routed):
    proc = _run("--config", os.path.join(ROOT, "examples", "configs", config), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout)
    layout = plan["layout"]
    ep, pp = layout["expert_model_parallel_size"], layout["pipeline_model_parallel_size"]
    tp = layout["tensor_model_parallel_size"]
    assert ep == 8 and layout["data_parallel_size"] == 8 and len(plan["stages"]) == pp
    # the stages together hold 1/TP of the model once, with 1/EP of the routed experts (untied
    # embeddings or PP = 1: no embedding copy; norms and routers, replicated over TP, are < 1%)
    held = sum(stage["num_params"] for stage in plan["stages"])
    assert held == pytest.approx((total - routed * (ep - 1) / ep) / tp, rel=0.01)
    for stage in plan["stages"]:
        assert stage["param_bytes"] == pytest.approx(2 * stage["num_params"], rel=0.001)   # bf16
        assert stage["grad_bytes"] == pytest.approx(4 * stage["num_params"], rel=0.001)    # fp32 buffers
    if config == "llada2_mini.yaml":
        # EP 8 x DP 8: the expert data-parallel group has one rank, so only the non-expert part of
        # the fp32 main parameters + Adam moments (12 B) is sharded over DP 8
        (stage,) = plan["stages"]
        non_expert = stage["num_params"] - routed / 8
        assert stage["optimizer_bytes"] == pytest.approx(12 * (routed / 8 + non_expert / 8), rel=0.01)
        assert plan["fits"] == {"bd": True, "mdlm": True}


def test_table_output():
    proc = _run("--preset", "tiny-dense", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "total BD" in proc.stdout and "fits on a GPU of 80 GiB" in proc.stdout
    assert "activations are an estimate" in proc.stdout


def _peak(*args):
    proc = _run("--preset", "llada2.0-mini", "--ep", "8", "--dp", "8", "--seq-length", "16384", "--json", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    return out, max(out["peak"][k]["total_bytes"] for k in ("bd", "mdlm"))


def test_recompute_auto_picks_the_least_recompute_that_fits():
    _, none = _peak("--recompute", "none")
    _, full = _peak("--recompute", "full")
    assert full < none  # the activation model gives full recompute less memory
    room = (full + none) / 2 / GIB  # fits full, not none
    out, _ = _peak("--recompute", "auto", "--gpu-memory-gb", f"{room + 4:.3f}", "--reserved-gb", "4")
    auto = out["recompute_auto"]
    assert auto["chosen"] in ("selective", "full") and auto["peak_bytes"]["none"] == none
    assert auto["peak_bytes"][auto["chosen"]] <= room * GIB < none
    assert auto["flags"].startswith("--recompute-granularity ")
    out, _ = _peak("--recompute", "auto", "--gpu-memory-gb", "4000")
    assert out["recompute_auto"] == {"peak_bytes": {"none": none}, "chosen": "none", "flags": ""}
    proc = _run("--preset", "llada2.0-mini", "--ep", "8", "--dp", "8", "--seq-length", "16384", "--recompute",
                "auto", "--gpu-memory-gb", "8")
    assert proc.returncode == 0 and "recompute auto: nothing fits in 4.0 GiB" in proc.stdout


def _cp_plan(cp, *extra):
    proc = _run("--preset", "llada2.0-mini", "--ep", "8", "--seq-length", "32768", "--cp", str(cp), "--json", *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_context_parallel_shares_activations_and_optimizer_state():
    one, two = _cp_plan(1, "--dp", "8"), _cp_plan(2, "--dp", "4")
    assert two["layout"]["context_parallel_size"] == 2 and two["layout"]["data_parallel_size"] == 4
    s1, s2 = one["stages"][0], two["stages"][0]
    assert s1["param_bytes"] == s2["param_bytes"]  # CP replicates the weights
    assert s1["optimizer_bytes"] == s2["optimizer_bytes"]  # sharded over DP x CP = 8 either way
    for layout in ("bd", "mdlm"):
        # each rank holds 1/CP of the tokens, plus the gathered keys / values of every layer
        a1, a2 = (s["activation_bytes"][layout] for s in (s1, s2))
        assert a1 / 2 < a2 < 0.55 * a1


@pytest.mark.parametrize("config", ["llada2_mini_32k.yaml", "llada2_flash_32k.yaml"])
def test_long_context_examples_fit_80_gib(config):
    proc = _run("--config", os.path.join(ROOT, "examples", "configs", config), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout)
    assert plan["layout"]["context_parallel_size"] == 8 and plan["fits"] == {"bd": True, "mdlm": True}


def test_context_parallel_needs_a_divisible_sequence():
    proc = _run("--preset", "tiny-moe", "--cp", "3", "--seq-length", "64")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --seq-length 64 must be a multiple of --cp 3"
