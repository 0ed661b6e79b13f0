"""megatron_dllm/diffusion is pure torch (DESIGN.md decision 6) and keeps the math-layer rules.

The AST check is authoritative: it reads every import statement (and __import__ /
importlib.import_module calls) of every file. The subprocess check confirms that importing the
modules loads no megatron and no torch.distributed beyond what ``import torch`` already loads.
"""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = ROOT / "megatron_dllm" / "diffusion"
FILES = sorted(PKG.rglob("*.py"))
RANDOM_FUNCS = {"rand", "randn", "randint", "randperm", "bernoulli", "multinomial", "normal",
                "poisson", "rand_like", "randn_like", "randint_like"}


def _forbidden_module(name: str) -> bool:
    if name == "megatron" or name.startswith("megatron."):
        return True
    if name == "torch.distributed" or name.startswith("torch.distributed."):
        return True
    # siblings of diffusion/ may import megatron; only the diffusion package itself is allowed
    if name.startswith("megatron_dllm") and not (name == "megatron_dllm.diffusion"
                                                 or name.startswith("megatron_dllm.diffusion.")):
        return True
    return False


def import_violations(source: str) -> list:
    """Imports of megatron, torch.distributed or non-diffusion megatron_dllm modules in source."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if _forbidden_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                bad.append("." * node.level + (node.module or ""))
            elif node.level == 0:
                mod = node.module or ""
                if _forbidden_module(mod):
                    bad.append(mod)
                bad += [f"{mod}.{a.name}" for a in node.names if _forbidden_module(f"{mod}.{a.name}")]
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("__import__", "import_module") and node.args:
                arg = node.args[0]
                if not isinstance(arg, ast.Constant) or _forbidden_module(str(arg.value)):
                    bad.append(ast.unparse(node))
    return bad


def test_checker_flags_forbidden_imports():
    for src in ("import megatron", "import megatron.core.parallel_state as ps",
                "from megatron.core import parallel_state", "import torch.distributed as dist",
                "from torch import distributed", "from torch.distributed import all_reduce",
                "from ..model import builder", "from megatron_dllm.train import loop",
                "importlib.import_module('megatron.core')", "__import__(name)"):
        assert import_violations(src), src
    for src in ("import torch", "from torch.nn.attention.flex_attention import create_block_mask",
                "from . import masks", "from megatron_dllm.diffusion import noising",
                "import torch.nn.functional as F"):
        assert not import_violations(src), src


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_megatron_or_torch_distributed_imports(path):
    assert import_violations(path.read_text()) == []


def test_the_expected_modules_exist():
    names = {p.name for p in FILES}
    assert {"__init__.py", "noising.py", "losses.py", "masks.py", "curriculum.py"} <= names


def test_importing_loads_no_megatron_or_torch_distributed():
    modules = sorted("megatron_dllm.diffusion" + ("" if p.stem == "__init__" else "." + p.stem)
                     for p in FILES if p.parent == PKG)
    code = (
        "import sys, json, torch\n"
        "before = set(sys.modules)\n"
        f"for m in {modules!r}: __import__(m)\n"
        "new = sorted(set(sys.modules) - before)\n"
        "print(json.dumps(new))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, check=True)
    new = json.loads(out.stdout.strip().splitlines()[-1])
    assert "megatron_dllm.diffusion.noising" in new
    assert [m for m in new if m == "megatron" or m.startswith("megatron.")] == []
    assert [m for m in new if m.startswith("torch.distributed")] == []


def test_ascii_only():
    tests = sorted((ROOT / "tests" / "unit").glob("test_diffusion_*.py"))
    for path in FILES + tests:
        data = path.read_bytes()
        assert all(b < 128 for b in data), f"{path} has non-ASCII bytes"


def test_every_random_draw_takes_an_explicit_generator():
    """No global RNG: torch.rand & co. are always called with generator=."""
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr.rstrip("_")
                if name in RANDOM_FUNCS:
                    kws = {k.arg for k in node.keywords}
                    assert "generator" in kws, f"{path.name}:{node.lineno} {ast.unparse(node)}"


HOT_PATHS = {
    "noising.py": {"sample_t", "expand_t", "apply_noise", "_noise_from_uniform", "_to_device", "complement",
                   "complementary_pair", "_stratify", "_to_t"},
    "losses.py": {"diffusion_loss", "per_token_cross_entropy", "t_buckets", "label_shift", "ar_loss",
                  "token_entropy", "cap_loss", "cap_entropy_loss"},
}
SYNC_CALLS = {"item", "tolist", "cpu", "numpy", "nonzero", "all", "any"}


@pytest.mark.parametrize("filename", sorted(HOT_PATHS))
def test_no_host_syncs_in_hot_paths(filename):
    tree = ast.parse((PKG / filename).read_text())
    funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert HOT_PATHS[filename] <= set(funcs)
    for name in HOT_PATHS[filename]:
        for node in ast.walk(funcs[name]):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in SYNC_CALLS, f"{filename}:{node.lineno} {ast.unparse(node)}"
            if isinstance(node, (ast.If, ast.While, ast.Assert)):
                # Python control flow on a tensor would sync; conditions here must be plain Python
                cond = ast.unparse(node.test)
                assert "torch." not in cond, f"{filename}:{node.lineno} branches on {cond}"
