"""The XML launch files would start under `ros2 launch` on a robot (checked without the launch package).

launch_ros runs `<prefix of pkg>/lib/<pkg>/<exec>` and resolves `$(find-pkg-share pkg)` through the
ament index, so both are checked against the installed package (scripts/bootstrap.sh installs it).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List

import pytest

from mmfusion_ros.ros import params as P

PKG = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((PKG / "launch").glob("*.launch.xml"))
FIND_SHARE = re.compile(r"\$\(find-pkg-share ([A-Za-z0-9_]+)\)([^\s\"'$]*)")
VAR = re.compile(r"\$\(var ([A-Za-z0-9_]+)\)")
#: substitutions launch_ros knows that these files may use
KNOWN_SUBST = {"var", "find-pkg-share", "env", "equals", "not-equals", "eval"}


def ament():
    return pytest.importorskip("ament_index_python.packages")


def share_dir(pkg: str) -> Path:
    try:
        return Path(ament().get_package_share_directory(pkg))
    except Exception as e:  # PackageNotFoundError, or no AMENT_PREFIX_PATH
        pytest.fail(f"package {pkg} is not installed where launch looks for it: {e}")


def resolve_share(text: str) -> List[Path]:
    return [share_dir(pkg) / rest.lstrip("/") for pkg, rest in FIND_SHARE.findall(text)]


def declared_args(root: ET.Element) -> Dict[str, ET.Element]:
    return {a.get("name"): a for a in root.findall("arg")}


def attribute_texts(root: ET.Element) -> List[str]:
    return [v for el in root.iter() for v in el.attrib.values()]


def test_there_are_launch_files():
    assert {p.name for p in LAUNCH_FILES} >= {"mmfusion.launch.xml", "replay.launch.xml"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_node_executable_is_installed_where_launch_ros_looks(path):
    nodes = list(ET.parse(path).getroot().iter("node"))
    assert nodes
    for node in nodes:
        pkg, exe = node.get("pkg"), node.get("exec")
        assert pkg and exe, f"{path.name}: a node without pkg/exec"
        prefix = Path(ament().get_package_prefix(pkg))
        target = prefix / "lib" / pkg / exe
        assert target.is_file(), f"{path.name}: {target} missing (is the package installed?)"
        assert os.access(target, os.X_OK), f"{target} is not executable"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_shared_file_and_include_exists_after_install(path):
    root = ET.parse(path).getroot()
    texts = attribute_texts(root)
    for t in texts:
        for f in resolve_share(t):
            assert f.exists(), f"{path.name}: {t} -> {f} does not exist"
    for inc in root.iter("include"):
        files = resolve_share(inc.get("file", ""))
        assert files, f"{path.name}: include {inc.get('file')} is not found through $(find-pkg-share)"
        included = ET.parse(files[0]).getroot()
        given = {a.get("name") for a in inc.findall("arg")}
        assert given <= set(declared_args(included)), f"{path.name} passes undeclared args {given - set(declared_args(included))}"
        source = PKG / "launch" / files[0].name
        assert files[0].read_text() == source.read_text(), f"installed {files[0].name} is stale: run scripts/bootstrap.sh"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_argument_has_a_default_or_is_marked_required_and_every_var_is_declared(path):
    root = ET.parse(path).getroot()
    args = declared_args(root)
    for name, a in args.items():
        assert a.get("description"), f"{path.name}: arg {name} has no description"
        if a.get("default") is None:
            assert "required" in a.get("description").lower(), f"{path.name}: arg {name} has no default"
    for t in attribute_texts(root):
        for used in VAR.findall(t):
            assert used in args, f"{path.name}: $(var {used}) is not a declared arg"
        for kind in re.findall(r"\$\(([a-z-]+)", t):
            assert kind in KNOWN_SUBST, f"{path.name}: unknown substitution $({kind} ...)"


def test_fusion_node_launch_defaults_match_the_parameters():
    """Arguments overriding parameters default to the parameters' own defaults."""
    root = ET.parse(PKG / "launch" / "mmfusion.launch.xml").getroot()
    args = {n: a.get("default") for n, a in declared_args(root).items()}
    d = P.defaults()
    assert args["backend"] == d["backend.type"]
    assert args["model_dir"] == d["model.dir"]
    assert args["use_sim_time"] == "false"
    for arg, param in [("camera_topic", "topics.image"), ("camera_info_topic", "topics.camera_info"),
                       ("lidar_topic", "topics.lidar"), ("audio_topic", "topics.audio"), ("imu_topic", "topics.imu"),
                       ("audio_type", "types.audio"), ("audio_info_topic", "topics.audio_info")]:
        assert args[arg] == d[param], arg
    (node,) = [n for n in root.iter("node") if n.get("exec") == "fusion_node"]
    assert node.get("name") == P.NODE_NAME  # the params file's /**/mmfusion key must match the node
    assert [p.get("from") for p in node.findall("param") if p.get("from")] == ["$(var params_file)"]
    assert args["params_file"] == "$(find-pkg-share mmfusion_ros)/config/mmfusion.yaml"
    remapped = {r.get("from") for r in node.findall("remap")}
    assert remapped >= {d[f"topics.{n}"] for n in ("image", "compressed", "camera_info", "lidar", "audio", "imu")}


def test_replay_launch_runs_the_graph_on_sim_time():
    root = ET.parse(PKG / "launch" / "replay.launch.xml").getroot()
    (inc,) = root.findall("include")
    assert {a.get("name"): a.get("value") for a in inc.findall("arg")}["use_sim_time"] == "true"
    (replay,) = [n for n in root.iter("node") if n.get("exec") == "replay_node"]
    params = {p.get("name"): p.get("value") for p in replay.findall("param")}
    assert params["clock"] == "true" and "$(var bag)" in params["bag"]
    assert declared_args(root)["bag"].get("default") is None  # required: no silent default bag
