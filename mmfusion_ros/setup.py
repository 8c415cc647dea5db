"""ament_python package; also installs with plain pip (see the Makefile).

pip ignores setup.cfg's install_scripts, so the executables launch_ros looks for in
lib/mmfusion_ros/ are installed as small wrapper scripts through data_files as well.
"""

import glob
import os

from setuptools import find_packages, setup

PACKAGE = "mmfusion_ros"
EXECUTABLES = {
    "fusion_node": "mmfusion_ros.ros.fusion_node:main",
    "microphone_node": "mmfusion_ros.ros.microphone_node:main",
    "replay_node": "mmfusion_ros.ros.replay:main",
}


def share(pattern):
    return [f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f)]


def data_files():
    files = [
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("lib/" + PACKAGE, sorted(share("scripts/*"))),
    ]
    for folder in ("launch", "config", "models"):
        by_dir = {}
        for f in share(folder + "/**/*"):
            by_dir.setdefault(os.path.join("share", PACKAGE, os.path.dirname(f)), []).append(f)
        files.extend(sorted(by_dir.items()))
    return files


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=data_files(),
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="mmfusion_ros maintainers",
    maintainer_email="maintainers@mmfusion-ros.org",
    description="ImageBind-style multimodal fusion for ROS 2 robots",
    license="Apache-2.0",
    entry_points={
        "console_scripts": ["mmfusion = mmfusion_ros.cli:main"]
        + [f"{name} = {target}" for name, target in EXECUTABLES.items()],
        # backends implemented above runtime/ (runtime/torch_backend.py finds them here)
        "mmfusion_ros.backends": ["torch = mmfusion_ros.train.torch_backend:TorchBackend"],
    },
)
