"""mmfusion_ros: ImageBind-style multimodal fusion (camera, LiDAR, audio, IMU) for ROS 2 robots."""

__version__ = "0.1.0"
