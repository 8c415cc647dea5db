"""The README's commands are real: every `mmfusion` flag, launch argument and make target it shows exists.

Behaviour of each command is tested where it lives (test_replay, test_process, test_demo, ...); this
test keeps the README from drifting away from the code.
"""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mmfusion_ros import cli

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def shell_lines() -> list:
    """Command lines of the README's bash blocks, continuation lines joined, comments dropped."""
    text = README.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.extend(part.strip() for part in line.split("&&"))
    return lines


def words(line: str) -> list:
    return shlex.split(line.replace("$(", "(").replace("[", " ").replace("]", " "))


def test_readme_has_the_two_commands():
    lines = shell_lines()
    assert "make demo" in " ".join(lines) and "make test" in " ".join(lines)
    targets = set(re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(), re.M))
    for line in lines:
        if line.startswith("make "):
            assert line.split()[1] in targets, line


def test_every_mmfusion_command_and_flag_exists():
    lines = [ln for ln in shell_lines() if ln.startswith("mmfusion ")]
    assert len(lines) >= 5
    for line in lines:
        w = words(line)
        if w[1].startswith("-"):
            continue
        sub = w[1]
        assert sub in cli.COMMANDS, f"README uses unknown sub-command: {line}"
        parser = cli.build_parser([sub])
        sub_parser = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == sub)[1]
        known = {s for a in sub_parser._actions for s in a.option_strings}
        for flag in (x for x in w[2:] if x.startswith("--")):
            assert flag.split("=")[0] in known, f"README flag {flag} is not an option of `mmfusion {sub}`: {line}"


@pytest.mark.parametrize("launch_file", ["mmfusion.launch.xml", "replay.launch.xml"])
def test_launch_arguments_in_the_readme_exist(launch_file):
    root = ET.parse(REPO / "mmfusion_ros" / "launch" / launch_file).getroot()
    declared = {a.get("name") for a in root.iter("arg")}
    for line in shell_lines():
        if f"ros2 launch mmfusion_ros {launch_file}" in line:
            for arg in re.findall(r"(\w+):=", line):
                assert arg in declared, f"{launch_file} has no argument {arg}: {line}"


def test_robot_requirements_are_the_tested_pins_without_torch():
    """requirements-robot.txt (the README's robot install) pins what the tests ran with, and no torch."""
    def pins(name):
        lines = (REPO / name).read_text().splitlines()
        return {ln.split("==")[0].lower(): ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}

    robot, full = pins("requirements-robot.txt"), pins("requirements.txt")
    assert "torch" not in robot and "onnxruntime" in robot
    for name, line in robot.items():
        assert full.get(name) == line, f"{line} differs from requirements.txt ({full.get(name)})"
