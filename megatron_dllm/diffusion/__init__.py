"""Pure-torch masked-diffusion math: noising, losses, attention masks, block-size curriculum.

Nothing in this package imports megatron or torch.distributed (tests/unit/test_diffusion_purity.py).
"""
