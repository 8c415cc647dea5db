"""Demo report: what the node published, scored against the simulator's ground truth, as video and tables.

An "all"-layer helper like commands/ (may import core, ros, sim, runtime, train.metrics):
- metrics.py   pure scoring functions (latency, drops, label accuracy, event AP and lead time)
- data.py      reads the scenario bag (sensors, ground truth) and the recorded output bag into arrays
- recorder.py  the rclpy node that records the fusion node's outputs into a rosbag2 (mcap) bag
- video.py     annotated mp4 and contact sheet (camera with projected boxes + bird's-eye LiDAR)
- timeline.py  event probabilities against ground truth, captions along the time axis (PNG)
- summary.py   the summary table: terminal, summary.md and summary.json
- build.py     all of the above from the two bags into one report folder
"""
