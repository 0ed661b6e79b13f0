"""model package of megatron_dllm."""
