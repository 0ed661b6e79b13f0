"""Shared helpers of the benchmarks: interleaved timing, peak memory, machine facts, JSON I/O.

Timing rule (DESIGN.md "bench/"): every ratio is measured side by side in one process. The
variants of a comparison run in rounds; each round runs every variant once, in an order rotated
from round to round, so a change of machine load hits all variants alike. A ratio is the median of
the per-round ratios (paired), and the per-variant medians are reported beside it.

Peak memory on CPU is the Linux resident-set high-water mark (VmHWM) of this process: it is reset
to the current RSS through /proc/self/clear_refs just before the measured call and read after it,
so ``peak - rss_before`` is what the call added on top of its inputs. glibc is told to return large
blocks to the OS at once (mallopt), so memory freed by one call does not hide the next call's peak.
On CUDA the same quantity is ``max_memory_allocated() - memory_allocated()`` around the call.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "bench", "results")


# ---------------------------------------------------------------------------------------------
# Statistics


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of num[i] / den[i] (both measured in the same round)."""
    pairs = [a / b for a, b in zip(num, den) if b > 0]
    return median(pairs)


def summary(xs: Sequence[float]) -> Dict[str, float]:
    """Median, min and max of a list of seconds, rounded for the report."""
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(median(xs), 5), "min": round(min(xs), 5), "max": round(max(xs), 5),
            "n": len(xs)}


# ---------------------------------------------------------------------------------------------
# Timing


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str = "cpu") -> float:
    """Wall seconds of one call of ``fn`` (device work included)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(fns: Dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                device: str = "cpu", after_each: Optional[Callable[[str], None]] = None,
                first_round: int = 0) -> Dict[str, List[float]]:
    """Time every function of ``fns`` ``rounds`` times, rotating the order each round.

    ``warmup`` untimed rounds come first. ``after_each(name)`` runs untimed after every call.
    ``first_round`` offsets the rotation (to continue a sequence of rounds across calls).
    Returns name -> list of seconds (one per timed round).
    """
    names = list(fns)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        shift = (first_round + r) % len(names)
        for name in names[shift:] + names[:shift]:
            dt = timed(fns[name], device)
            if r >= warmup:
                times[name].append(dt)
            if after_each is not None:
                after_each(name)
    return times


# ---------------------------------------------------------------------------------------------
# Peak memory


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def release_freed_memory_eagerly() -> bool:
    """Make glibc hand blocks >= 64 KiB back to the OS when freed (a fixed mmap threshold).

    Without it glibc raises its mmap threshold after the first large free and keeps later blocks in
    its heap, so RSS would stay high after a call and understate the next call's peak.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 64 * 1024) == 1
        ok &= libc.mallopt(m_trim_threshold, 128 * 1024) == 1
        libc.malloc_trim(0)
        return bool(ok)
    except OSError:
        return False


class PeakRSS:
    """Context manager: ``added_mib`` = peak RSS during the block minus RSS at its start (MiB).

    Uses VmHWM reset through /proc/self/clear_refs (Linux >= 4.0); where that is not allowed it falls
    back to ``ru_maxrss``, which cannot be reset (``reset_ok`` is then False and the number is a
    lower bound if the process peaked higher before).
    """

    def __enter__(self):
        import gc

        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.before_kib = _status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        return self

    def __exit__(self, *exc):
        if self.reset_ok:
            peak = _status_kib("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak_kib = peak
        self.added_mib = max(0.0, (peak - (self.before_kib or 0)) / 1024.0)
        self.peak_mib = peak / 1024.0
        self.before_mib = (self.before_kib or 0) / 1024.0
        return False


class PeakCUDA:
    """Context manager: ``added_mib`` = peak allocated CUDA memory during the block minus at its start."""

    def __enter__(self):
        import torch

        torch.cuda.synchronize()
        self.before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self.reset_ok = True
        return self

    def __exit__(self, *exc):
        import torch

        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        self.added_mib = (peak - self.before) / 2 ** 20
        self.peak_mib = peak / 2 ** 20
        self.before_mib = self.before / 2 ** 20
        return False


def peak_memory(device: str):
    return PeakCUDA() if device == "cuda" else PeakRSS()


# ---------------------------------------------------------------------------------------------
# Machine, subprocesses, results


def machine_info() -> dict:
    """What the numbers were measured on."""
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        info["cpu_model"] = names[0] if names else None
    except OSError:
        info["cpu_model"] = None
    mem = _meminfo_total_gib()
    if mem:
        info["mem_total_gib"] = mem
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # pragma: no cover - torch missing
        pass
    try:
        from importlib.metadata import version

        info["megatron_core"] = version("megatron-core")
    except Exception:
        info["megatron_core"] = None
    return info


def _meminfo_total_gib() -> Optional[float]:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        return None
    return None


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def bench_env(extra: Optional[dict] = None) -> dict:
    """Environment of benchmark subprocesses: quiet warnings, the package importable."""
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if extra:
        env.update(extra)
    return env


JSON_MARK = "BENCH_JSON: "


def emit_json(obj) -> None:
    """Print the result line a parent process reads (last line starting with JSON_MARK)."""
    print(JSON_MARK + json.dumps(obj), flush=True)


def run_json(cmd: List[str], timeout: float, env: Optional[dict] = None) -> dict:
    """Run a benchmark worker; return its JSON result or {"status": "failed", ...}."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env or bench_env(), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        # A worker that prints partial results (JSON lines as it goes) still reports what it finished.
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        partial = [l for l in out.splitlines() if l.startswith(JSON_MARK)]
        if partial:
            res = json.loads(partial[-1][len(JSON_MARK):])
            res["partial"] = f"timed out after {timeout:.0f} s; rounds finished before that"
            return res
        return {"status": "failed", "error": f"timed out after {timeout:.0f} s", "cmd": " ".join(cmd)}
    wall = time.perf_counter() - start
    lines = [l for l in proc.stdout.splitlines() if l.startswith(JSON_MARK)]
    if proc.returncode != 0 or not lines:
        return {"status": "failed", "returncode": proc.returncode, "cmd": " ".join(cmd),
                "stderr_tail": proc.stderr[-2000:], "stdout_tail": proc.stdout[-1000:]}
    out = json.loads(lines[-1][len(JSON_MARK):])
    out.setdefault("wall_s", round(wall, 1))
    return out


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
