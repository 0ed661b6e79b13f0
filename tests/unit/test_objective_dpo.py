"""The DPO objective's configuration, data and bookkeeping (objectives/dpo.py, data/dpo_batches.py);
its loss against dpo_estimate and a hand computation is in tests/distributed/test_dpo_objective.py."""

import pytest
import torch

from megatron_dllm.arguments import parse_args
from megatron_dllm.config import ConfigError
from megatron_dllm.data.dpo_batches import MockPairs, PairDataset
from megatron_dllm.data.microbatches import micro_batches
from megatron_dllm.diffusion.vrpo import naive, vrpo
from megatron_dllm.objectives import StepContext, objective_for, objective_type
from megatron_dllm.objectives.dpo import DpoObjective

L = 64
BASE = ["--preset", "tiny-moe", "--seq-length", str(L), "--mock-data", "--train-iters", "2",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--dllm-objective", "dpo"]


def _run(*flags):
    return parse_args(BASE + list(flags))


@pytest.mark.parametrize("flags,message", [
    ([], "--dllm-objective dpo needs --ref-load DIR: the frozen reference checkpoint (usually the SFT model "
         "the policy starts from)"),
    (["--ref-load", "r", "--dllm-bd-micro-batch-size", "1"],
     "--dllm-bd-micro-batch-size is not used by --dllm-objective dpo (its noise is VRPO's, "
     "--dpo-sampling; a micro-batch is --micro-batch-size pairs): leave it out"),
    (["--ref-load", "r", "--dllm-complementary-masking"],
     "--dllm-complementary-masking is not used by --dllm-objective dpo (its noise is VRPO's, "
     "--dpo-sampling; a micro-batch is --micro-batch-size pairs): leave it out"),
])
def test_dpo_checks_its_options(flags, message):
    run = _run(*flags)
    with pytest.raises(ConfigError) as exc:
        objective_type("dpo").check_config(run.diffusion)
    assert str(exc.value) == message


@pytest.mark.parametrize("flags,message", [
    (["--dpo-beta", "0"], "--dpo-beta 0.0 must be a finite number > 0"),
    (["--dpo-beta", "inf"], "--dpo-beta inf must be a finite number > 0"),
    (["--dpo-elbo-samples", "0"], "--dpo-elbo-samples 0 must be an integer >= 1"),
    (["--dpo-block-size", "0"], "--dpo-block-size 0 must be an integer >= 1"),
])
def test_dpo_numbers_are_range_checked(flags, message):
    from megatron_dllm.config_ranges import check_ranges

    with pytest.raises(ConfigError) as exc:
        check_ranges(_run("--ref-load", "r", *flags))
    assert str(exc.value) == message


@pytest.mark.parametrize("flags,message", [
    (["--pipeline-model-parallel-size", "2"],
     "--dllm-objective dpo supports --pipeline-model-parallel-size 1 and --context-parallel-size 1 only (the "
     "frozen reference would have to run through the same stages): use tensor / expert / data parallelism"),
    (["--eval-interval", "1"], "--eval-interval is not supported with --dllm-objective dpo (validation scores "
                               "the pretraining ELBO): leave it out"),
    (["--dpo-block-size", "24"], "--dpo-block-size 24 must divide --seq-length 64"),
])
def test_dpo_refuses_layouts_it_cannot_run(flags, message):
    with pytest.raises(ConfigError) as exc:
        objective_for(_run("--ref-load", "r", *flags), mask_token_id=255, device="cpu")
    assert str(exc.value) == message


@pytest.mark.parametrize("flags,message", [
    (["--ref-load", "r"], "--ref-load is a DPO option: use with --dllm-objective dpo"),
    (["--dpo-beta", "0.2", "--dpo-block-size", "16"],
     "--dpo-beta / --dpo-block-size are DPO options: use with --dllm-objective dpo"),
])
def test_dpo_flags_are_refused_with_other_objectives(flags, message):
    from megatron_dllm.train.preflight import check_run

    run = parse_args(BASE[:-1] + ["mdlm"] + flags)
    with pytest.raises(ConfigError) as exc:
        check_run(run, 1)
    assert str(exc.value) == message


def test_dpo_objective_from_the_flags():
    objective = objective_for(_run("--ref-load", "r", "--dpo-beta", "0.2", "--dpo-elbo-samples", "3"),
                              mask_token_id=255, device="cpu")
    assert isinstance(objective, DpoObjective)
    assert objective.beta == 0.2 and objective.sampling == vrpo(3)
    assert objective.reference_source.load_dir == "r"
    step = StepContext(iteration=0, block_size=L)
    assert objective.phase_at(10 ** 9) == (objective, L, "dpo")
    assert objective.rows_per_sample(step) == 6 and objective.model_seq_length == L
    naive_objective = objective_for(_run("--ref-load", "r", "--dpo-sampling", "naive"), 255, "cpu")
    assert naive_objective.sampling == naive(4)
    assert objective.block_size is None
    bd = objective_for(_run("--ref-load", "r", "--dpo-block-size", "16"), 255, "cpu")
    assert bd.block_size == 16 and bd.model_seq_length == 2 * L and bd.phase_at(0) == (bd, 16, "dpo")


def test_logged_metrics_are_per_pair_means():
    objective = DpoObjective(seq_length=L)
    totals = {"loss_sum": 2.0, "num_tokens": 4.0, "margin_sum": 1.0, "correct_pairs": 3.0, "kl_sum": 0.5,
              "reward_chosen_sum": 0.8, "reward_rejected_sum": -0.2}
    assert objective.logged_metrics(totals) == {"dpo_loss": 0.5, "reward_margin": 0.25, "preference_accuracy": 0.75,
                                                "kl": 0.125, "reward_chosen": 0.2, "reward_rejected": -0.05}
    assert set(totals) | {"num_noised", "correct"} == set(objective.report_keys(StepContext(0, L)))


def test_mock_pairs_share_the_prompt_and_differ_in_one_reply_token():
    data = MockPairs(50, L, eod_id=254, seed=3, content_vocab=250, pad_multiple=8)
    for i in range(50):
        pair = data[i]
        c, r = pair["chosen"], pair["rejected"]
        assert torch.equal(c["loss_mask"], r["loss_mask"]) and torch.equal(c["document_ids"], r["document_ids"])
        prompt = ~c["loss_mask"] & (c["document_ids"] == 0)
        reply = c["loss_mask"].nonzero()[:, 0]
        assert prompt.sum() >= 1 and bool(prompt[: int(reply[0])].all())  # the prompt comes first, no loss
        assert len(reply) % 8 == 0 and torch.equal(reply, torch.arange(int(reply[0]), int(reply[-1]) + 1))
        assert int((c["tokens"] != r["tokens"]).sum()) == 1
        assert bool(c["loss_mask"][(c["tokens"] != r["tokens"]).nonzero()[0, 0]])
        assert int((c["tokens"][c["loss_mask"]] == 254).sum()) >= 1  # the reply ends with EOD (padding EOS)
        assert bool((c["tokens"] < 250).logical_or(c["tokens"] == 254).all())
    assert torch.equal(MockPairs(50, L, 254, 3, 250, 8)[7]["chosen"]["tokens"], data[7]["chosen"]["tokens"])


def test_micro_batches_of_pairs_stack_each_side():
    data = PairDataset(MockPairs(10, L, eod_id=254, seed=1, content_vocab=250))
    batches = micro_batches(data, 4, 4, 2, 1, 2)  # DP rank 1 of 2: global pairs 6 and 7
    assert len(batches) == 1
    batch = batches[0]
    assert batch["sample_index"].tolist() == [6, 7]
    for side in ("chosen", "rejected"):
        assert batch[side]["tokens"].shape == (2, L) and batch[side]["loss_mask"].dtype == torch.bool
        assert torch.equal(batch[side]["tokens"][1], data[7][side]["tokens"])


@pytest.mark.slow
def test_llada2_mini_dpo_example_parses_and_dry_runs(tmp_path, capsys, monkeypatch):
    import os

    from megatron_dllm.pretrain import main

    example = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "examples", "configs", "llada2_mini_dpo.yaml")
    run = parse_args(["--config", example, "--mock-data"])
    d = run.diffusion
    assert (d.objective, d.dpo_beta, d.dpo_elbo_samples, d.dpo_sampling, d.dpo_block_size) == ("dpo", 0.1, 2, "vrpo",
                                                                                              32)
    assert run.checkpoint.finetune and d.ref_load and run.parallel.pipeline_model_parallel_size == 1
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.delenv("RANK", raising=False)
    assert main(["--config", example, "--data-path", str(tmp_path / "pairs_dpo"), "--tokenizer-type",
                 "NullTokenizer", "--load", str(tmp_path / "sft"), "--ref-load", str(tmp_path / "sft"),
                 "--save", str(tmp_path / "dpo"), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert '  "objective": "dpo",' in out and any("world_size 8," in line for line in out)
    # the DPO plan: 1 pair x 2 replies x 2 draws in the BD layout; the reference's weights are the
    # policy's weights column
    plan = out[out.index(next(line for line in out if line.startswith("memory per GPU"))) + 2].split()
    assert out[-3].startswith("DPO (GiB per GPU): a micro-batch is 1 pair(s) x 2 replies x 2 draws = 4 rows")
    stage, act, reference, total = out[-1].split()
    assert reference == plan[2] and float(act) == pytest.approx(4 * float(plan[5]), abs=0.02)
    assert float(total) == pytest.approx(sum(float(x) for x in plan[2:5]) + float(reference) + float(act), abs=0.03)
    assert not os.listdir(tmp_path)
