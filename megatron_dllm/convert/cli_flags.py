"""Flags shared by the converter CLIs (tools/convert_ar_to_dllm.py, tools/import_hf.py)."""

from __future__ import annotations

import argparse


def add_target_layout(p: argparse.ArgumentParser) -> None:
    """--target-{tensor,pipeline,expert}-model-parallel-size: the layout the output is padded and checked for."""
    p.add_argument("--target-tensor-model-parallel-size", type=int, default=1,
                   help="TP the output is padded and validated for (default 1).")
    p.add_argument("--target-pipeline-model-parallel-size", type=int, default=1, help="PP to validate for.")
    p.add_argument("--target-expert-model-parallel-size", type=int, default=1, help="EP to validate for.")


def add_output(p: argparse.ArgumentParser) -> None:
    """--max-file-gb and --quiet: how the output is written."""
    p.add_argument("--max-file-gb", type=float, default=8.0, help="Size of each output data file.")
    p.add_argument("--quiet", action="store_true", help="No progress bar.")
