"""convert package of megatron_dllm."""
