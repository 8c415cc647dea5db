"""The PyTorch backend's options, and where its implementation is found.

The backend itself runs model/ code, so it lives in train/torch_backend.py (runtime/ does not import
model/: docs/architecture.md); it is registered as the `torch` entry point of the group
`mmfusion_ros.backends` (setup.py) and loaded only when backend type "torch" is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

#: entry point group of backends implemented above runtime/
ENTRY_POINT_GROUP = "mmfusion_ros.backends"


@dataclass
class TorchOptions:
    """Settings of the PyTorch backend."""

    device: str = "cpu"  # torch device ("cpu", "cuda", "cuda:1")
    threads: int = 0  # torch.set_num_threads when > 0; 0 leaves torch's default
    checkpoint: str = ""  # checkpoint file; empty = the bundle's checkpoint.pt


def torch_backend_class() -> type:
    """The TorchBackend class registered under the `torch` entry point (imports torch and model/ only now)."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "torch"]
    if not found:
        raise ImportError(f"no 'torch' backend in the {ENTRY_POINT_GROUP} entry points: install the mmfusion_ros "
                          f"package (pip install ./mmfusion_ros, or make bootstrap)")
    return found[0].load()
