"""The fusion node: sensor topics in, fused perception, captions, events and markers out.

A lifecycle node named `mmfusion` (thin ROS glue over core.sync.Collector and core.pipeline.Pipeline):
- construction declares every parameter of ros/params.py;
- configure reads and validates them (a bad value fails the transition with the parameter named, the
  node stays unconfigured), creates the subscriptions, publishers and the collector;
- activate loads the model bundle through runtime.create_backend, embeds the prompts once and starts
  the inference worker; deactivate stops the worker and frees the model.
Subscription callbacks only convert a message and hand it to the collector (ros/inputs.py, the one
input path that offline processing and training on bags share); a worker thread polls the collector on the node's clock (sim time under use_sim_time) and runs the
pipeline on the newest due frame only: frames that went due while it was busy are counted as skipped.
A malformed message is counted in /diagnostics and logged at most once per 5 s per input.
Subscribed sensors the bundle has no encoder for (a tower bundle before `mmfusion train --towers`) are
logged once at activate and named under `not_bound` in the pipeline's /diagnostics status (OK: frames fuse
from the bound sensors).
~/set_prompts checks the request against prompts.max_count / max_length, embeds it on its own thread and
swaps it into the pipeline between two frames, so perception and /diagnostics go on meanwhile.
`main()` configures and activates on start-up unless the parameter `autostart` is false.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleState, Node, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.task import Future as RclpyFuture

from mmfusion_msgs.srv import SetPrompts
from mmfusion_ros.core.sync import Collector, SyncConfig
from mmfusion_ros.core.types import SENSOR_MODALITIES
from mmfusion_ros.ros import conversions as conv
from mmfusion_ros.ros import messages
from mmfusion_ros.ros import params as P
from mmfusion_ros.ros import pipeline_factory as factory
from mmfusion_ros.ros.diagnostics import NodeDiagnostics, not_bound_text
from mmfusion_ros.ros.extrinsics import ExtrinsicsResolver
from mmfusion_ros.ros.inputs import (INPUTS, OPTIONAL_OUTPUTS, OUTPUTS, TF_TOPICS, InputFeeder, input_msgtype,
                                     input_topics, msg_class, output_topics, type_available)
from mmfusion_ros.ros.qos import input_qos, output_qos
#: seconds between two log lines about the same pipeline error
ERROR_LOG_PERIOD_S = 5.0


class FusionNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs):
        super().__init__(P.NODE_NAME, **kwargs)
        for spec in P.PARAMS:
            self.declare_parameter(
                spec.name, spec.default,
                ParameterDescriptor(description=spec.description, dynamic_typing=True))
        self.add_on_set_parameters_callback(self._check_new_parameters)
        self._values: Dict[str, Any] = {}
        self._lock = threading.Lock()  # guards the collector (callbacks vs worker)
        self._pipeline_lock = threading.Lock()  # guards the pipeline (worker vs set_prompts)
        self._collector: Optional[Collector] = None
        self._diag: Optional[NodeDiagnostics] = None
        self._subs: List[Any] = []
        self._pubs: Dict[str, Any] = {}
        self._diag_pub = None
        self._diag_timer = None
        self._backend = None
        self._pipeline = None
        self._embedder: Optional[factory.PromptEmbedder] = None
        self._feeder: Optional[InputFeeder] = None
        self._prompt_job: Optional[threading.Thread] = None  # the SetPrompts request being embedded
        self._prompt_status = "defaults"  # what the last SetPrompts request came to (in /diagnostics)
        self._model_dir: Optional[Path] = None
        self._markers = None  # ros/markers.MarkerArrayBuilder while configured
        self._perception_cfg = None  # core.perception.PerceptionConfig when perception is enabled
        self._T_cam_lidar: Optional[np.ndarray] = None  # (4, 4) from perception.extrinsics_file
        self._extrinsics: Optional[ExtrinsicsResolver] = None  # TF first, that file as the fallback
        self._tf_lock = threading.Lock()  # guards the transform tree (TF callbacks vs worker)
        self._worker: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._active = False
        self._state = "unconfigured"
        self._last_error_log = float("-inf")
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        # its own callback group: while a request awaits its embedding, the default group (subscriptions,
        # the diagnostics timer) stays free to run on the same executor
        self.create_service(SetPrompts, "~/set_prompts", self._on_set_prompts,
                            callback_group=MutuallyExclusiveCallbackGroup())

    # ---- helpers -----------------------------------------------------------------------------------
    def _now(self) -> float:
        """Node clock in seconds (sim time under use_sim_time)."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _set_state(self, state: str) -> None:
        self._state = state
        if self._diag is not None:
            self._diag.state = state

    def _check_new_parameters(self, params: List[Parameter]) -> SetParametersResult:
        """Reject a bad value at `ros2 param set` time; good values apply at the next configure."""
        for p in params:
            spec = P.SPECS.get(p.name)
            if spec is None:
                continue
            try:
                spec.check(p.value)
            except P.ParamError as e:
                return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    # ---- lifecycle ---------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            values = P.validate({spec.name: self.get_parameter(spec.name).value for spec in P.PARAMS})
            sync_cfg = SyncConfig(**P.sync_kwargs(values)).validate()
            factory.pipeline_config(values)  # a bad pipeline.* value fails configure, not activate
            self._perception_cfg, self._T_cam_lidar, self._extrinsics = None, None, None
            if factory.objects_wanted(values):  # perception on, and an output that shows objects
                from mmfusion_ros.core.perception import PerceptionConfig

                self._perception_cfg = PerceptionConfig.from_dict(P.perception_dict(values))
                self._T_cam_lidar = factory.load_T_cam_lidar(values)  # (4, 4) LiDAR -> camera optical frame
                yaml_path = ""
                if self._T_cam_lidar is not None:
                    yaml_path = str(P.extrinsics_file(values["perception.extrinsics_file"]))
                    self.get_logger().info(f"camera labels for 3D objects use the extrinsics in {yaml_path}"
                                           + (" unless TF has them" if values["perception.extrinsics_from_tf"]
                                              else ""))
                self._extrinsics = ExtrinsicsResolver(self._T_cam_lidar, yaml_path,
                                                      values["perception.extrinsics_from_tf"],
                                                      self.get_logger().info, self.get_logger().warning)
            audio_type = input_msgtype("audio", values)
            if values["topics.audio"]:  # detected here: the type's package may not be installed on this robot
                why = type_available(audio_type)
                if why is not None:
                    raise P.ParamError("types.audio", f"{audio_type} cannot be used: {why}")
        except (ValueError, OSError) as e:
            self.get_logger().error(f"configure failed: {e}")
            return TransitionCallbackReturn.FAILURE
        self._values = values
        self._collector = Collector(sync_cfg, log=self.get_logger())
        self._feeder = InputFeeder(self._collector, values)
        timeouts = {m.value: values[f"sync.timeout.{m.value}"] for m in SENSOR_MODALITIES}
        self._diag = NodeDiagnostics(self.get_name(), timeouts)
        self._diag.state = "inactive"
        for name, topic in input_topics(values).items():
            self._diag.add_input(name, topic, INPUTS[name].group)
            qos = input_qos(values[f"qos.{name}.reliability"], values[f"qos.{name}.depth"])
            self._subs.append(self.create_subscription(msg_class(input_msgtype(name, values)), topic,
                                                       self._callback(name), qos))
        if values["topics.audio"]:
            self.get_logger().info(f"audio input: {input_msgtype('audio', values)} on {values['topics.audio']}")
        self._subscribe_tf()
        for name, topic in output_topics(values).items():  # an output switched off is not built at all
            self._pubs[name] = self.create_lifecycle_publisher(msg_class(OUTPUTS[name].msgtype), topic, output_qos())
        for name, spec in OPTIONAL_OUTPUTS.items():  # published where the package is installed
            topic = values[f"topics.{name}"]
            if not topic or not factory.objects_wanted(values):  # (only detections: objects are computed)
                continue
            why = type_available(spec.msgtype)
            if why is not None:
                self.get_logger().info(f"{topic} ({spec.msgtype}) is not published: {why}")
                continue
            self._pubs[name] = self.create_lifecycle_publisher(msg_class(spec.msgtype), topic, output_qos())
        self._markers = None
        if "markers" in self._pubs:
            try:  # ros/markers.py remembers what it shows, to DELETE markers of objects that are gone
                from mmfusion_ros.ros.markers import MarkerArrayBuilder, rclpy_kit

                self._markers = MarkerArrayBuilder(rclpy_kit())
            except ImportError as e:
                self.get_logger().warning(f"no RViz markers: {e}")
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # steady clock: diagnostics keep coming when a sim clock stops (and say the inputs went stale)
        self._diag_timer = self.create_timer(values["diagnostics.period_s"], self._publish_diagnostics,
                                             clock=self._steady)
        self._set_state("inactive")
        used = [f"{n}={t}" for n, t in input_topics(values).items()]
        self.get_logger().info(f"configured: inputs {', '.join(used)}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        v = self._values
        try:
            self._model_dir = P.resolve_model_dir(v["model.dir"])
            self._embedder = factory.PromptEmbedder(self._model_dir)
            self._backend = self._create_backend(self._model_dir)
            labels, emb = self.embed_prompts(v["model.prompts"])
            self._pipeline = self._create_pipeline(labels, emb)
        except Exception as e:  # noqa: BLE001 - any load failure: report it, stay inactive, keep running
            self.get_logger().error(f"activate failed: {type(e).__name__}: {e}")
            self._release_model()
            return TransitionCallbackReturn.FAILURE
        self._diag.backend = getattr(self._backend, "name", type(self._backend).__name__)
        self._diag.extra["model_dir"] = str(self._model_dir)
        self._diag.not_bound = self._not_bound()
        if self._diag.not_bound:  # once: a property of the model, shown in /diagnostics as long as it holds
            self.get_logger().info(f"not bound: {not_bound_text(self._diag.not_bound)}")
        ret = super().on_activate(state)  # activates the lifecycle publishers before the worker uses them
        self._stop.clear()
        self._worker = threading.Thread(target=self._worker_loop, name="mmfusion-inference", daemon=True)
        self._active = True
        self._worker.start()
        self._set_state("active")
        self.get_logger().info(f"active: model {self._model_dir} on {self._diag.backend}, "
                               f"{len(labels)} prompts, trigger {v['sync.trigger']}")
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release_model()
        self._diag.not_bound = []  # the model that lacked them is gone; activate asks the next one
        if self._markers is not None and "markers" in self._pubs:  # take our boxes out of RViz
            self._pubs["markers"].publish(self._markers.clear(self._now(), self._values["frame_id"]))
        self._set_state("inactive")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_entities()
        self._set_state("unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: free everything and go back to unconfigured (configure can be retried)."""
        self.release()
        self._set_state("unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Stop the worker, free the model and every subscription/publisher (idempotent)."""
        self._stop_worker()
        self._release_model()
        self._destroy_entities()
        self._set_state("finalized")

    @property
    def state(self) -> str:
        """unconfigured, inactive, active or finalized."""
        return self._state

    # ---- model -------------------------------------------------------------------------------------
    def _create_backend(self, model_dir: Path):
        return factory.open_backend(model_dir, self._values)

    def _create_pipeline(self, labels: List[str], emb: np.ndarray):
        """The one assembly (ros/pipeline_factory.py), on the backend and prompts this node already holds."""
        return factory.open_pipeline(self._model_dir, self._values, backend=self._backend, prompts=(labels, emb),
                                     T_cam_lidar=self._T_cam_lidar)

    def _not_bound(self) -> List[str]:
        """Subscribed sensor modalities the loaded model has no encoder for (a tower bundle before
        `mmfusion train --towers`), in model order."""
        subscribed = {INPUTS[name].group for name in input_topics(self._values)}
        model = set(self._pipeline.modalities)
        return [m.value for m in SENSOR_MODALITIES if m.value in subscribed and m.value not in model]

    def embed_prompts(self, prompts: List[str]) -> Tuple[List[str], np.ndarray]:
        """Prompts -> (labels, (P,D) embeddings), once: prompts.json where it has them, else the text encoder."""
        return self._embedder.embed(prompts)

    def _release_model(self) -> None:
        with self._pipeline_lock:
            self._pipeline = None
            if self._backend is not None:
                try:
                    self._backend.close()
                finally:
                    self._backend = None
            if self._embedder is not None:
                self._embedder.close()

    # ---- inputs ------------------------------------------------------------------------------------
    def _callback(self, name: str) -> Callable[[Any], None]:
        def callback(msg) -> None:
            if not self._active:
                return
            received = self._now()  # the receive clock the collector measures this sensor's clock against
            try:
                sample = self._feeder.convert(name, msg)  # outside the lock: the worker keeps polling
                if sample is not None:
                    with self._lock:
                        self._feeder.add(sample, received)
            except Exception as e:  # noqa: BLE001 - any bad message: count, log (throttled), keep running
                self._reject(name, e)
                return
            if sample is None:  # deliberately not used (a compressed image while raw ones flow)
                self._diag.ignored(name)
            else:
                self._diag.message(name, sample.stamp, received)

        return callback

    def _subscribe_tf(self) -> None:
        """/tf_static (latched: reliable, transient local) and /tf into the extrinsics' transform tree."""
        ex = self._extrinsics
        if ex is None or not ex.use_tf:
            return
        why = type_available(TF_TOPICS["tf"][1])
        if why is not None:
            self.get_logger().warning(f"extrinsics come from the YAML only: {why}")
            return
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        for name, (topic, msgtype) in TF_TOPICS.items():
            static = name == "tf_static"
            qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if static else DurabilityPolicy.VOLATILE)

            def on_tf(msg, static=static) -> None:
                with self._tf_lock:
                    ex.add_tf(msg, static)

            self._subs.append(self.create_subscription(msg_class(msgtype), topic, on_tf, qos))

    def _resolve_extrinsics(self, frame) -> None:
        """The frame's T_cam_lidar: TF between its cloud's and its camera's frame_id, else the YAML's."""
        ex = self._extrinsics
        if ex is None or frame.lidar is None or frame.camera is None:
            return
        with self._tf_lock:
            T = ex.resolve(frame.frame_id, frame.camera.frame_id)
        self._pipeline.T_cam_lidar = T
        self._diag.extra["extrinsics"] = ex.source

    def _reject(self, name: str, e: Exception) -> None:
        what = str(e) if isinstance(e, (conv.ConversionError, ValueError)) else f"{type(e).__name__}: {e}"
        if self._diag.rejected(name, what, time.monotonic()):
            self.get_logger().warning(
                f"rejected a {name} message on {self._values[f'topics.{name}']}: {what} "
                f"({self._diag.counters(name).rejected} so far; logged at most every 5 s)")

    # ---- worker ------------------------------------------------------------------------------------
    def _worker_loop(self) -> None:
        """Poll the collector; fuse only the newest due frame (the others are counted as skipped)."""
        v = self._values
        period = 0.005 if v["sync.trigger"] != "rate" else min(0.01, 0.25 / v["sync.rate_hz"])
        while not self._stop.wait(period):
            try:
                with self._lock:
                    frames = self._collector.poll(self._now())
            except Exception as e:  # noqa: BLE001 - keep the worker alive; say why
                self._log_error(f"collector poll failed: {type(e).__name__}: {e}")
                continue
            if not frames:
                continue
            frame, skipped = frames[-1], len(frames) - 1
            with self._pipeline_lock:
                if self._pipeline is None:
                    return
                try:
                    self._resolve_extrinsics(frame)
                    result = self._pipeline.process(frame)
                except Exception as e:  # noqa: BLE001
                    self._diag.pipeline_error()
                    self._diag.skipped(skipped)
                    self._log_error(f"pipeline failed on frame {frame.stamp:.3f}: {type(e).__name__}: {e}")
                    continue
            # counted before publishing, so /diagnostics never lags what subscribers already received
            self._diag.frame([getattr(m, "value", m) for m in result.present], messages.inference_ms(result), skipped,
                             familiarity=result.familiarity, used=result.used, dropped=result.dropped)
            if not self.context.ok():  # shutting down (SIGINT): nothing can be published any more
                return
            try:
                self._publish(result)
            except Exception as e:  # noqa: BLE001
                if not self.context.ok():
                    return
                self._log_error(f"publishing failed: {type(e).__name__}: {e}")

    def _log_error(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_PERIOD_S:
            self._last_error_log = now
            self.get_logger().error(text)

    def _publish(self, result) -> None:
        lidar_frame = any(getattr(m, "value", m) == "lidar" for m in result.present)
        frame_id = result.frame_id if lidar_frame and result.frame_id else self._values["frame_id"]
        pubs = self._pubs
        if "perception" in pubs:
            pubs["perception"].publish(messages.perception_msg(result, frame_id))
        if "caption" in pubs:
            cap = messages.caption_msg(result, frame_id)
            if cap is not None:
                pubs["caption"].publish(cap)
        if "events" in pubs:
            pubs["events"].publish(messages.events_msg(result, frame_id))
        if "detections" in pubs:  # vision_msgs/Detection3DArray beside FusedPerception
            from mmfusion_ros.ros.vision import detection3d_array_msg

            pubs["detections"].publish(detection3d_array_msg(result, frame_id))
        if "markers" in pubs and self._markers is not None:
            pubs["markers"].publish(self._markers.build(dataclasses.replace(result, frame_id=frame_id)))

    def _stop_worker(self) -> None:
        self._active = False
        self._stop.set()
        w, self._worker = self._worker, None
        if w is not None and w is not threading.current_thread():
            w.join(timeout=10.0)

    # ---- diagnostics and services ------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        if self._diag is None or self._diag_pub is None:
            return
        self._diag.extra["torch_loaded"] = "true" if "torch" in sys.modules else "false"
        with self._lock:  # each sensor's clock offset and newest stamp on the receive clock
            sync = self._collector.stats() if self._collector is not None else None
        self._diag_pub.publish(self._diag.build(self._now(), sync=sync))

    async def _on_set_prompts(self, request, response):
        """Check the request, embed it on its own thread and swap it into the running pipeline between two
        frames (or keep it for activate). The executor awaits the embedding instead of running it, so
        subscriptions, /diagnostics and the inference worker carry on; one request at a time."""
        try:
            values = self._values or P.defaults()
            prompts = P.check_prompts(list(request.prompts), values)
            if values["pipeline.top_k"] > len(prompts):
                raise P.ParamError("model.prompts", f"fewer prompts than pipeline.top_k ({values['pipeline.top_k']})")
            if self._prompt_job is not None:
                raise RuntimeError("another set_prompts request is still being embedded; try again when it is done")
            if self._pipeline is not None:
                done = RclpyFuture(executor=self.executor)
                self._prompt_job = threading.Thread(target=self._embed_and_swap, args=(prompts, done),
                                                    name="mmfusion-prompts", daemon=True)
                self._set_prompt_status(f"embedding {len(prompts)} prompts")
                self._prompt_job.start()
                try:
                    await done  # raises what the embedding raised
                finally:
                    self._prompt_job = None
            self.set_parameters([Parameter("model.prompts", Parameter.Type.STRING_ARRAY, prompts)])
            if self._values:
                self._values["model.prompts"] = prompts
        except Exception as e:  # noqa: BLE001 - tell the caller why
            self._set_prompt_status(f"request refused: {type(e).__name__}: {e}"[:200])
            response.success = False
            response.message = f"{type(e).__name__}: {e}"
            return response
        in_use = self._pipeline is not None
        self._set_prompt_status(f"{len(prompts)} in use" if in_use else f"{len(prompts)} stored for activate")
        response.success = True
        response.message = (f"{len(prompts)} prompts embedded and in use" if in_use
                            else f"{len(prompts)} prompts stored; they are embedded on activate")
        return response

    def _embed_and_swap(self, prompts: List[str], done) -> None:
        """The SetPrompts worker: embed off the executor, then swap labels and embeddings under the pipeline
        lock (a frame sees the old set or the new one, never a mix)."""
        try:
            labels, emb = self.embed_prompts(prompts)  # (P, D); seconds for thousands of new prompts
            with self._pipeline_lock:
                if self._pipeline is None:
                    raise RuntimeError("the node was deactivated while the prompts were embedded")
                self._pipeline.set_prompts(labels, emb)
            done.set_result(len(labels))
        except Exception as e:  # noqa: BLE001 - handed to the awaiting service call
            done.set_exception(e)
        executor = self.executor
        if executor is not None:
            executor.wake()  # resume the service call now, not at the next message

    def _set_prompt_status(self, text: str) -> None:
        if self._diag is not None:
            self._diag.extra["prompts"] = text

    def _destroy_entities(self) -> None:
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        for p in self._pubs.values():
            self.destroy_lifecycle_publisher(p)
        self._pubs = {}
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
            self._diag_pub = None
        self._collector = None


def main(args: Optional[List[str]] = None) -> int:
    """The fusion_node executable: spin the node; configure and activate it unless autostart is false."""
    rclpy.init(args=args if args is not None else sys.argv)
    node = FusionNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        autostart = node.get_parameter("autostart").value
        if not isinstance(autostart, bool):
            node.get_logger().error(f"parameter 'autostart': expected true or false, got {autostart!r}; "
                                    f"waiting for a lifecycle manager")
        elif autostart:
            node.trigger_configure()
            if node.state == "inactive":
                node.trigger_activate()
            if node.state != "active":
                node.get_logger().error(
                    f"autostart: node is {node.state}; fix the error above and use the lifecycle services "
                    f"(~/change_state) to retry")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.release()
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
