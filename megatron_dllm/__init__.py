"""megatron_dllm: train masked-diffusion language models on Megatron-Core.

Importing this package imports nothing heavy: ``megatron_dllm.diffusion`` is pure torch and the
Megatron-Core parts are imported by the submodules that need them.
"""

__version__ = "0.1.0"
