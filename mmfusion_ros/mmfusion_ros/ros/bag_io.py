"""rosbags type store with mmfusion_msgs registered: how every bag in the package is read and written.

Uses the `rosbags` library (no rclpy, no rosbag2_py), so the simulator, replay and offline
processing all read and write bags the same way on machines without a ROS install.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore


def msg_dir() -> Path:
    """Folder of mmfusion_msgs' .msg files: the installed share dir, else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        p = Path(get_package_share_directory("mmfusion_msgs")) / "msg"
        if p.is_dir():
            return p
    except Exception:  # noqa: BLE001 - not installed or no AMENT_PREFIX_PATH: fall back to the source tree
        pass
    import sys

    for p in (Path(sys.prefix) / "share" / "mmfusion_msgs" / "msg",  # a venv install without AMENT_PREFIX_PATH
              Path(__file__).resolve().parents[3] / "mmfusion_msgs" / "msg"):  # the source tree
        if p.is_dir():
            return p
    raise FileNotFoundError("mmfusion_msgs .msg files not found (install mmfusion_msgs or run from the source tree)")


@lru_cache(maxsize=1)
def typestore():
    """ROS 2 Jazzy type store plus every mmfusion_msgs message type."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for f in sorted(msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(f.read_text(), f"mmfusion_msgs/msg/{f.stem}"))
    store.register(types)
    store.register(_installed_extra_types(store))
    return store


#: Interface packages the package reads or writes where they are installed, though it does not depend on them
#: (the test environment builds stand-ins from test_interfaces/).
EXTRA_PACKAGES = ("audio_common_msgs", "vision_msgs", "tf2_msgs")


def _installed_extra_types(store) -> dict:
    """Definitions of EXTRA_PACKAGES' messages from their installed share/<pkg>/msg, for those the store lacks."""
    import sys

    types = {}
    for pkg in EXTRA_PACKAGES:
        dirs = []
        try:
            from ament_index_python.packages import get_package_share_directory

            dirs.append(Path(get_package_share_directory(pkg)) / "msg")
        except Exception:  # noqa: BLE001 - not installed
            pass
        dirs.append(Path(sys.prefix) / "share" / pkg / "msg")
        d = next((d for d in dirs if d.is_dir()), None)
        if d is None:
            continue
        for f in sorted(d.glob("*.msg")):
            name = f"{pkg}/msg/{f.stem}"
            if name not in store.fielddefs:
                types.update(get_types_from_msg(f.read_text(), name))
    return types
