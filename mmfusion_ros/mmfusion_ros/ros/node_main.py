"""The life of a one-node executable: rclpy up, one node, a body that runs it, everything torn down."""

from __future__ import annotations

from typing import Any, Callable, List, Optional


def run_node(name: str, body: Callable[[Any], int], args: Optional[List[str]] = None) -> int:
    """Create node `name`, return body(node)'s exit code; Ctrl-C or an external shutdown exits 0.

    The node and the rclpy context are released whatever happens, so `ros2 launch` sees a clean exit.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = rclpy.create_node(name)
    try:
        return body(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
