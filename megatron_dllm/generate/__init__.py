"""generate package of megatron_dllm."""
