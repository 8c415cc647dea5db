"""The layer table of docs/architecture.md holds for every import in the package (module-level and lazy ones).

The table is read from the document itself, so the map and the code cannot drift apart: each layer imports
only the package layers its row names; rclpy and ROS interface packages appear only in ros/ and the top
layers; torch appears nowhere on the robot's path (ros -> core -> runtime with ONNX Runtime), checked by
walking the imports and by running that path in a fresh process.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

PKG_ROOT = Path(__file__).resolve().parents[1]
SRC = PKG_ROOT / "mmfusion_ros"
DOC = PKG_ROOT.parent / "docs" / "architecture.md"
#: ROS client library and interface packages: what "rclpy" means for the layer rule
ROS_PACKAGES = {"rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "visualization_msgs", "diagnostic_msgs",
                "builtin_interfaces", "rosgraph_msgs", "lifecycle_msgs", "rcl_interfaces", "tf2_msgs",
                "mmfusion_msgs", "std_srvs", "audio_common_msgs", "vision_msgs"}
#: the robot's runtime path: what the fusion node loads to run a model with ONNX Runtime
ROBOT_PATH = ["mmfusion_ros.ros.fusion_node", "mmfusion_ros.ros.offline", "mmfusion_ros.ros.inputs",
              "mmfusion_ros.ros.pipeline_factory", "mmfusion_ros.runtime.onnxruntime_backend"]


def layer_table() -> Dict[str, Set[str]]:
    """{layer: package layers it may import, or {"*"} for all} from the table under '## Layers'."""
    text = DOC.read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows: Dict[str, Set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        layers = [n.strip("`/") for n in re.findall(r"`([^`]+)`", cells[0])]
        may = cells[1]
        allowed = {"*"} if may.startswith("all") else {w.split()[0].strip("`/") for w in may.split(",") if w.strip()}
        for layer in layers:
            rows[layer.replace(".py", "")] = allowed
    return rows


def layer_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].replace(".py", "") if len(rel.parts) > 1 else rel.stem


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> Iterator[Tuple[str, int, bool]]:
    """(absolute module imported, line, at module level) for every import statement in the file."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    top_level = {id(n) for n in tree.body}
    # an import inside `if TYPE_CHECKING:` or try/except at module level still runs at import time
    for n in tree.body:
        if isinstance(n, (ast.If, ast.Try)):
            top_level.update(id(c) for c in ast.walk(n))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, node.lineno, id(node) in top_level
            for a in node.names:  # `from . import conversions` imports a module
                yield f"{mod}.{a.name}", node.lineno, id(node) in top_level


def package_files() -> List[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_table_is_readable():
    table = layer_table()
    for layer in ("core", "runtime", "model", "sim", "train", "ros", "cli", "commands", "report", "bench"):
        assert layer in table, f"docs/architecture.md has no row for {layer}/"
    assert table["runtime"] >= {"core"} and "model" not in table["runtime"]
    assert "rclpy" in table["ros"]


def test_each_layer_imports_only_the_layers_its_row_names():
    table = layer_table()
    layers = set(table)
    bad = []
    for path in package_files():
        layer = layer_of(path)
        allowed = table.get(layer)
        if allowed is None:
            if layer != "__init__":
                bad.append(f"{path.relative_to(SRC)}: layer {layer!r} is not in docs/architecture.md")
            continue
        if "*" in allowed:
            continue
        for mod, line, _ in imports(path):
            parts = mod.split(".")
            if parts[0] != "mmfusion_ros" or len(parts) < 2 or parts[1] not in layers or parts[1] == layer:
                continue
            if parts[1] not in allowed:
                bad.append(f"{path.relative_to(SRC)}:{line} ({layer}/) imports {mod}")
    assert not bad, "imports against the layer table:\n" + "\n".join(bad)


def test_rclpy_only_in_ros_and_the_top_layers():
    table = layer_table()
    bad = []
    for path in package_files():
        layer = layer_of(path)
        allowed = table.get(layer, set())
        if "*" in allowed or "rclpy" in allowed:
            continue
        for mod, line, _ in imports(path):
            if mod.split(".")[0] in ROS_PACKAGES:
                bad.append(f"{path.relative_to(SRC)}:{line} ({layer}/) imports {mod}")
    assert not bad, "ROS imports outside ros/ and the top layers:\n" + "\n".join(bad)


def test_torch_only_in_the_layers_whose_row_names_it():
    """torch is for training, export and the PyTorch backend: never in core/, runtime/, sim/ or ros/."""
    table = layer_table()
    bad = []
    for path in package_files():
        layer = layer_of(path)
        allowed = table.get(layer, set())
        if "*" in allowed or "torch" in allowed:
            continue
        for mod, line, _ in imports(path):
            if mod.split(".")[0] == "torch":
                bad.append(f"{path.relative_to(SRC)}:{line} ({layer}/) imports {mod}")
    assert not bad, "torch outside the layers that may import it:\n" + "\n".join(bad)


def _module_path(mod: str) -> Path:
    p = SRC.parent / Path(*mod.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")


def robot_path_closure() -> Dict[str, str]:
    """Every package module the robot path imports at module level, transitively: {module: who imported it}."""
    seen: Dict[str, str] = {}
    todo = [(m, "(start)") for m in ROBOT_PATH]
    while todo:
        mod, parent = todo.pop()
        if mod in seen:
            continue
        seen[mod] = parent
        path = _module_path(mod)
        if not path.is_file():
            continue
        parts = mod.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ too
        for i in range(2, len(parts)):
            todo.append((".".join(parts[:i]), mod))
        for sub, _, top in imports(path):
            if top and sub.startswith("mmfusion_ros") and _module_path(sub).is_file():
                todo.append((sub, mod))
            elif top:
                seen.setdefault(sub, mod)  # an external module, recorded to check torch
    return seen


def test_robot_path_never_imports_torch_model_or_training_code_at_import_time():
    closure = robot_path_closure()
    bad = [f"{m} (imported by {who})" for m, who in closure.items()
           if m.split(".")[0] == "torch" or m.startswith(("mmfusion_ros.model", "mmfusion_ros.train",
                                                           "mmfusion_ros.sim"))]
    assert not bad, "on the robot's path:\n" + "\n".join(bad)


@pytest.mark.slow
def test_robot_path_runs_a_frame_without_loading_torch(random_model_dir, tmp_path):
    """The node's assembly on ONNX Runtime, one frame with every sensor, in a fresh process: torch stays unloaded."""
    pytest.importorskip("onnxruntime")
    script = tmp_path / "robot.py"
    script.write_text(
        "import sys\n"
        "import numpy as np\n"
        "from mmfusion_ros.core.types import SensorFrame\n"
        "from mmfusion_ros.ros import fusion_node, offline  # noqa: F401 - the node's modules\n"
        "from mmfusion_ros.ros.pipeline_factory import open_pipeline\n"
        f"pipe = open_pipeline({str(random_model_dir)!r}, {{'backend.type': 'onnxruntime'}})\n"
        "rng = np.random.default_rng(0)\n"
        "f = SensorFrame(stamp=1.0, image=rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),\n"
        "                lidar=np.c_[rng.uniform(-10, 10, (500, 3)), rng.uniform(0, 1, 500)].astype(np.float32),\n"
        "                audio=(0.1 * rng.standard_normal(16000)).astype(np.float32), audio_rate=16000,\n"
        "                imu=(0.1 * rng.standard_normal((400, 6))).astype(np.float32))\n"
        "r = pipe.process(f)\n"
        "assert r.embedding.shape == (384,), r.embedding.shape\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n")
    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("torch not loaded"), out.stdout + out.stderr[-2000:]
