"""Pure-torch masked-diffusion math: noising, losses, attention masks, block-size curriculum.

Nothing in this package imports megatron or torch.distributed (tests/unit/test_diffusion_purity.py).

Modules (import them directly; this file imports nothing):

* ``noising``: NoiseConfig, sample_t, apply_noise, apply_noise_per_sample, complementary_pair.
* ``seeding``: noise_generator / mix_seed, the per-(seed, sample, iteration) generators.
* ``losses``: diffusion_loss (sum, count), per_token_cross_entropy, label_shift, ar_loss, CAP term.
* ``masks``: BD / bidirectional / block-causal predicates; dense and FlexAttention materialisers.
* ``curriculum``: BlockSchedule, the warmup-stable-decay block-size schedule over consumed tokens.
* ``context_split``: which input rows each context-parallel rank holds (balanced split), row work.
* ``sft``: complementary_instances, both complementary SFT instances stacked in one [2B, L] batch.
* ``likelihood``: elbo, the Monte-Carlo ELBO of log p(response | prompt) from per-token log-probs.
* ``vrpo``: ElboSampling, preference_noise, noised_draws: VRPO / naive noise of the DPO ELBOs.
* ``preference``: dpo_loss on ELBOs with reward margin, preference accuracy and a KL estimate.
* ``dpo_estimate``: the DPO loss of a batch from two scorers, and its variance over noise draws.
"""
