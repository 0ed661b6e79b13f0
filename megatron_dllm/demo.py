"""`make demo`: the end-to-end quickstart.

Not yet: the quickstart (corpus -> tokenizer -> AR pretraining -> conversion -> dLLM curriculum ->
generation) needs the pretraining entry point, converter and decoder, which are still being built.
Until then the demo shows what exists: it builds the tiny MoE dLLM and the LLaDA2.0 presets on the
meta device and prints their parameter counts.
"""

from __future__ import annotations

import json
import os
import sys
import warnings


def main() -> int:
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    warnings.filterwarnings("ignore")
    print("megatron_dllm demo: the end-to-end quickstart is not available yet "
          "(it needs the pretraining entry point); showing the model presets instead.", flush=True)
    from megatron_dllm.model.info import model_info
    from megatron_dllm.model.presets import get_preset
    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group, teardown

    init_process_group(setup_device("cpu"))
    try:
        for name in ("tiny-moe", "llada2.0-mini", "llada2.0-flash", "llada-moe-7b-a1b"):
            info = model_info(get_preset(name))
            print(json.dumps({"preset": name, "total_params": info["total_params"],
                              "active_params": info["active_params"]}), flush=True)
    finally:
        teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
