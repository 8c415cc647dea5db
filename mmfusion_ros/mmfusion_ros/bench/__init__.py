"""Benchmarks behind `mmfusion bench`: each module here exposes ``run(quick: bool) -> list[dict]`` (and raises
``BenchSkipped`` with the reason when it cannot run here).

A section dict is {"title": str, "columns": [...], "rows": [[...]], "notes": str}. commands/bench.py
prints them and writes docs/benchmarks.md. Shared helpers below: which model bundle to measure
(``bench_model_dir``, chosen once per `mmfusion bench` run and passed through MMFUSION_BENCH_MODEL),
percentiles, and a description of the machine.
"""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

#: Bench modules in report order (each optional: a missing one is reported, not fatal); any other
#: bench/*.py module found next to these is run after them.
KNOWN_MODULES = ["models", "pipeline", "ros_io", "node", "perception", "sim", "graph"]


def _discover() -> List[str]:
    here = Path(__file__).resolve().parent
    extra = sorted(p.stem for p in here.glob("*.py") if p.stem != "__init__" and p.stem not in KNOWN_MODULES)
    return KNOWN_MODULES[:-1] + extra + KNOWN_MODULES[-1:]  # the long graph run last


MODULES = _discover()
#: Modules a --quick run covers (model latencies and the pipeline tick: under a minute).
QUICK_MODULES = ["models", "pipeline"]
ENV_MODEL = "MMFUSION_BENCH_MODEL"
SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "mmfusion_small"

_random_bundle: Optional[Path] = None


class BenchSkipped(Exception):
    """Raised by a module's ``run`` that cannot measure on this machine (an optional dependency is missing):
    `mmfusion bench` reports the one-line message as the module's status and goes on with the others."""


def _installed_shipped_model() -> Optional[Path]:
    try:
        from ament_index_python.packages import get_package_share_directory

        p = Path(get_package_share_directory("mmfusion_ros")) / "models" / "mmfusion_small"
        return p if (p / "manifest.json").is_file() else None
    except Exception:  # package not installed / no AMENT_PREFIX_PATH
        return None


def bench_model_dir() -> Path:
    """The bundle to benchmark: $MMFUSION_BENCH_MODEL, else the shipped mmfusion_small, else a
    random-weight bundle of the same (default) architecture written once to a private temp folder.

    Random weights time exactly like trained ones (same graph, same shapes); the report says which.
    """
    global _random_bundle
    env = os.environ.get(ENV_MODEL)
    if env:
        return Path(env)
    for p in (SHIPPED_MODEL, _installed_shipped_model()):
        if p is not None and (p / "manifest.json").is_file():
            return p
    if _random_bundle is None:
        tmp = Path(tempfile.mkdtemp(prefix="mmfusion_bench_"))  # private (mode 700), removed at exit
        atexit.register(shutil.rmtree, tmp, True)
        _random_bundle = write_default_random_bundle(tmp)
    return _random_bundle


def write_default_random_bundle(out: Path) -> Path:
    """Default-architecture (ModelConfig()) bundle with random weights; for timing only."""
    import torch

    from ..core.types import OBJECT_CLASSES
    from ..model.checkpoint import save_checkpoint
    from ..model.config import ModelConfig
    from ..model.export import export_bundle
    from ..model.mmfusion import build_model
    from ..model.prompts import default_prompts
    from ..model.vocab import Vocab

    torch.manual_seed(0)
    words = [c.replace("_", " ") for c in OBJECT_CLASSES] + ["a", "is", "near", "the", "robot", "ahead", "."]
    vocab = Vocab.build(words * 3)
    cfg = ModelConfig()
    cfg.caption.vocab_size = len(vocab)
    cfg.name = "mmfusion_small_random"
    model = build_model(cfg).eval()
    save_checkpoint(out / "checkpoint.pt", model, vocab, {"random_init": True})
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(default_prompts()), cfg.embed_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    export_bundle(out / "checkpoint.pt", out, prompt_embeddings=emb, prompts_note="random (benchmark bundle)")
    return out


def model_label(model_dir: Path) -> str:
    import json

    man = json.loads((Path(model_dir) / "manifest.json").read_text())
    if _random_bundle is not None and Path(model_dir) == _random_bundle:
        return (f"{man.get('name')} (random weights, the shipped architecture; no trained bundle was found, "
                f"so one was written to a temporary folder for this run)")
    rnd = "random weights" if "random" in man.get("name", "") else "trained"
    return f"{man.get('name')} ({rnd}) at {model_dir}"


def time_calls(fn: Callable[[], object], iters: int, warmup: int = 3) -> np.ndarray:
    """Wall times in ms of ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def pct(ms: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(ms, float), q)) if len(ms) else float("nan")


def fmt(x: float, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def machine() -> Dict[str, str]:
    """CPU model, cores, RAM, OS, Python: the header every benchmark report carries."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        ram = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
        phys = psutil.cpu_count(logical=False)
    except Exception:
        ram, phys = "unknown", None
    cores = f"{os.cpu_count()} logical" + (f" / {phys} physical" if phys else "")
    try:
        avail = len(os.sched_getaffinity(0))
        cores += f" ({avail} usable by this process)"
    except AttributeError:
        pass
    try:
        load = "load average %.1f / %.1f / %.1f (1/5/15 min) when the report was written" % os.getloadavg()
    except OSError:
        load = "load average unknown"
    return {"cpu": cpu, "cores": cores, "ram": ram, "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "gpu": _gpu_name(), "load": load}


def _gpu_name() -> str:
    import shutil as _sh
    import subprocess

    if _sh.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10).stdout.strip()
            if out:
                return out.replace("\n", ", ")
        except (OSError, subprocess.SubprocessError):
            pass
    return "none (no CUDA GPU on this machine)"


def section(title: str, columns: List[str], rows: List[list], notes: str = "") -> dict:
    return {"title": title, "columns": columns, "rows": rows, "notes": notes}
