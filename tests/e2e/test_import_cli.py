"""tools/import_hf.py end to end: a tiny LLaDA2 HF checkpoint imported, then trained and decoded from."""

import json
import os
import subprocess
import sys

from tests.distributed.import_workers import MASK_ID, write_hf
from tests.e2e.cli import ROOT, env, metrics, pretrain

TOOL = os.path.join(ROOT, "tools", "import_hf.py")


def test_import_then_pretrain_and_generate(tmp_path):
    hf, out = str(tmp_path / "hf"), str(tmp_path / "imported")
    write_hf(hf, "llada2", seed=3)
    proc = subprocess.run([sys.executable, TOOL, "--hf", hf, "--save", out, "--dtype", "fp32"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "importing: 100.0%" in proc.stderr  # progress
    summary = json.loads(proc.stdout[proc.stdout.index("{"): proc.stdout.rindex("}") + 1])
    assert summary["family"] == "llada2_moe" and summary["mask_token_id"] == MASK_ID
    assert f"then: python -m megatron_dllm.pretrain --config {out}/model.yaml --load {out}" in proc.stdout
    assert sorted(os.listdir(out)) == ["iter_0000000", "latest_checkpointed_iteration.txt", "model.yaml"]
    run = pretrain(["--config", os.path.join(out, "model.yaml"), "--mock-data", "--device", "cpu", "--load", out,
                    "--save", str(tmp_path / "cpt"), "--train-iters", "1", "--seq-length", "32",
                    "--micro-batch-size", "2", "--global-batch-size", "2", "--log-interval", "1"])
    assert "(optimizer fresh); starting at iteration 0" in run.stdout
    records = metrics(str(tmp_path / "cpt" / "metrics.jsonl"))
    assert [r["iteration"] for r in records] == [1] and 0 < records[0]["loss"] < 20
    gen = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "generate.py"), "--load", out,
                          "--prompt-ids", "5 9 5 9", "--gen-length", "8", "--block-length", "4", "--json",
                          "--device", "cpu"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr[-3000:]
    result = json.loads([line for line in gen.stdout.splitlines() if line.startswith("{")][0])
    assert result["num_tokens"] == 8 and all(0 <= t < 256 for t in result["tokens"])
