"""platform package of megatron_dllm."""
