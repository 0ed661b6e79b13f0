"""tools/convert_ar_to_dllm.py, tools/verify_conversion.py and tools/export_hf.py end to end, and bad input.

An AR tiny-MoE run of the pretraining CLI (``--dllm-objective ar``, optimizer state in the checkpoint)
is converted; ``megatron_dllm.pretrain --load`` must resume it at iteration 0 with a fresh optimizer.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.e2e.cli import ROOT, env, metrics, pretrain

pytestmark = pytest.mark.slow
CONVERT = os.path.join(ROOT, "tools", "convert_ar_to_dllm.py")
VERIFY = os.path.join(ROOT, "tools", "verify_conversion.py")
AR_FLAGS = ["--preset", "tiny-moe", "--mock-data", "--device", "cpu", "--seq-length", "32",
            "--micro-batch-size", "2", "--global-batch-size", "2", "--log-interval", "1"]


def tool(script, *args, timeout=300):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def tree_digest(path):
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            full = os.path.join(folder, name)
            digest.update(full.encode())
            digest.update(str(os.stat(full).st_mtime_ns).encode())
            with open(full, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ar = root / "ar"
    pretrain(AR_FLAGS + ["--dllm-objective", "ar", "--train-iters", "2", "--save", str(ar)])
    before = tree_digest(ar)
    out = root / "nested" / "dllm"
    proc = tool(CONVERT, "--load", str(ar), "--save", str(out), "--mask-token-id", "255")
    return root, ar, out, proc, before


def test_convert_writes_a_dllm_checkpoint(converted):
    root, ar, out, proc, before = converted
    assert proc.returncode == 0, proc.stderr
    assert "resume with: python -m megatron_dllm.pretrain --load" in proc.stdout
    assert "converting: 100.0%" in proc.stderr  # progress
    assert open(out / "latest_checkpointed_iteration.txt").read() == "0"
    meta = json.load(open(out / "iter_0000000" / "dllm_meta.json"))
    assert meta["has_optimizer"] is False and meta["mask_token_id"] == 255 and meta["objective"] == "mdlm"
    assert meta["conversion"]["source"]["objective"] == "ar" and meta["conversion"]["source"]["iteration"] == 2
    assert [p.name for p in (root / "nested").iterdir()] == ["dllm"]  # no temporary directory left
    assert tree_digest(ar) == before  # the source is only read


def test_pretrain_resumes_the_converted_checkpoint(converted, tmp_path):
    _, _, out, _, _ = converted
    proc = pretrain(["--preset", "tiny-moe", "--mock-data", "--device", "cpu", "--load", str(out),
                     "--save", str(tmp_path / "x"), "--train-iters", "2", "--seq-length", "32",
                     "--micro-batch-size", "2", "--global-batch-size", "2", "--log-interval", "1"])
    assert "(optimizer fresh); starting at iteration 0" in proc.stdout
    records = metrics(str(tmp_path / "x" / "metrics.jsonl"))
    assert [r["iteration"] for r in records] == [1, 2] and all(r["layout"] == "mdlm" for r in records)
    assert all(0 < r["loss"] < 20 for r in records)


def test_verify_cli_reports_equal_logits(converted):
    _, ar, out, _, _ = converted
    proc = tool(VERIFY, "--ar", str(ar), "--dllm", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
    assert report["ok"] and report["max_abs_dlogits"] <= 1e-5 and report["kl_mean"] <= 1e-10
    assert report["ar_loader"] == "dist_checkpointing"
    assert abs(report["ar_next_token_ce"] - report["converted_next_token_ce"]) <= 1e-6
    assert proc.stdout.strip().splitlines()[-1].startswith("OK: max |dlogits| = ")
    refused = tool(VERIFY, "--ar", str(ar), "--dllm", str(out), "--tolerance", "-1", "--seq-length", "8")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: --tolerance -1.0 must be a finite number >= 0")


def test_tokenizer_mask_token_is_used(converted, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from megatron_dllm.convert.convert import ConvertRequest, prepare

    _, ar, _, _, _ = converted
    plans = {}
    for name, piece7 in (("with_mask", "<|mask|>"), ("without_mask", "plain")):
        vocab = {f"word{i}": i for i in range(249)}  # 250 tokens: ids 0..248 and </s> = 249
        del vocab["word7"]
        vocab[piece7], vocab["</s>"] = 7, 249
        tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="word0"))
        tok.save(str(tmp_path / f"{name}.json"))
        request = ConvertRequest(load=str(ar), save=str(tmp_path / name), tokenizer_model=str(tmp_path / f"{name}.json"))
        plans[name] = prepare(request).plan
    assert (plans["with_mask"].how, plans["with_mask"].mask_token_id, plans["with_mask"].vocab_size) == ("tokenizer", 7, 250)
    # no mask piece in the tokenizer: the first padded row of the 256-row table becomes [MASK]
    assert (plans["without_mask"].how, plans["without_mask"].mask_token_id) == ("padded-row", 250)
    assert sorted(os.listdir(tmp_path)) == ["with_mask.json", "without_mask.json"]  # prepare writes nothing


def _bad_legacy(root):
    # PP=2 according to its args, but the second stage's file is missing
    directory = root / "legacy" / "iter_0000003" / "mp_rank_00_000"
    directory.mkdir(parents=True)
    args = argparse.Namespace(tensor_model_parallel_size=1, pipeline_model_parallel_size=2,
                              expert_model_parallel_size=1, num_layers=2, hidden_size=64, num_attention_heads=4)
    torch.save({"model": {}, "args": args, "iteration": 3}, directory / "model_optim_rng.pt")
    (root / "legacy" / "latest_checkpointed_iteration.txt").write_text("3")
    return root / "legacy"


def _bad_cases(root, ar):
    tracker_only = root / "tracker_only"
    tracker_only.mkdir()
    (tracker_only / "latest_checkpointed_iteration.txt").write_text("5")
    no_metadata = root / "no_metadata"
    shutil.copytree(ar, no_metadata)
    os.remove(no_metadata / "iter_0000002" / ".metadata")
    unknown = root / "unknown" / "iter_0000001"
    unknown.mkdir(parents=True)
    (unknown / "model.safetensors").write_bytes(b"{}")
    (root / "unknown" / "latest_checkpointed_iteration.txt").write_text("1")
    taken = root / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    return {
        "missing": ([str(root / "nope")], "does not exist"),
        "tracker without checkpoint": ([str(tracker_only)], "names iter_0000005 but"),
        "torch_dist without metadata": ([str(no_metadata)], "without its .metadata file: it is partial"),
        "legacy missing a rank": ([str(_bad_legacy(root))], "is partial: missing mp_rank_00_001/model_optim_rng.pt"),
        "unknown layout": ([str(root / "unknown")], "has an unknown layout"),
        "TP not dividing heads": ([str(ar), "--target-tensor-model-parallel-size", "3"],
                                  "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3"),
        "mask id out of range": ([str(ar), "--mask-token-id", "100000"], "--mask-token-id 100000 is out of range"),
        "output exists": ([str(ar)], "already exists: choose a new directory"),
    }


def test_bad_input_is_one_line_error_and_writes_nothing(converted, tmp_path):
    _, ar, _, _, _ = converted
    cases = _bad_cases(tmp_path, ar)
    for name, (load_args, message) in cases.items():
        save = tmp_path / "taken" if name == "output exists" else tmp_path / f"out_{len(name)}"
        listing = sorted(os.listdir(tmp_path))
        proc = tool(CONVERT, "--load", *load_args, "--save", str(save))
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (name, proc.stderr)
        assert sorted(os.listdir(tmp_path)) == listing, name  # nothing written, not even a temporary dir
    assert sorted(os.listdir(tmp_path / "taken")) == ["keep.txt"]


# ------------------------------------------------------------------ tools/export_hf.py on the converted model
EXPORT = os.path.join(ROOT, "tools", "export_hf.py")


def export(*args, hf_home):
    e = env()
    e["HF_HOME"] = str(hf_home)
    return subprocess.run([sys.executable, EXPORT, *args], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def exported(converted):
    root, _, out, _, _ = converted
    hf = root / "hf"
    proc = export("--load", str(out), "--save", str(hf), "--max-shard-size", "200KB", "--check",
                  hf_home=root / "hf_home")
    return root, out, hf, proc


def test_export_check_passes(exported):
    _, _, _, proc = exported
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("OK: HF vs Megatron max |dlogits| = ")
    assert float(last.split("= ")[1].split()[0]) <= 1e-4
    # tiny-moe keeps 2 of 4 groups for top-2: the project routes as the released code (a group's top 2),
    # so the export has nothing to warn about routing
    assert "group-limited routing" not in proc.stderr


def test_export_files_and_index(exported):
    _, _, hf, _ = exported
    files = sorted(os.listdir(hf))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1 and all(f.startswith("model-") and f.endswith(f"-of-{len(shards):05d}.safetensors")
                                   for f in shards)
    for name in ("config.json", "model.safetensors.index.json", "modeling_llada2_moe.py",
                 "configuration_llada2_moe.py", "export_info.json"):
        assert name in files
    index = json.load(open(hf / "model.safetensors.index.json"))
    from safetensors import safe_open

    total = 0
    for name, file in index["weight_map"].items():
        with safe_open(str(hf / file), "pt") as handle:
            total += handle.get_tensor(name).numel() * 4
    assert total == index["metadata"]["total_size"]
    config = json.load(open(hf / "config.json"))
    assert config["model_type"] == "llada2_moe" and config["num_experts"] == 8 and config["mask_token_id"] == 255


def test_export_bad_input(exported, tmp_path):
    root, dllm, hf, _ = exported
    cases = [(["--load", str(tmp_path / "missing"), "--save", str(tmp_path / "a")], "does not exist"),
             (["--load", str(dllm), "--save", str(hf)], "already exists"),
             (["--load", str(dllm), "--save", str(tmp_path / "b"), "--max-shard-size", "big"], "give a size like")]
    for args, message in cases:
        before = sorted(os.listdir(tmp_path))
        proc = export(*args, hf_home=root / "hf_home")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
        assert sorted(os.listdir(tmp_path)) == before


def test_token_shift_conversion_is_recorded_and_verified_with_its_alignment(converted, tmp_path):
    _, ar, same, _, _ = converted
    out = tmp_path / "shifted"
    proc = tool(CONVERT, "--load", str(ar), "--save", str(out), "--mask-token-id", "255", "--token-shift")
    assert proc.returncode == 0, proc.stderr
    assert "--dllm-token-shift" in proc.stdout  # the resume hint carries the training flag
    meta = json.load(open(out / "iter_0000000" / "dllm_meta.json"))
    assert meta["token_shift"] is True and meta["label_shift"] is False
    assert meta["run"]["diffusion"]["token_shift"] is True
    reports = {}
    for name, path in (("same", same), ("shift", out)):
        run = tool(VERIFY, "--ar", str(ar), "--dllm", str(path), "--seq-length", "16")
        assert run.returncode == 0, run.stderr
        reports[name] = json.loads(run.stdout[: run.stdout.rindex("}") + 1])
    assert reports["shift"]["alignment"] == "token_shift" and reports["same"]["alignment"] == "same_position"
    assert reports["shift"]["max_abs_dlogits"] <= 1e-5  # the causal run is the AR model either way
    assert reports["shift"]["dllm_masked_ce"] != reports["same"]["dllm_masked_ce"]  # read at i - 1
    both = tool(CONVERT, "--load", str(ar), "--save", str(tmp_path / "both"), "--mask-token-id", "255",
                "--token-shift", "--label-shift")
    assert both.returncode == 2 and "two shifts: pick one" in both.stderr
    assert not (tmp_path / "both").exists()
