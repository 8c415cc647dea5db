"""FusionResult objects -> vision_msgs/Detection3DArray, for nodes downstream that consume the standard type.

vision_msgs is not a dependency of mmfusion_ros: the node publishes this beside FusedPerception only where
the package is installed (`available()` says why not otherwise). Each 3D object becomes one Detection3D:
one hypothesis (class_id = the label, score), the box (centre + yaw about z, size), and id = the track id.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

MSGTYPE = "vision_msgs/msg/Detection3DArray"


def available() -> Optional[str]:
    """None when vision_msgs imports, else the reason it does not."""
    try:
        import vision_msgs.msg  # noqa: F401
    except ImportError as e:
        return f"vision_msgs is not installed ({e})"
    return None


def detection3d_array_msg(result, frame_id: Optional[str] = None):
    """FusionResult -> vision_msgs.msg.Detection3DArray (an empty array when no object was found)."""
    from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion, Vector3
    from vision_msgs.msg import BoundingBox3D, Detection3D, Detection3DArray, ObjectHypothesis, ObjectHypothesisWithPose

    from mmfusion_ros.ros.messages import make_header

    header = make_header(result.stamp, frame_id or result.frame_id)
    out = Detection3DArray(header=header)
    dets = []
    for o in result.objects:
        cx, cy, cz = np.asarray(o.center, dtype=np.float64).reshape(3).tolist()
        sx, sy, sz = np.asarray(o.size, dtype=np.float64).reshape(3).tolist()
        yaw = float(o.yaw)
        pose = Pose(position=Point(x=cx, y=cy, z=cz),
                    orientation=Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0)))
        hyp = ObjectHypothesisWithPose(hypothesis=ObjectHypothesis(class_id=str(o.label), score=float(o.score)),
                                       pose=PoseWithCovariance(pose=pose))
        dets.append(Detection3D(header=header, results=[hyp], bbox=BoundingBox3D(center=pose, size=Vector3(
            x=sx, y=sy, z=sz)), id=str(int(o.track_id))))
    out.detections = dets
    return out
