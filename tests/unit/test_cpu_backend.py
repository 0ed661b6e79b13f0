"""The CPU backend refuses megatron-core versions its shims were not written against."""

import pytest

from megatron_dllm.platform import cpu


def test_refuses_other_megatron_core_version():
    with pytest.raises(cpu.CpuBackendError, match=r"supports megatron-core==0\.16\.1 only, found 0\.17\.0"):
        cpu.check_mcore_version("0.17.0")


def test_installed_version_is_the_pinned_one():
    assert cpu.installed_mcore_version() == cpu.SUPPORTED_MCORE_VERSION
    cpu.check_mcore_version()


def test_every_shim_documents_what_it_replaces():
    for shim in cpu.SHIMS:
        assert shim.__doc__ and len(shim.__doc__.split()) > 15, shim.__name__


def test_apply_refuses_wrong_version(monkeypatch):
    monkeypatch.setattr(cpu, "installed_mcore_version", lambda: "0.19.2")
    monkeypatch.setattr(cpu, "_APPLIED", False)
    with pytest.raises(cpu.CpuBackendError, match="0.19.2"):
        cpu.apply_cpu_backend()
    assert not cpu.is_applied()


def test_only_the_cpu_module_monkeypatches():
    """Nothing else in the package assigns to torch / megatron attributes."""
    import pathlib
    import re

    root = pathlib.Path(cpu.__file__).resolve().parents[1]
    pattern = re.compile(r"^\s*(torch|megatron)[\w.]*\.\w+\s*=[^=]", re.M)
    offenders = [
        str(path.relative_to(root)) for path in root.rglob("*.py")
        if path.name != "cpu.py" and pattern.search(path.read_text())
    ]
    assert offenders == []
