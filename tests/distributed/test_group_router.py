"""tiny-moe (top-2, 4 groups, 2 kept) routes as the released LLaDA2 code: the project builds every MoE
model with ReleasedGroupTopKRouter, and the exported transformers class follows the same rule."""

import pytest

from tests.distributed import group_router_workers as W
from tests.distributed.harness import run_ranks


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return run_ranks(W.routing_worker, 1, args=(str(tmp_path_factory.mktemp("router")),), timeout=300)[0]


def test_the_preset_is_one_where_the_rules_differ(report):
    topk, groups, kept = report["preset"]
    assert groups > 1 and topk // kept != 2
    assert report["routers"] == report["gates"] == 2  # both layers are MoE, both routers replaced


def test_stock_megatron_routing_differs_from_the_released_code(report):
    assert report["stock_vs_released_reference"] > 1e-3, report


def test_the_project_model_gives_the_released_code_logits(report):
    assert report["missing_keys"] == [] and report["unexpected_keys"] == []  # same checkpoint either router
    assert report["ours_vs_released_reference"] <= 1e-5, report


def test_the_exported_class_routes_as_the_released_code(report):
    assert report["export_class_vs_released_reference"] <= 1e-5, report
