"""data package of megatron_dllm."""
