"""`mmfusion demo`: simulate a scenario, run the fusion node on it through DDS, write a report.

  mmfusion demo [--out DIR] [--scenario NAME] [--seconds S] [--seed K] [--model DIR] [--backend T]

Stages (each with a progress bar):
  1 simulate  write the scenario bag (sensors + ground truth) with the simulator
  2 node      start the fusion node as its own ROS 2 process (use_sim_time, the shipped model)
  3 replay    replay the bag into it through DDS with /clock, record its outputs into a bag
  4 report    annotated video, contact sheet, timeline plot, summary table (terminal + summary.md/json)
All ROS traffic runs on a ROS_DOMAIN_ID of its own (localhost only), so a second demo or a test run on
the same machine does not interfere. Child processes are stopped whatever happens.

Exit codes: 0 done; 2 bad options; 3 simulate, 4 node, 5 replay, 6 report failed (the message names
the stage and the log to read); 130 interrupted.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from ..ros.inputs import INPUTS

#: stage -> exit code
STAGES = {"simulate": 3, "node": 4, "replay": 5, "report": 6}
#: the scenario the demo plays by default: a person walks up, a dog barks, an alarm rings, rough ground
DEFAULT_SCENARIO = "demo"
FALLBACK_SCENARIO = "street_mix"  # used when the simulator has no "demo" scenario
#: inputs the demo subscribes reliably (the replay publishes reliably): with the shipped best-effort QoS,
#: a camera image or LiDAR sweep bigger than FastDDS's shared-memory segment travels in fragments, and
#: on a busy machine one lost fragment loses the message (seen here: 7 of 375 images arrived)
RELIABLE_INPUTS = ("image", "compressed", "lidar")
#: files of the report folder (besides the outputs/ and scenario/ bags and logs/)
REPORT_FILES = ("demo.mp4", "contact_sheet.png", "timeline.png", "summary.md", "summary.json")
#: seconds to wait for the node to become active (model load) and for outputs to stop arriving
NODE_START_TIMEOUT_S = 120.0
FIRST_OUTPUT_TIMEOUT_S = 30.0
DRAIN_S = 2.0
REPLAY_SLACK_S = 60.0  # replay may take 3x the bag's length plus this before it counts as hung
#: the sensor message types replayed into the node (ground truth stays in the bag, for the report)
SENSOR_TYPES = tuple(s.msgtype for s in INPUTS.values())  # ros/inputs.py
#: the simulator's ground truth: replayed too and recorded with the outputs (RViz can show both)
GT_TYPE = "mmfusion_msgs/msg/GroundTruth"


class StageError(Exception):
    """A demo stage failed: the message says why and which log to read."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="report folder (default out/demo)")
    parser.add_argument("--scenario", default=None,
                        help=f"simulator scenario (default {DEFAULT_SCENARIO!r}, else {FALLBACK_SCENARIO!r}; "
                             "see `mmfusion sim --list`)")
    parser.add_argument("--seconds", type=float, default=25.0, help="scenario length, seconds (default 25)")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model bundle folder (default: the shipped mmfusion_small)")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt", "torch"],
                        help="inference backend (default auto: TensorRT with a GPU, else ONNX Runtime)")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS_DOMAIN_ID for the demo's processes (default: a free one, locked for the run)")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="replay speed factor (default 1.0, real time; < 1 gives a slow machine more time per frame)")
    parser.add_argument("--best-effort", action="store_true",
                        help="keep the params file's best-effort QoS for camera and LiDAR (default: reliable, "
                             "so a busy machine does not lose large messages in the demo)")
    parser.add_argument("--bag", type=Path, default=None,
                        help="play this simulator bag (with sim/ground_truth) instead of simulating one")
    parser.add_argument("--outputs", type=Path, default=None,
                        help="with --bag: build the report from this recording of the node's outputs (e.g. the bag "
                             "`mmfusion process` wrote) instead of running the node")
    parser.add_argument("--no-video", action="store_true", help="leave out the video and the contact sheet (faster)")


# ------------------------------------------------------------------------------------------ helpers
def _progress(desc: str, total: Optional[float] = None, unit: str = "it"):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{desc:<9}", unit=unit, leave=True, dynamic_ncols=True, mininterval=0.5,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} {unit} [{elapsed}]"
                if isinstance(total, float) else None)


def _lock_domain(wanted: Optional[int]):
    """Pick a ROS domain id and hold a lock file on it for the run -> (id, open lock file)."""
    lock_dir = Path(tempfile.gettempdir()) / "mmfusion_demo_domains"
    lock_dir.mkdir(exist_ok=True)
    # 1..101: ids whose DDS ports stay below Linux's ephemeral range
    candidates = [wanted] if wanted is not None else [1 + (os.getpid() + k) % 101 for k in range(101)]
    for d in candidates:
        if not 0 <= d <= 232:
            raise ValueError(f"--domain-id must be in 0..232, got {d}")
        f = open(lock_dir / f"{d}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return d, f
        except OSError:
            f.close()
    raise RuntimeError("every ROS domain id 1..101 is locked by another demo")


def _params_file() -> Path:
    """config/mmfusion.yaml from the installed share directory, else from this source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        p = Path(get_package_share_directory("mmfusion_ros")) / "config" / "mmfusion.yaml"
        if p.is_file():
            return p
    except Exception:  # noqa: BLE001 - not installed: use the source tree
        pass
    return Path(__file__).resolve().parents[2] / "config" / "mmfusion.yaml"


def _node_command() -> List[str]:
    """The fusion_node executable as launch_ros would run it, else the module through this Python."""
    exe = Path(sys.prefix) / "lib" / "mmfusion_ros" / "fusion_node"
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from mmfusion_ros.ros.fusion_node import main; sys.exit(main())"]


def resolve_model(model: Optional[Path], out: Path, say) -> Path:
    """The bundle to run: --model, else the shipped one, else (with a loud warning) random weights."""
    if model is not None:
        if not (model / "manifest.json").is_file():
            raise StageError("node", f"--model {model}: no manifest.json there (not a model bundle)")
        return model.resolve()
    from ..ros.params import default_model_dir

    try:
        return default_model_dir()
    except FileNotFoundError as e:
        say(f"WARNING: {e}.\nWARNING: falling back to a RANDOMLY INITIALISED model: the pipeline, timing and "
            f"report are real, but labels, captions and events will be meaningless. Train and export one with "
            f"`mmfusion train` / `mmfusion export`, or pass --model DIR.")
        from ..model.bundle import write_random_bundle

        return write_random_bundle(out / "random_model", seed=0).resolve()


def _stop(proc: Optional[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGINT (ROS shuts down cleanly), then SIGTERM, then SIGKILL, to the child's process group."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + l for l in lines[-n:])


# ------------------------------------------------------------------------------------------- stages
class Demo:
    """The four stages; child processes and the recorder are owned here and always cleaned up."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out: Path = args.out.resolve()
        self.logs = self.out / "logs"
        self.node: Optional[subprocess.Popen] = None
        self.replay: Optional[subprocess.Popen] = None
        self.recorder = None
        self.times: Dict[str, float] = {}

    def say(self, text: str) -> None:
        print(text, flush=True)

    # 1 ---------------------------------------------------------------------------------------------
    def simulate(self) -> Path:
        from ..sim.scenarios import SCENARIOS, make_scenario
        from .sim import write_bag

        a = self.args
        if a.bag is not None:
            if not a.bag.exists():
                raise StageError("simulate", f"--bag {a.bag} does not exist")
            side = a.bag / "sim_ground_truth.json"
            self.scenario_name = a.bag.name
            if side.is_file():
                import json

                meta = json.loads(side.read_text())
                self.scenario_name = meta.get("scenario", a.bag.name)
                a.seconds, a.seed = meta.get("seconds", a.seconds), meta.get("seed", a.seed)
            from ..sim.config import SimConfig

            self.sim_config = SimConfig()
            return a.bag.resolve()
        name = a.scenario or (DEFAULT_SCENARIO if DEFAULT_SCENARIO in SCENARIOS else FALLBACK_SCENARIO)
        if name not in SCENARIOS:
            raise StageError("simulate", f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        self.scenario_name = name
        bag = self.out / "scenario"
        if bag.exists():
            shutil.rmtree(bag)
        with _progress("simulate", 1, "bag") as bar:
            bar.set_postfix_str(f"{name}, {a.seconds:g} s, seed {a.seed}")
            scene = make_scenario(name, a.seconds, a.seed)
            write_bag(scene, bag, seed=a.seed)
            bar.update(1)
        self.sim_config = scene.config
        return bag

    # 2 ---------------------------------------------------------------------------------------------
    def start_node(self, model: Path, bag: Path) -> None:
        from ..ros.recorder import OutputRecorder

        cmd = _node_command() + ["--ros-args", "--params-file", str(_params_file()),
                                 "-p", "use_sim_time:=true", "-p", f"model.dir:={model}",
                                 "-p", f"backend.type:={self.args.backend}"]
        if not self.args.best_effort:
            cmd += [a for name in RELIABLE_INPUTS for a in ("-p", f"qos.{name}.reliability:=reliable")]
        self.node_log = self.logs / "fusion_node.log"
        with open(self.node_log, "w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            self.node = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        from ..report.data import open_bag

        with open_bag(bag) as r:
            extra = {c.topic: c.msgtype for c in r.connections if c.msgtype == GT_TYPE}
        from ..ros.inputs import output_topics
        from ..ros.offline import load_param_values

        topics = output_topics(load_param_values(_params_file()))  # what the node publishes on, by its params file
        self.recorder = OutputRecorder(self.out / "outputs", extra_topics=extra, topics=topics)
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        with _progress("node", 1, "node") as bar:
            bar.set_postfix_str("loading the model")
            while self.recorder.pipeline.get("state") != "active":
                if "autostart: node is" in self.node_log.read_text(errors="replace"):
                    raise StageError("node", f"the fusion node could not configure or activate; its log "
                                             f"({self.node_log}) ends:\n{_tail(self.node_log)}")
                if self.node.poll() is not None:
                    raise StageError("node", f"the fusion node exited with code {self.node.returncode} while "
                                             f"starting; its log ({self.node_log}) ends:\n{_tail(self.node_log)}")
                if time.monotonic() > deadline:
                    raise StageError("node", f"the fusion node did not become active within {NODE_START_TIMEOUT_S:.0f} s "
                                             f"(state {self.recorder.pipeline.get('state', 'unknown')}); "
                                             f"its log ({self.node_log}) ends:\n{_tail(self.node_log)}")
                time.sleep(0.1)
            bar.set_postfix_str(f"active on {self.recorder.pipeline.get('backend', '?')}")
            bar.update(1)

    # 3 ---------------------------------------------------------------------------------------------
    def play(self, bag: Path, t_start: float, t_end: float) -> None:
        from ..report.data import open_bag

        with open_bag(bag) as r:
            played = sorted({c.topic for c in r.connections if c.msgtype in SENSOR_TYPES + (GT_TYPE,)})
        cmd = [sys.executable, "-m", "mmfusion_ros.cli", "replay", str(bag), "--clock", "--wait-subscribers", "10",
               "--rate", repr(self.args.rate)]
        if all(t.startswith("/") for t in played):  # replay takes --topics as absolute names
            cmd += ["--topics", *played]
        self.replay_log = self.logs / "replay.log"
        with open(self.replay_log, "w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            self.replay = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        rec = self.recorder
        span = max(t_end - t_start, 1e-3)
        started = time.monotonic()
        with _progress("replay", float(round(span, 1)), "s") as bar:
            while self.replay.poll() is None:
                self._check_node("replay")
                if rec.sim_time is not None:
                    n = round(float(min(max(rec.sim_time - t_start, 0.0), span)), 1)
                    if n != bar.n:
                        bar.n = n
                        bar.set_postfix_str(f"fused {rec.count('perception')}", refresh=False)
                        bar.update(0)  # redraws at most every mininterval
                wall_span = span / self.args.rate
                if rec.count("perception") == 0 and time.monotonic() - started > wall_span + FIRST_OUTPUT_TIMEOUT_S:
                    raise StageError("replay", f"no fused output within {wall_span + FIRST_OUTPUT_TIMEOUT_S:.0f} s of "
                                               f"replay; node log {self.node_log}:\n{_tail(self.node_log)}")
                if time.monotonic() - started > 3 * wall_span + REPLAY_SLACK_S:
                    raise StageError("replay", f"replay of {span:.0f} s of bag time still running after "
                                               f"{time.monotonic() - started:.0f} s; its log ({self.replay_log}) "
                                               f"ends:\n{_tail(self.replay_log)}")
                time.sleep(0.1)
            if self.replay.returncode != 0:
                raise StageError("replay", f"replay exited with code {self.replay.returncode}; its log "
                                           f"({self.replay_log}) ends:\n{_tail(self.replay_log)}")
            # let the outputs of the last frames arrive: until none came for DRAIN_S
            while rec.last_output_wall is not None and time.monotonic() - rec.last_output_wall < DRAIN_S:
                self._check_node("replay")
                time.sleep(0.1)
            bar.n = bar.total
            bar.set_postfix_str(f"fused {rec.count('perception')}")
            bar.refresh()
        if rec.count("perception") == 0:
            raise StageError("replay", f"the node published no FusedPerception during the replay; node log "
                                       f"{self.node_log}:\n{_tail(self.node_log)}")

    def _check_node(self, stage: str) -> None:
        if self.node is not None and self.node.poll() is not None:
            raise StageError(stage, f"the fusion node died (exit code {self.node.returncode}); its log "
                                    f"({self.node_log}) ends:\n{_tail(self.node_log)}")

    # 4 ---------------------------------------------------------------------------------------------
    def report(self, bag: Path, model: Path, rate_hz: float, T_cam_lidar) -> dict:
        from ..report.build import build_report

        info = {"scenario": self.scenario_name, "seconds": self.args.seconds, "seed": self.args.seed,
                "model": model.name, "model_dir": str(model), "replay_rate": self.args.rate,
                "input_qos": "shipped params file" if self.args.best_effort
                else f"params file, {'/'.join(RELIABLE_INPUTS)} reliable", "stage_seconds": {k: round(v, 1) for k, v in self.times.items()}}
        T = T_cam_lidar if T_cam_lidar is not None else self.sim_config.camera.lidar_to_camera()
        bars = []

        def progress(total: int):
            bars.append(_progress("report", total, "frame"))
            return bars[-1].update

        try:
            return build_report(bag, self.out / "outputs", self.out, rate_hz, T, info, progress=progress,
                                with_video=not self.args.no_video)
        finally:
            for b in bars:
                b.close()

    def cleanup(self) -> None:
        _stop(self.replay)
        _stop(self.node)
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None


def _rate_hz(params_file: Path) -> float:
    """sync.rate_hz from the params file the node runs with."""
    import yaml

    data = yaml.safe_load(params_file.read_text()) or {}
    for v in data.values():
        try:
            return float(v["ros__parameters"]["sync"]["rate_hz"])
        except (KeyError, TypeError):
            continue
    return 10.0


def report_only(args: argparse.Namespace) -> int:
    """--bag SCENARIO --outputs RECORDING: stage 4 alone, on bags made earlier."""
    from ..report.build import build_report
    from ..report.summary import terminal

    if args.bag is None or not args.outputs.is_dir():
        print("mmfusion demo: error: --outputs needs --bag SCENARIO_BAG and an existing recording folder",
              file=sys.stderr)
        return 2
    out = args.out.resolve()
    info = {"scenario": args.bag.name, "model": f"recording {args.outputs}", "replay_rate": args.rate}
    side = args.bag / "sim_ground_truth.json"
    if side.is_file():
        import json

        meta = json.loads(side.read_text())
        info.update(scenario=meta.get("scenario", args.bag.name), seconds=meta.get("seconds"), seed=meta.get("seed"))
    try:
        with _progress("report", None, "frame") as bar:
            def progress(total: int):
                bar.reset(total)
                return bar.update

            s = build_report(args.bag, args.outputs, out, _rate_hz(_params_file()), info=info, progress=progress,
                             with_video=not args.no_video)
    except Exception as e:  # noqa: BLE001 - unreadable bags, no frames...: say so, no traceback
        print(f"mmfusion demo: stage 'report' failed: {type(e).__name__}: {e}", file=sys.stderr)
        return STAGES["report"]
    print()
    print(terminal(s))
    print(f"\nreport written to {out}")
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if not args.seconds > 0 or not args.rate > 0:
        print(f"mmfusion demo: error: --seconds and --rate must be positive, got {args.seconds} and {args.rate}",
              file=sys.stderr)
        return 2
    if args.model is not None and not (args.model / "manifest.json").is_file():
        print(f"mmfusion demo: error: --model {args.model}: no manifest.json there (not a model bundle)",
              file=sys.stderr)
        return 2
    if args.bag is not None and not args.bag.is_dir():
        print(f"mmfusion demo: error: --bag {args.bag}: not a rosbag2 folder", file=sys.stderr)
        return 2
    if args.outputs is not None:
        return report_only(args)
    try:
        domain, lock = _lock_domain(args.domain_id)
    except (ValueError, RuntimeError) as e:
        print(f"mmfusion demo: error: {e}", file=sys.stderr)
        return 2
    # children inherit these: the node, the replay and this process share one private DDS domain
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    os.environ.setdefault("ROS_LOG_DIR", str(args.out.resolve() / "logs" / "ros"))
    demo = Demo(args)
    demo.out.mkdir(parents=True, exist_ok=True)
    # a report folder holds one run: leave nothing of an earlier one that this run might not rewrite
    if (demo.out / "outputs").exists():
        shutil.rmtree(demo.out / "outputs")
    for f in REPORT_FILES:
        (demo.out / f).unlink(missing_ok=True)
    demo.logs.mkdir(parents=True, exist_ok=True)
    stage = "simulate"
    t_all = time.monotonic()
    from ..ros import recorder as ros_context

    # SIGTERM (e.g. a CI timeout) cleans up like Ctrl-C does
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo.say(f"mmfusion demo -> {demo.out} (ROS_DOMAIN_ID={domain}, logs in {demo.logs})")
        t = time.monotonic()
        bag = demo.simulate()
        demo.times["simulate"] = time.monotonic() - t
        from ..report.data import read_scenario

        scenario = read_scenario(bag)
        stage = "node"
        t = time.monotonic()
        model = resolve_model(args.model, demo.out, demo.say)
        ros_context.init_without_signal_handlers()
        demo.start_node(model, bag)
        demo.times["node"] = time.monotonic() - t
        stage = "replay"
        t = time.monotonic()
        demo.play(bag, scenario.t_start, scenario.t_end)
        demo.times["replay"] = time.monotonic() - t
        demo.cleanup()  # stop the node and finish the output bag before reading it
        stage = "report"
        t = time.monotonic()
        summary = demo.report(bag, model, _rate_hz(_params_file()), scenario.T_cam_lidar)
        demo.times["report"] = time.monotonic() - t
    except StageError as e:
        print(f"\nmmfusion demo: stage '{e.stage}' failed: {e}", file=sys.stderr)
        return STAGES[e.stage]
    except KeyboardInterrupt:
        print(f"\nmmfusion demo: interrupted during stage '{stage}'", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - any other failure: name the stage, keep the traceback in the log
        import traceback

        (demo.logs / "demo_error.log").write_text(traceback.format_exc())
        print(f"\nmmfusion demo: stage '{stage}' failed: {type(e).__name__}: {e} "
              f"(traceback in {demo.logs / 'demo_error.log'})", file=sys.stderr)
        return STAGES[stage]
    finally:
        demo.cleanup()
        ros_context.shutdown()
        lock.close()
    from ..report.summary import terminal, write_summary

    summary["stage_seconds"] = {k: round(v, 1) for k, v in demo.times.items()}
    summary["total_seconds"] = round(time.monotonic() - t_all, 1)
    write_summary(demo.out, summary)
    print()
    print(terminal(summary))
    print(f"\nreport written to {demo.out} in {summary['total_seconds']:.0f} s:")
    for f in REPORT_FILES + ("outputs", "scenario"):
        if (demo.out / f).exists():
            print(f"  {demo.out / f}")
    return 0
