#!/usr/bin/env python
"""Tokenise a JSON-lines corpus into Megatron indexed datasets (.bin/.idx): pretraining text,
SFT conversations or DPO preference pairs.

    python tools/preprocess_data.py --input corpus.jsonl --tokenizer-model tokenizer.model \\
        --output-prefix data/corpus --workers 8
    # writes data/corpus_text_document.bin and .idx; train with --data-path data/corpus_text_document

Each input line is one JSON object; its --json-key text becomes one document, tokenised without
BOS/EOS and followed by the tokenizer's end-of-document token (unless --no-append-eod). Blank
lines and documents without tokens are skipped. Progress lines (docs/s, MB/s) and a summary go to
stderr. On any error (missing input, a line that is not JSON or lacks the key: reported as
file:line) the tool exits 2 with a one-line message and leaves no output files (nor folders it
created) behind.

--format sft: each line {"messages": [{"role": ..., "content": ...}, ...]} or {"prompt": ...,
"response": ...}; writes PREFIX_sft_tokens.bin/.idx and PREFIX_sft_lossmask.bin/.idx (1 on the
assistant replies and the EOD ending each, 0 on prompts). --format dpo: each line {"prompt": ...,
"chosen": ..., "rejected": ...}; writes PREFIX_dpo_tokens / PREFIX_dpo_lossmask, document i = pair
i with sequences 2i (chosen) and 2i+1 (rejected). Conversations are rendered with the tokenizer's
chat template where it has one, else the plain template "user: ...\\nassistant: " (README).
"""

from __future__ import annotations

import argparse
import os
import sys

try:
    import megatron_dllm  # noqa: F401
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preprocess_data.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, metavar="FILE.jsonl",
                        help="JSON-lines input, one document per line")
    parser.add_argument("--json-key", default=None, metavar="KEY",
                        help="pretrain: key of the document text in each JSON object (default: text)")
    parser.add_argument("--tokenizer-model", required=True, metavar="PATH",
                        help="sentencepiece .model, HF tokenizer.json, or a directory holding one")
    parser.add_argument("--output-prefix", required=True, metavar="PREFIX",
                        help="output path prefix; writes PREFIX_<json-key>_document.bin/.idx "
                             "(pretrain), PREFIX_sft_* or PREFIX_dpo_*")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="tokenising processes (default: 1); output is identical for any N")
    parser.add_argument("--append-eod", action=argparse.BooleanOptionalAction, default=None,
                        help="pretrain: append the end-of-document token to every document "
                             "(default: on)")
    parser.add_argument("--format", choices=("pretrain", "sft", "dpo"), default="pretrain",
                        help="pretrain: text documents (default); sft: conversations with a loss "
                             "mask; dpo: prompt / chosen / rejected pairs with a loss mask")
    parser.add_argument("--chat-template", default="auto", metavar="auto|plain|FILE",
                        help="sft / dpo: auto (the HF tokenizer's chat template, else plain; "
                             "default), plain, or a Jinja template file")
    parser.add_argument("--log-interval", type=int, default=1000, metavar="N",
                        help="print progress every N documents (default: 1000; 0: never)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from megatron_dllm.data.errors import DataError
    from megatron_dllm.data.preprocess import preprocess_jsonl

    if args.format != "pretrain":
        given = [flag for flag, value in (("--json-key", args.json_key),
                                          ("--[no-]append-eod", args.append_eod)) if value is not None]
        if given:
            print(f"error: {given[0]} applies to --format pretrain only (--format {args.format} "
                  f"reads fixed keys and always ends a reply with EOD): drop it", file=sys.stderr)
            return 2
    try:
        preprocess_jsonl(
            args.input, args.tokenizer_model, args.output_prefix, json_key=args.json_key or "text",
            workers=args.workers, append_eod=args.append_eod is not False,
            log_interval=args.log_interval, format=args.format, chat_template=args.chat_template)
    except (DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
