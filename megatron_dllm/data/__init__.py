"""Data pipeline: tokenizers, preprocessing to Megatron .bin/.idx, same-position datasets over
megatron.core.datasets, the global-batch sampler and batch assembly.

Modules (import what you need; this package imports nothing heavy):
    errors      DataError
    config      DataConfig (Megatron-LM flag names)
    tokenizer   load_tokenizer, require_mask_token
    preprocess  preprocess_jsonl (behind tools/preprocess_data.py; --format pretrain / sft / dpo)
    sft_records, chat_template   SFT / DPO records -> conversations -> token ids and loss mask
    sft_packing, sft_dataset     SFTDataset (packed conversations), DPOPairDataset (pairs)
    addition_chat   the addition task as SFT / DPO JSON lines
    datasets    build_datasets (imports Megatron-Core)
    sampler     GlobalBatchSampler
    batch       collate, document_ids_from_eod
    synthetic   tiny corpora and sentencepiece models for tests
"""
