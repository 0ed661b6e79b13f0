"""Pure-torch masked-diffusion math: noising, losses, attention masks, block-size curriculum.

Nothing in this package imports megatron or torch.distributed (tests/unit/test_diffusion_purity.py).

Modules (import them directly; this file imports nothing):

* ``noising``: NoiseConfig, sample_t, apply_noise, apply_noise_per_sample, complementary_pair.
* ``seeding``: noise_generator / mix_seed, the per-(seed, sample, iteration) generators.
* ``losses``: diffusion_loss (sum, count), per_token_cross_entropy, label_shift, ar_loss, CAP term.
* ``masks``: BD / bidirectional / block-causal predicates; dense and FlexAttention materialisers.
* ``curriculum``: BlockSchedule, the warmup-stable-decay block-size schedule over consumed tokens.
"""
