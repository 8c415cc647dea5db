"""mmfusion_ros: ImageBind-style multimodal fusion (camera, LiDAR, audio, IMU) for ROS 2 robots."""

import os as _os

# numpy's BLAS threads cost more than they give on the per-frame small matrix products (log-mel:
# 8 ms with the default thread pool, 0.9 ms single-threaded on a loaded 2-core CPU). Set before numpy
# loads; a user's explicit setting wins.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
