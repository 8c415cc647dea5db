"""Message-free data types shared by every layer: what a frame holds and what the pipeline returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

#: Dimension of the shared embedding space (all-MiniLM-L6-v2's).
EMBED_DIM = 384


class Modality(str, enum.Enum):
    """Keys of every per-modality dict (preprocessors, encoders, heads, buffers)."""

    CAMERA = "camera"
    LIDAR = "lidar"
    AUDIO = "audio"
    IMU = "imu"
    TEXT = "text"


#: The sensor modalities in model order (fusion token order, presence-mask order).
SENSOR_MODALITIES: List[Modality] = [Modality.CAMERA, Modality.LIDAR, Modality.AUDIO, Modality.IMU]

#: Object classes the simulator renders and the shipped prompts name (snake_case; prompts use spaces).
OBJECT_CLASSES: List[str] = [
    "person",
    "dog",
    "car",
    "bicycle",
    "traffic_cone",
    "box",
    "chair",
    "door",
    "alarm",
]

#: Event types the simulator defines and the event head predicts, in head-output order.
EVENT_TYPES: List[str] = [
    "person_approaching",
    "crossing_path",
    "collision_imminent",
    "alarm_sounding",
    "dog_barking",
    "robot_impact",
    "rough_ground",
]

#: Prediction horizons of the event head, seconds, in head-output order.
EVENT_HORIZONS: List[float] = [0.5, 1.0, 2.0]


@dataclass
class CameraIntrinsics:
    """Pinhole model of an image (from sensor_msgs/CameraInfo or config); distortion is ignored."""

    width: int
    height: int
    K: np.ndarray  # (3, 3) float64
    frame_id: str = "camera"

    def project(self, pts_cam: np.ndarray) -> np.ndarray:
        """(N,3) points in the optical frame (x right, y down, z forward) -> (N,2) pixels."""
        uvw = pts_cam @ self.K.T  # (N, 3)
        return uvw[:, :2] / uvw[:, 2:3]


@dataclass
class SensorFrame:
    """What the collector hands the pipeline: each modality's newest data around one reference time.

    Arrays are in SI units: image (H,W,3) uint8 RGB; lidar (N,4) float32 x,y,z,intensity in the LiDAR
    frame; audio (S,) float32 in [-1,1] at ``audio_rate``; imu (T,6) float32 ax,ay,az (m/s^2),
    gx,gy,gz (rad/s) at ``imu_rate``. A modality absent from ``present`` has ``None`` data.
    """

    stamp: float  # reference time, seconds (sim time when use_sim_time)
    image: Optional[np.ndarray] = None
    camera: Optional[CameraIntrinsics] = None
    lidar: Optional[np.ndarray] = None
    audio: Optional[np.ndarray] = None
    audio_rate: int = 16000
    imu: Optional[np.ndarray] = None
    imu_rate: float = 200.0
    frame_id: str = "base_link"  # frame of the LiDAR cloud and of the output objects
    stamps: Dict[Modality, float] = field(default_factory=dict)  # newest message stamp per modality

    @property
    def present(self) -> Dict[Modality, bool]:
        return {
            Modality.CAMERA: self.image is not None,
            Modality.LIDAR: self.lidar is not None,
            Modality.AUDIO: self.audio is not None,
            Modality.IMU: self.imu is not None,
        }

    def presence_mask(self) -> np.ndarray:
        """(4,) float32, 1 where the modality is present, in SENSOR_MODALITIES order."""
        p = self.present
        return np.array([1.0 if p[m] else 0.0 for m in SENSOR_MODALITIES], dtype=np.float32)


@dataclass
class DetectedObject:
    """A 3D box from LiDAR clustering, labelled through the camera when it is in view."""

    center: np.ndarray  # (3,) metres in the frame's frame_id
    size: np.ndarray  # (3,) length, width, height
    yaw: float  # radians about z
    label: str
    score: float
    label_from_camera: bool
    point_count: int
    track_id: int = 0
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    box2d: Optional[np.ndarray] = None  # (4,) x1,y1,x2,y2 pixels when projected into the image


@dataclass
class Event:
    """A predicted or ongoing event."""

    type: str
    probability: float
    horizon: float  # seconds ahead (0 = now)
    state: int = 1  # 0 start, 1 ongoing, 2 end (mmfusion_msgs/Event constants)
    time_to_event: float = -1.0
    track_id: int = 0


@dataclass
class FusionResult:
    """What the pipeline returns for one frame; the ROS layer turns it into messages."""

    stamp: float
    present: List[Modality]
    embedding: np.ndarray  # (384,) float32, L2-normalised
    modality_weights: np.ndarray  # (4,) float32 in SENSOR_MODALITIES order
    labels: List[tuple]  # [(label, score)] best first
    objects: List[DetectedObject] = field(default_factory=list)
    caption: Optional[str] = None
    caption_confidence: float = 0.0
    events: List[Event] = field(default_factory=list)
    event_probs: Optional[np.ndarray] = None  # (E, H) raw event-head output, EVENT_TYPES x EVENT_HORIZONS order
    timings_ms: Dict[str, float] = field(default_factory=dict)
    frame_id: str = "base_link"
    # grounding (core/observability.py): what the learned claims of this frame rest on
    familiarity: Dict[str, float] = field(default_factory=dict)  # present modality -> [0,1]; absent key = not assessed
    used: List[str] = field(default_factory=list)  # modalities the labels/caption/events rest on (present, familiar, not dropped)
    caption_modalities: List[str] = field(default_factory=list)  # modalities the caption's clauses rest on
    unobservable: List[str] = field(default_factory=list)  # event types no used modality can observe
    dropped: Dict[str, str] = field(default_factory=dict)  # modality -> why it was dropped from this frame (encoder failure)
    unbound: List[str] = field(default_factory=list)  # present modalities the model has no encoder for (a tower bundle before binding)
