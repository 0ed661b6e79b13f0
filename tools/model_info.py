#!/usr/bin/env python
"""Print a model's parameter counts and layer layout as JSON, built on the meta device.

    python tools/model_info.py --preset llada2.0-mini
    python tools/model_info.py --config examples/configs/tiny_moe_cpu.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="model preset name (see megatron_dllm.model.presets)")
    parser.add_argument("--config", help="YAML file of model flag values (Megatron-LM names)")
    args = parser.parse_args(argv)
    if bool(args.preset) == bool(args.config):
        parser.error("give exactly one of --preset or --config")

    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    warnings.filterwarnings("ignore")
    from megatron_dllm.config import ConfigError
    from megatron_dllm.model.presets import get_preset

    try:
        if args.preset:
            model_cfg = get_preset(args.preset)
        else:
            from megatron_dllm.config_io import load_model_config

            model_cfg = load_model_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from megatron_dllm.model.info import model_info
    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import init_process_group, teardown

    device = setup_device("cpu")
    init_process_group(device)
    try:
        info = model_info(model_cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        teardown()
    info["preset"] = args.preset
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
