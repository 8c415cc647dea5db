"""DistributedDataParallel: two CPU processes (gloo) under torchrun train a few steps together."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import yaml


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    from mmfusion_ros.model.checkpoint import load_checkpoint
    from mmfusion_ros.train.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", n_scenes=16, frames_per_scene=8, seed=1)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(dict(model="tiny", data=str(data), out=str(tmp_path / "run"), threads=1, batch_size=8,
                                       epochs={"camera": 1, "bind": 1, "fusion": 1, "caption": 1, "events": 1},
                                       log_every=1, head_holdout=0.0, text_cache=str(tmp_path / "tc"))))
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "mmfusion_ros.cli", "train",
           "--config", str(cfg), "--device", "cpu"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # torchrun's workers too
        out, err = p.communicate()
        pytest.fail("torchrun did not finish in 150 s: " + err[-3000:])
    assert p.returncode == 0, out[-2000:] + err[-4000:]
    _, _, info = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert info["metadata"]["world_size"] == 2
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    # each process sees half the data: train frames / 2 ranks / batch 8 steps per epoch
    from mmfusion_ros.train.data import load_split

    n_train = len(load_split(data, "train"))
    steps = [r["step"] for r in log if r.get("stage") == "camera" and "step" in r]
    assert max(steps) + 1 == (n_train // 2) // 8
