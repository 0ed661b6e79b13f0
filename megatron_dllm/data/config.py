"""Configuration of the data pipeline.

Field names follow Megatron-LM's flag names with dashes turned into underscores
(``data_path`` <-> ``--data-path``), each with a help text, like the dataclasses in config.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from megatron_dllm.config import _f


@dataclass
class DataConfig:
    """Where training data comes from and how it is split (Megatron-LM flag names)."""

    data_path: List[str] = _f(
        [], "Megatron-LM data path: one prefix of a .bin/.idx pair written by "
        "tools/preprocess_data.py (e.g. 'corpus_text_document'), or weight-prefix pairs "
        "'W1 PREFIX1 W2 PREFIX2 ...' for a weighted blend.")
    split: str = _f(
        "969,30,1", "Comma-separated train,valid,test weights of the documents of each prefix, "
        "e.g. '969,30,1' (a split with weight 0 is not built).")
    mock_data: bool = _f(
        False, "Synthetic, deterministic documents instead of --data-path (tests, smoke runs).")
    data_cache_path: Optional[str] = _f(
        None, "Directory for the dataset index caches Megatron builds (default: next to the "
        "data, '<prefix>/cache/'). Must be on a filesystem shared by all ranks.")
    tokenizer_model: Optional[str] = _f(
        None, "Tokenizer: a sentencepiece .model file, or a HF tokenizer.json file or a directory "
        "holding one (needs the 'tokenizers' package).")
    tokenizer_type: Optional[str] = _f(
        None, "Megatron-LM tokenizer type: SentencePieceTokenizer (or Llama2Tokenizer, also a "
        "sentencepiece .model), HuggingFaceTokenizer (tokenizer.json or its directory; nothing is "
        "downloaded), or NullTokenizer (no file: ids 0..--vocab-size - 1, EOD = vocab - 2 and [MASK] = "
        "vocab - 1 unless --dllm-mask-token-id). Default: from the --tokenizer-model file.",
        choices=["SentencePieceTokenizer", "Llama2Tokenizer", "HuggingFaceTokenizer", "NullTokenizer"])
    eod_mask_loss: bool = _f(
        False, "No loss on end-of-document tokens (Megatron-LM --eod-mask-loss).")
    mmap_bin_files: bool = _f(
        True, "Memory-map the .bin files (Megatron-LM --no-mmap-bin-files turns it off).")
    mid_level_dataset_surplus: float = _f(
        0.005, "Extra fraction of samples built per blended prefix so the blend never runs short "
        "(Megatron-LM --mid-level-dataset-surplus).")
