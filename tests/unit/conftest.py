"""Fixtures shared by the unit tests."""

import os

import pytest
import torch.distributed as dist


@pytest.fixture(scope="module")
def process_group():
    """A one-rank gloo group in this process (dataset builders need one); environment restored after."""
    saved = dict(os.environ)
    own = not dist.is_initialized()
    if own:
        from megatron_dllm.platform.distributed import init_process_group

        init_process_group("cpu")
    yield
    if own:
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)
