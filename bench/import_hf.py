"""Benchmark 5: the HF -> Megatron import (``tools/import_hf.py``) against ``cp -r`` + ``sync``.

1. writes a synthetic BailingMoeV2 (Ling-2.0 layout) HF checkpoint of ~2.3 GB in bf16, as the released
   ones are stored: ``config.json`` + safetensors shards + index, tensor names and shapes from the
   package's own key map (``hf_keymap.hf_tensors`` of the model ``config.json`` describes). The shape
   is LLaDA2.0-mini's layer with fewer experts and layers: hidden 1024, 16 / 4 heads x 64, 1 dense +
   8 MoE layers of 64 experts (top-8 of 8 groups, 4 kept), Ling's vocabulary 157184 (embedding and
   lm_head are the largest tensors, 307 MiB each);
2. ``cp -r SRC DST && sync`` and ``tools/import_hf.py --hf SRC --save OUT --quiet`` alternate for
   ``--rounds`` rounds (order swapped every round; an untimed ``sync`` after each deletion), each under
   ``/usr/bin/time -v`` (wall time, peak RSS; ``bench_synthetic._timed``). cp and the import read a source in the
   page cache (it was just written; dropping the cache needs root);
3. prints JSON: wall times, ``import / (cp + sync)`` per round (median), the import's own tensor phase
   (``seconds`` of its summary: reading + writing, without interpreter start-up and imports), peak RSS
   and the bound ``2 x largest tensor + 1 GiB``, CPU seconds (user + system) of each, and the goals
   of issue 14 (import throughput >= 50 % of cp + sync, i.e. ratio <= 2; peak RSS <= the bound).

    python bench/import_hf.py --dir /tmp/bench_import [--rounds 2] [--moe-layers 8] [--json-out FILE] [--keep]

The measured results behind BENCHMARKS.md "HF import" are in ``bench/results/import_hf.json``.

Needs ~3x the checkpoint size free under ``--dir`` (source, copy, import output). Not part of
``bench/run.py`` (minutes, GBs of disk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402
from megatron_dllm.convert.bench_synthetic import _du, _timed  # noqa: E402

TOOL = os.path.join(common.ROOT, "tools", "import_hf.py")
INFO = "bench_info.json"  # written beside the checkpoint: parameters, largest tensor
SHARD_BYTES = 1 << 30  # released Ling / LLaDA2 shards are a few GB; several shards exercise the index

CONFIG = dict(
    model_type="bailing_moe", architectures=["BailingMoeV2ForCausalLM"], vocab_size=157184, hidden_size=1024,
    intermediate_size=2816, num_hidden_layers=9, num_attention_heads=16, num_key_value_heads=4, head_dim=64,
    hidden_act="silu", use_qkv_bias=False, use_bias=False, use_qk_norm=True, rms_norm_eps=1e-6,
    tie_word_embeddings=False, max_position_embeddings=4096, rope_theta=600000.0, partial_rotary_factor=0.5,
    num_experts=64, num_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4,
    routed_scaling_factor=2.5, moe_intermediate_size=512, first_k_dense_replace=1, initializer_range=0.006,
    moe_router_enable_expert_bias=True, num_nextn_predict_layers=0, max_window_layers=9, pad_token_id=156892,
    torch_dtype="bfloat16")


def bench_config(moe_layers: int = 8) -> dict:
    """CONFIG with ``moe_layers`` MoE layers after the dense one (each ~201 MiB of experts in bf16)."""
    return dict(CONFIG, num_hidden_layers=1 + moe_layers, max_window_layers=1 + moe_layers)


def write_hf_checkpoint(directory: str, config: dict = CONFIG, shard_bytes: int = SHARD_BYTES) -> dict:
    """Write ``config`` with random bf16 weights (norms 1, expert bias fp32) in the HF layout.

    Returns the parameter count and the largest tensor's bytes. Tensors are made one at a time and a
    shard is written when it reaches ``shard_bytes``, so the writer holds at most one shard.
    """
    import torch
    from safetensors.torch import save_file

    from megatron_dllm.convert.hf_import_config import model_config_from_hf
    from megatron_dllm.convert.hf_keymap import hf_tensors

    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w") as handle:
        json.dump(config, handle, indent=2)
    model = model_config_from_hf(config).model
    gen = torch.Generator().manual_seed(0)
    shard, shard_size, weight_map, params, largest, files = {}, 0, {}, 0, 0, []

    def flush():
        nonlocal shard, shard_size
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, os.path.join(directory, name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in shard})
        shard, shard_size = {}, 0

    for item in hf_tensors(model, config["vocab_size"], has_expert_bias=True):
        if item.name.endswith("expert_bias"):
            data = 0.05 * torch.randn(item.shape, generator=gen)
        elif item.name.endswith("norm.weight"):
            data = torch.ones(item.shape, dtype=torch.bfloat16)
        else:
            data = torch.randn(item.shape, generator=gen, dtype=torch.bfloat16).mul_(0.02)
        nbytes = data.numel() * data.element_size()
        params += data.numel()
        largest = max(largest, nbytes)
        shard[item.name] = data
        shard_size += nbytes
        if shard_size >= shard_bytes:
            flush()
    if shard:
        flush()
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as handle:
        json.dump({"metadata": {"total_size": sum(os.path.getsize(os.path.join(directory, f)) for f in files)},
                   "weight_map": weight_map}, handle, indent=2)
    info = {"params": params, "largest_tensor_bytes": largest, "shards": len(files)}
    with open(os.path.join(directory, INFO), "w") as handle:
        json.dump(info, handle)
    return info


def _summary(stdout: str) -> dict:
    """The JSON summary ``tools/import_hf.py`` prints between its ``source:`` and ``then:`` lines."""
    text = stdout[stdout.index("\n{") + 1:stdout.rindex("\n}") + 2]
    return json.loads(text)


def run(directory: str, rounds: int = 2, keep: bool = False, source: str = None, moe_layers: int = 8) -> dict:
    """``source``: a checkpoint written earlier by :func:`write_hf_checkpoint` (kept), else a new one."""
    if os.path.exists(directory):
        raise SystemExit(f"error: {directory} exists: give a new scratch directory")
    os.makedirs(directory)
    # one torch thread, as every CPU benchmark here (bench_synthetic._timed inherits the environment)
    os.environ.update(common.bench_env({"OMP_NUM_THREADS": "1", "TORCHDYNAMO_DISABLE": "1",
                                        "PYTHONWARNINGS": "ignore"}))
    src = source or os.path.join(directory, "hf")
    try:
        start = time.perf_counter()
        if source:
            info = json.load(open(os.path.join(source, INFO)))
        else:
            common.log("import_hf: writing the synthetic HF checkpoint")
            info = write_hf_checkpoint(src, bench_config(moe_layers))
        made = round(time.perf_counter() - start, 1)
        size = _du(src) - os.path.getsize(os.path.join(src, INFO))
        os.sync()  # the source's own writeback is not charged to the first round
        copies, imports = [], []
        for r in range(rounds):
            common.log(f"import_hf: round {r + 1}/{rounds}")
            dst, out = os.path.join(directory, "copy"), os.path.join(directory, "out")
            order = [("cp", dst), ("import", out)] if r % 2 == 0 else [("import", out), ("cp", dst)]
            for what, path in order:
                if what == "cp":
                    copies.append(_timed(["sh", "-c", f"cp -r {src} {path} && sync"]))
                    copies[-1].pop("stdout")
                else:
                    run_ = _timed([sys.executable, TOOL, "--hf", src, "--save", path, "--quiet"])
                    summary = _summary(run_.pop("stdout"))
                    run_.update(tensor_phase_s=summary["seconds"], bytes_written=summary["bytes"])
                    imports.append(run_)
                shutil.rmtree(path)
                os.sync()  # untimed: ext4 (mounted with discard) commits the deletion at the next sync
        cp_s = [c["wall_s"] for c in copies]
        imp_s = [i["wall_s"] for i in imports]
        phase_s = [i["tensor_phase_s"] for i in imports]
        cpu = {"cp_and_sync": common.summary([c["cpu_s"] for c in copies]),
               "import": common.summary([i["cpu_s"] for i in imports])}
        peak = max(i["peak_rss_bytes"] for i in imports)
        bound = 2 * info["largest_tensor_bytes"] + (1 << 30)
        ratio = common.paired_ratio(imp_s, cp_s)
        return {
            "status": "ok", "checkpoint_bytes": size, "write_s": made, **info,
            "config": {k: v for k, v in json.load(open(os.path.join(src, "config.json"))).items()
                       if k in ("hidden_size", "num_hidden_layers", "num_experts", "vocab_size",
                                "moe_intermediate_size", "torch_dtype")},
            "cp_and_sync_s": common.summary(cp_s), "import_s": common.summary(imp_s),
            "import_tensor_phase_s": common.summary(phase_s), "cpu_s": cpu,
            "import_peak_rss_bytes": peak, "bound_bytes": bound,
            "cp_and_sync_peak_rss_bytes": max(c["peak_rss_bytes"] for c in copies),
            "ratios": {"import_over_cp_and_sync": round(ratio, 2),
                       "import_throughput_share_of_cp_and_sync": round(1 / ratio, 3),
                       "tensor_phase_over_cp_and_sync": round(common.paired_ratio(phase_s, cp_s), 2),
                       "peak_rss_over_bound": round(peak / bound, 3)},
            "goals": {"throughput_ge_50pct_of_cp_and_sync": ratio <= 2.0, "peak_rss_within_bound": peak <= bound},
            "import_GBps": round(size / common.median(imp_s) / 1e9, 3),
            "cp_and_sync_GBps": round(size / common.median(cp_s) / 1e9, 3),
            "cmd": "/usr/bin/time -v python tools/import_hf.py --hf SRC --save OUT --quiet  vs  "
                   "/usr/bin/time -v sh -c 'cp -r SRC DST && sync'",
        }
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="Scratch directory (must not exist; ~7 GB free needed).")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--moe-layers", type=int, default=8,
                   help="MoE layers of the synthetic model (8: 2.3 GB; each one more adds 0.21 GB).")
    p.add_argument("--keep", action="store_true", help="Keep the files afterwards.")
    p.add_argument("--source", help="Use this checkpoint (from an earlier --keep run: DIR/hf) instead of writing one.")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    result = run(args.dir, args.rounds, args.keep, args.source, args.moe_layers)
    if args.json_out:
        common.write_json(args.json_out, result)
    print(json.dumps(result, indent=2))
    return 0 if all(result["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
