"""--exit-duration-in-mins saves and exits like --exit-interval (issue 17), in one in-process run whose
start time is moved back; the Megatron-LM flags it was given are listed once at start-up."""

import os

import pytest

from tests.e2e.cli import TINY


@pytest.fixture
def restored_environ():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_exit_duration_saves_and_exits(tmp_path, capsys, monkeypatch, restored_environ):
    from megatron_dllm.checkpoint import state as checkpointing
    from megatron_dllm.pretrain import main
    from megatron_dllm.train import loop

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        os.environ.pop(name, None)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    monkeypatch.setattr(loop, "_START_TIME", loop._START_TIME - 3 * 60)  # "started" three minutes ago
    save = tmp_path / "ckpt"
    code = main(["--config", TINY, "--mock-data", "--train-iters", "40", "--save", str(save),
                 "--exit-duration-in-mins", "2", "--use-mcore-models", "--log-throughput",
                 "--log-interval", "1000"])
    assert code == 0
    assert checkpointing.latest_iteration(str(save)) == 1  # saved after the first iteration, then exited
    out = capsys.readouterr().out
    listed = [line for line in out.splitlines() if line.startswith("accepted, no effect here: ")]
    assert [line.split(" (")[0] for line in listed] == ["accepted, no effect here: --use-mcore-models",
                                                        "accepted, no effect here: --log-throughput"]
    assert "--exit-duration-in-mins 2 reached at iteration 1" in out
    # a dry run against that checkpoint: the same model passes, another architecture is one line
    monkeypatch.setenv("WORLD_SIZE", "1")
    dry = ["--config", TINY, "--mock-data", "--train-iters", "40", "--load", str(save), "--dry-run"]
    assert main(dry) == 0
    capsys.readouterr()
    assert main(dry + ["--num-layers", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different model config than the flags (num_layers: checkpoint 2 vs flags 4" in err[0], err
