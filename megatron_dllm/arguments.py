"""Command line generated from the typed configs in ``config.py``.

Flags use Megatron-LM's names (``--num-layers``, ``--tensor-model-parallel-size``, ``--lr-decay-style``,
...) and ``--dllm-*`` for the diffusion recipe. Values are resolved in this order, later wins:

    dataclass defaults  <  --preset NAME (model fields)  <  --config FILE.yaml  <  command-line flags

A YAML config holds ``flag: value`` pairs (with or without dashes; ``preset:`` allowed); an unknown key
is an error that suggests the closest flag.

Megatron-LM flags without a field here are looked up in ``megatron_flags.py``: accepted with no effect
(listed once at start-up) or rejected with one line. After parsing, ``resolve_megatron`` applies
Megatron-LM's own rules: sample counts become iterations, sequence parallelism is off at TP 1,
``--finetune`` loads neither optimizer nor RNG state. Abbreviated flags are not accepted.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import sys
import typing
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from megatron_dllm.config import (
    CheckpointConfig,
    ConfigError,
    DiffusionConfig,
    LoggingConfig,
    ModelConfig,
    ParallelConfig,
    TrainingConfig,
)
from megatron_dllm.data.config import DataConfig
from megatron_dllm.megatron_flags import split_argv, yaml_key


@dataclass
class RunConfig:
    """Everything a pretraining run needs, one section per concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    preset: Optional[str] = None
    accepted_flags: List[str] = field(default_factory=list)  # 'FLAG (why it has no effect here)'
    notes: List[str] = field(default_factory=list)           # Megatron-LM rules applied while resolving
    vocab_from_tokenizer: bool = False  # no --vocab-size and no preset: the tokenizer's size (Megatron-LM)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS: Tuple[Tuple[str, type], ...] = (
    ("model", ModelConfig),
    ("parallel", ParallelConfig),
    ("diffusion", DiffusionConfig),
    ("training", TrainingConfig),
    ("data", DataConfig),
    ("checkpoint", CheckpointConfig),
    ("logging", LoggingConfig),
)

# Megatron-LM spellings of "turn this default-on feature off".
_FALSE_FLAGS = {"add_bias_linear": ["--disable-bias-linear"]}


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _layer_freq_list(text: str) -> list:
    """A list literal, or Megatron-LM's '[0]*3+[1]*58' form (terms 'LIST' or 'LIST*N' joined by '+')."""
    value = []
    for term in text.replace(" ", "").split("+"):
        literal, _, times = term.partition("]*")
        items = ast.literal_eval(literal + "]" if times else literal)
        if not isinstance(items, list) or (times and not times.isdigit()):
            raise ValueError(term)
        value += items * (int(times) if times else 1)
    return value


def _parse_layer_freq(text):
    """--moe-layer-freq: an int (every N-th layer) or a list like [0,1,1,1] or [0]*3+[1]*58."""
    if isinstance(text, (int, list)):
        return text
    text = str(text).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        value = _layer_freq_list(text)
    except (ValueError, SyntaxError) as exc:
        raise argparse.ArgumentTypeError(
            f"--moe-layer-freq {text!r}: give an int or a list like [0,1,1] or [0]*1+[1]*19") from exc
    if not isinstance(value, list) or any(v not in (0, 1) for v in value):
        raise argparse.ArgumentTypeError("--moe-layer-freq list entries must be 0 or 1")
    return value


def _scalar_type(tp):
    """(python type, nargs) for an annotation such as Optional[int] or List[str]."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin is typing.Union and len(args) == 1:
        return _scalar_type(args[0])
    if origin in (list, List):
        return args[0], "+"
    if origin is typing.Union:  # Union[int, List[int]] -> moe_layer_freq
        return _parse_layer_freq, None
    return tp, None


def _field_table() -> Dict[str, Tuple[str, dataclasses.Field, object]]:
    """dest -> (section, field, resolved type); checks that names are unique across sections."""
    table = {}
    for section, cls in SECTIONS:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            dest = _flag(f)[2:].replace("-", "_")
            if dest in table:
                raise RuntimeError(f"flag {_flag(f)} defined twice ({table[dest][0]} and {section})")
            table[dest] = (section, f, hints[f.name])
    return table


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, exit 2 in pretrain) instead of printing usage."""

    def error(self, message):
        raise ConfigError(f"{message} (see --help; flags are spelled out in full, as in Megatron-LM)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser; every default is SUPPRESS so explicit flags can be told apart."""
    parser = _Parser(
        prog="python -m megatron_dllm.pretrain",
        description="Pretrain a masked-diffusion LM (or its AR baseline) on Megatron-Core.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument("--dry-run", action="store_true",
                        help="Parse, validate against WORLD_SIZE from the environment (default 1), build "
                             "the model on the meta device, print the resolved config, the parallel layout "
                             "and the memory plan, exit 0. Reads no data, tokenizer or checkpoint.")
    parser.add_argument("--preset", help="Model preset (llada2.0-mini, llada2.0-flash, llada-moe-7b-a1b, tiny-moe, ...).")
    parser.add_argument("--config", help="YAML file of flag values; command-line flags override it.")
    parser.add_argument("--group-query-attention", action="store_true",
                        help="Accepted for Megatron-LM compatibility; --num-query-groups sets GQA.")
    table = _field_table()
    for section, cls in SECTIONS:
        group = parser.add_argument_group(section)
        for f in dataclasses.fields(cls):
            dest = _flag(f)[2:].replace("-", "_")
            _, _, tp = table[dest]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            help_text = f"{f.metadata.get('help', '')} (default: {default})"
            if tp is bool:
                # argparse's BooleanOptionalAction reads any flag starting with --no- as False
                action = "store_true" if _flag(f).startswith("--no-") else argparse.BooleanOptionalAction
                group.add_argument(_flag(f), dest=dest, action=action, help=help_text)
                for false_flag in _FALSE_FLAGS.get(f.name, []):
                    group.add_argument(false_flag, dest=dest, action="store_false",
                                       help=f"Megatron-LM spelling of --no-{_flag(f)[2:]}.")
                continue
            typ, nargs = _scalar_type(tp)
            kwargs = dict(dest=dest, type=typ, help=help_text)
            if nargs:
                kwargs["nargs"] = nargs
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            group.add_argument(_flag(f), **kwargs)
    return parser


def _coerce(dest: str, value, table):
    """Check / convert a YAML value with the same rules as the command line."""
    section, f, tp = table[dest]
    if value is None:
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_flag(f)} expects true/false, got {value!r}")
        return value
    typ, nargs = _scalar_type(tp)
    try:
        if nargs:
            items = value if isinstance(value, list) else str(value).split()
            out = [typ(v) for v in items]
        elif isinstance(value, list) and typ is not _parse_layer_freq:
            raise ValueError("a list where a single value is expected")
        else:
            out = typ(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{_flag(f)}: invalid value {value!r} ({exc})") from exc
    choices = f.metadata.get("choices")
    if choices and out not in choices:
        raise ConfigError(f"{_flag(f)}: {out!r} is not one of {choices}")
    return out


def parse_args(argv: Optional[List[str]] = None) -> RunConfig:
    """Parse flags (and --preset / --config) into a RunConfig. Raises ConfigError on bad values."""
    from megatron_dllm.config_io import read_yaml
    from megatron_dllm.model.presets import get_preset

    parser = build_parser()
    argv, accepted = split_argv(list(sys.argv[1:] if argv is None else argv))
    cli = vars(parser.parse_args(argv))
    table = _field_table()
    values: Dict[str, object] = {}
    preset = cli.pop("preset", None)
    config_path = cli.pop("config", None)
    cli.pop("group_query_attention", None)
    cli.pop("dry_run", None)
    if config_path:
        for key, value in read_yaml(config_path).items():
            if key == "preset":
                preset = preset or value
                continue
            if key not in table and yaml_key(key):
                flag = yaml_key(key)
                text = [] if value is True else [str(v) for v in (value if isinstance(value, list) else [value])]
                accepted += split_argv([flag] + text)[1]
                continue
            if key not in table:
                close = difflib.get_close_matches(key, list(table), n=1)
                hint = f"; did you mean --{close[0].replace('_', '-')}?" if close else ""
                raise ConfigError(f"unknown key {key!r} in {config_path}{hint}")
            values[key] = _coerce(key, value, table)
    values.update(cli)
    run = RunConfig(preset=preset)
    if preset:
        run.model = get_preset(preset)
    sections = {name: {} for name, _ in SECTIONS}
    for dest, value in values.items():
        section, f, _ = table[dest]
        sections[section][f.name] = value
    for name, changes in sections.items():
        if changes:
            setattr(run, name, dataclasses.replace(getattr(run, name), **changes))
    run.accepted_flags = accepted
    run.vocab_from_tokenizer = "vocab_size" not in values and not preset
    return resolve_megatron(run)


def _samples_to_iters(samples: int, global_batch_size: int) -> int:
    return -(-samples // global_batch_size)


def resolve_megatron(run: RunConfig) -> RunConfig:
    """Apply Megatron-LM's rules to a parsed run (in place; returns it); ConfigError names the fix.

    * ``--train-samples`` -> ``train_iters = samples // global batch`` (Megatron-LM), and the
      ``--lr-*-samples`` family -> ``ceil(samples / global batch)`` iterations;
    * ``--sequence-parallel`` is turned off at ``--tensor-model-parallel-size 1``;
    * ``--finetune`` loads weights only: no optimizer, no RNG state, iteration 0.
    """
    t, p, ck = run.training, run.parallel, run.checkpoint
    gbs = t.global_batch_size
    pairs = (("lr_warmup_samples", "lr_warmup_iters"), ("lr_decay_samples", "lr_decay_iters"),
             ("lr_wsd_decay_samples", "lr_wsd_decay_iters"))
    if t.train_samples is not None:
        if t.train_iters is not None or t.train_tokens is not None:
            raise ConfigError("give one of --train-iters, --train-samples or --train-tokens")
        if gbs < 1:
            raise ConfigError(f"--global-batch-size {gbs} must be an integer >= 1")
        if t.train_samples < gbs:
            raise ConfigError(f"--train-samples {t.train_samples} is less than one step of "
                              f"--global-batch-size {gbs}")
        changes = {"train_iters": t.train_samples // gbs}
        for samples, iters in pairs:
            value = getattr(t, samples)
            if value is None:
                continue
            if getattr(t, iters):
                raise ConfigError(f"give --{samples.replace('_', '-')} or --{iters.replace('_', '-')}, not both")
            if value < 0:
                raise ConfigError(f"--{samples.replace('_', '-')} must be >= 0")
            changes[iters] = _samples_to_iters(value, gbs)
        run.training = t = dataclasses.replace(t, **changes)
        run.notes.append(f"--train-samples {t.train_samples} = {t.train_iters} iterations of "
                         f"{gbs} samples; LR warm-up {t.lr_warmup_iters}, decay {t.lr_decay_iters or t.train_iters} "
                         f"iterations")
    else:
        for samples, iters in pairs:
            if getattr(t, samples):  # Megatron-LM allows 0 with iteration-based training
                raise ConfigError(f"--{samples.replace('_', '-')} needs --train-samples (with --train-iters "
                                  f"use --{iters.replace('_', '-')})")
    if p.sequence_parallel and p.tensor_model_parallel_size == 1:
        run.parallel = dataclasses.replace(p, sequence_parallel=False)
        run.notes.append("--sequence-parallel is off at --tensor-model-parallel-size 1 (as Megatron-LM)")
    if ck.finetune and not (ck.no_load_optim and ck.no_load_rng):
        run.checkpoint = dataclasses.replace(ck, no_load_optim=True, no_load_rng=True)
        run.notes.append("--finetune: weights only (no optimizer, no RNG state), starting at iteration 0")
    return run
