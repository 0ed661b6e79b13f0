"""train package of megatron_dllm."""
