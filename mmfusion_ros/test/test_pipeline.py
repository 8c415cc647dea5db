"""core.pipeline and core.events against a tiny deterministic numpy backend (no model), plus one run
on a real random-weight bundle through ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmfusion_ros.core.events import STATE_END, STATE_ONGOING, STATE_START, EventTracker, EventTrackerConfig
from mmfusion_ros.core.pipeline import Pipeline, PipelineConfig
from mmfusion_ros.core.preprocess import DEFAULT
from mmfusion_ros.core.types import EVENT_HORIZONS, EVENT_TYPES, Modality, SensorFrame

D = 384
MODS = ["camera", "lidar", "audio", "imu"]


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class FakeBackend:
    """Obeys the runtime Backend API with fixed random directions per modality; records its calls."""

    def __init__(self, seed: int = 0, history_len: int = 4, history_step: float = 0.5):
        rng = np.random.default_rng(seed)
        self.base = {m: unit(rng.standard_normal(D)) for m in MODS}  # (D,) per modality
        self.manifest = {
            "embed_dim": D, "modalities": MODS, "logit_scale": 20.0, "event_types": EVENT_TYPES[:2],
            "horizons": EVENT_HORIZONS, "event_history_len": history_len, "event_history_step": history_step,
            "event_thresholds": {EVENT_TYPES[0]: 0.5, EVENT_TYPES[1]: 0.8},
            "preprocess": {k: getattr(DEFAULT, k) for k in ("image_size", "audio_rate", "imu_rate")},
        }
        self.encoded = []  # (modality, input shape)
        self.fuse_calls = []  # (tokens, present)
        self.histories = []
        self.captions = 0
        self.event_probs = None  # (E,H) to return next; None = zeros

    def encode(self, modality, x):
        self.encoded.append((modality, x.shape))
        assert x.dtype == np.float32 and x.ndim >= 3
        m = x.reshape(len(x), -1).mean(1, keepdims=True)  # (B, 1)
        return unit(self.base[modality][None] + 0.01 * m)  # (B, D)

    def fuse(self, tokens, present):
        self.fuse_calls.append((tokens.copy(), present.copy()))
        w = present / present.sum(axis=1, keepdims=True)  # (B, 4)
        return unit((w[:, :, None] * tokens).sum(1)), w

    def events(self, history):
        self.histories.append(history.copy())
        if self.event_probs is None:
            return np.zeros((len(history), 2, 3), np.float32)
        return np.asarray(self.event_probs, np.float32)[None]

    def caption(self, embedding, kinds=None, tokens=None, used=None):
        assert embedding.shape == (D,)
        assert tokens is None or tokens.shape == (4, D) and used.shape == (4,)
        self.caption_inputs = (None if tokens is None else tokens.copy(), None if used is None else used.copy())
        self.captions += 1
        return f"caption {self.captions}", 0.75


def frame(stamp=0.0, camera=True, lidar=True, audio=True, imu=True, seed=0):
    rng = np.random.default_rng(seed)
    return SensorFrame(
        stamp=stamp,
        image=rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) if camera else None,
        lidar=(rng.standard_normal((200, 4)) * 5).astype(np.float32) if lidar else None,
        audio=(rng.standard_normal(16000) * 0.1).astype(np.float32) if audio else None,
        imu=rng.standard_normal((400, 6)).astype(np.float32) if imu else None,
    )


def make(backend=None, **cfg):
    b = backend or FakeBackend()
    prompts = ["camera thing", "lidar thing", "audio thing", "imu thing", "nothing"]
    emb = np.stack([b.base[m] for m in MODS] + [unit(np.ones(D))])  # (5, D)
    return b, Pipeline(b, PipelineConfig(**cfg), prompts, emb)


def test_all_modalities_are_encoded_fused_and_labelled():
    b, p = make(top_k=3)
    r = p.process(frame(1.5))
    assert [m for m, _ in b.encoded] == MODS
    assert dict(b.encoded)["camera"] == (1, 3, 128, 128) and dict(b.encoded)["imu"] == (1, 6, 400)
    tokens, present = b.fuse_calls[0]
    assert tokens.shape == (1, 4, D) and present.tolist() == [[1, 1, 1, 1]]
    assert r.stamp == 1.5 and r.present == [Modality(m) for m in MODS]
    assert r.embedding.shape == (D,) and abs(np.linalg.norm(r.embedding) - 1) < 1e-5
    assert len(r.labels) == 3
    scores = [s for _, s in r.labels]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
    assert "nothing" not in [label for label, _ in r.labels]  # the one prompt unlike every modality


def test_absent_modalities_get_zero_tokens_and_zero_weight():
    b, p = make()
    r = p.process(frame(camera=False, audio=False))
    assert [m for m, _ in b.encoded] == ["lidar", "imu"]
    tokens, present = b.fuse_calls[0]
    assert present.tolist() == [[0, 1, 0, 1]]
    assert not tokens[0, 0].any() and not tokens[0, 2].any() and tokens[0, 1].any()
    assert r.present == [Modality.LIDAR, Modality.IMU]
    assert r.modality_weights[0] == 0 and r.modality_weights[2] == 0 and r.modality_weights[1] > 0
    # the caption's presence probe sees the same tokens and only the sensors the claims rest on
    cap_tokens, cap_used = b.caption_inputs
    assert np.array_equal(cap_tokens, tokens[0]) and cap_used.tolist() == [0, 1, 0, 1]


def test_single_modality_frame_is_labelled_by_that_modality():
    b, p = make(top_k=1)
    r = p.process(frame(camera=False, lidar=False, imu=False))
    assert r.labels[0][0] == "audio thing" and r.labels[0][1] > 0.5
    r = p.process(frame(stamp=0.1, lidar=False, audio=False, imu=False))
    assert r.labels[0][0] == "camera thing"
    # an IMU cannot observe what is in the scene: an IMU-only frame gets no scene label at all
    assert p.process(frame(stamp=0.2, camera=False, lidar=False, audio=False)).labels == []


def test_frame_with_nothing_present_is_an_error():
    _, p = make()
    with pytest.raises(ValueError, match="no modality"):
        p.process(SensorFrame(stamp=0.0))


def test_caption_every_n_frames_is_reused_in_between_and_says_so():
    b, p = make(caption_every_n=3)
    results = [p.process(frame(0.1 * i, seed=i)) for i in range(7)]
    assert b.captions == 3  # frames 0, 3, 6
    assert [r.caption for r in results] == ["Caption 1"] * 3 + ["Caption 2"] * 3 + ["Caption 3"]
    assert [r.timings_ms["caption_reused"] for r in results] == [0, 1, 1, 0, 1, 1, 0]
    assert all(r.caption_confidence == 0.75 for r in results)
    b, p = make(caption_every_n=0)
    assert p.process(frame()).caption is None and b.captions == 0


def test_event_history_is_resampled_at_the_step_and_padded_with_the_oldest():
    b, p = make()  # history_len 4, step 0.5 s
    stamps = [10.0, 10.3, 10.5, 11.2]
    fused = [p.process(frame(t, seed=k)).embedding for k, t in enumerate(stamps)]
    h = b.histories[-1]
    assert h.shape == (1, 4, D)
    # targets 9.7, 10.2, 10.7, 11.2 -> oldest (pad), 10.0, 10.5, 11.2
    np.testing.assert_array_equal(h[0, 0], fused[0])
    np.testing.assert_array_equal(h[0, 1], fused[0])
    np.testing.assert_array_equal(h[0, 2], fused[2])
    np.testing.assert_array_equal(h[0, 3], fused[3])
    # the first frame sees its own embedding repeated
    assert np.all(b.histories[0][0] == fused[0])
    # time going back starts a new history
    r = p.process(frame(1.0, seed=9))
    assert np.all(b.histories[-1][0] == r.embedding)


def test_events_start_continue_and_end_through_the_pipeline():
    b, p = make(event_alpha=1.0)
    b.event_probs = [[0.9, 0.2, 0.1], [0.0, 0.0, 0.0]]
    r1 = p.process(frame(0.0))
    r2 = p.process(frame(0.1))
    b.event_probs = [[0.1, 0.0, 0.0], [0.0, 0.0, 0.0]]
    r3 = p.process(frame(0.2))
    r4 = p.process(frame(0.3))
    assert [(e.type, e.state) for e in r1.events] == [(EVENT_TYPES[0], STATE_START)]
    assert [e.state for e in r2.events] == [STATE_ONGOING]
    assert [e.state for e in r3.events] == [STATE_END]
    assert r4.events == []
    e = r1.events[0]
    assert e.horizon == 0.5 and e.probability == pytest.approx(0.9) and e.time_to_event == pytest.approx(0.25)


def test_timings_cover_every_stage():
    _, p = make()
    r = p.process(frame())
    for k in ("preprocess", "encode", "encode_camera", "fuse", "labels", "caption", "events", "inference", "total"):
        assert k in r.timings_ms and r.timings_ms[k] >= 0
    assert r.timings_ms["total"] >= r.timings_ms["inference"]


class FakePerception:
    def __init__(self):
        self.calls = []

    def process(self, points, stamp, image=None, camera=None, T_cam_lidar=None, embed_crops=None,
                prompt_embeddings=None, prompts=None):
        self.calls.append(dict(points=points, stamp=stamp, image=image, T=T_cam_lidar, prompts=prompts))
        crops = [image[:10, :10], image[5:30, 5:40]]
        emb = embed_crops(crops)  # (2, D)
        best = np.argmax(emb @ prompt_embeddings.T, axis=1)
        from mmfusion_ros.core.types import DetectedObject

        return [DetectedObject(center=np.zeros(3), size=np.ones(3), yaw=0.0, label=prompts[i], score=1.0,
                               label_from_camera=True, point_count=len(points)) for i in best]


def test_perception_hook_gets_the_frame_and_a_crop_embedder():
    b = FakeBackend()
    perc = FakePerception()
    T = np.eye(4)
    prompts = ["camera thing", "imu thing"]
    p = Pipeline(b, PipelineConfig(), prompts, np.stack([b.base["camera"], b.base["imu"]]), perception=perc,
                 T_cam_lidar=T)
    f = frame(2.0)
    r = p.process(f)
    call = perc.calls[0]
    assert call["points"] is f.lidar and call["stamp"] == 2.0 and call["image"] is f.image and call["T"] is T
    assert [o.label for o in r.objects] == ["camera thing", "camera thing"]
    assert ("camera", (2, 3, 128, 128)) in b.encoded
    assert "perception" in r.timings_ms
    # no LiDAR, no objects; disabled, not called
    p.process(frame(2.1, lidar=False))
    assert len(perc.calls) == 1
    p.cfg.enable_perception = False
    p.process(frame(2.2))
    assert len(perc.calls) == 1


def test_set_prompts_validates_and_never_changes_the_callers_array():
    b, p = make()
    emb = np.stack([b.base["camera"] * 3.0, b.base["lidar"]])  # not unit length
    before = emb.copy()
    p.set_prompts(["a", "b"], emb)
    np.testing.assert_array_equal(emb, before)
    assert np.allclose(np.linalg.norm(p.prompt_embeddings, axis=1), 1)
    with pytest.raises(ValueError, match="embeddings"):
        p.set_prompts(["a"], emb)
    emb[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        p.set_prompts(["a", "b"], emb)
    p.set_prompts([], None)
    assert p.process(frame()).labels == []


@pytest.mark.parametrize("field,value", [("top_k", -1), ("caption_every_n", 1.5), ("label_temperature", 0),
                                         ("event_history_len", 0), ("event_alpha", 0.0)])
def test_pipeline_config_validation(field, value):
    with pytest.raises(ValueError):
        PipelineConfig(**{field: value}).validate()


# ---- EventTracker on its own ----------------------------------------------------------------------
def tracker(**kw):
    return EventTracker(["a", "b"], [0.5, 1.0, 2.0], {"a": 0.5, "b": 0.8}, EventTrackerConfig(**kw))


def test_hysteresis_uses_per_event_on_and_off_thresholds():
    t = tracker(alpha=1.0)
    seq = [0.55, 0.4, 0.36, 0.34, 0.45, 0.5]  # event a: on at 0.5, off below 0.35
    states = []
    for v in seq:
        ev = t.update(np.array([[v, v, v], [v, v, v]]))
        states.append([(e.type, e.state) for e in ev])
    assert states == [[("a", STATE_START)], [("a", STATE_ONGOING)], [("a", STATE_ONGOING)], [("a", STATE_END)],
                      [], [("a", STATE_START)]]  # b (threshold 0.8) never starts


def test_smoothing_ignores_a_one_frame_spike():
    t = tracker(alpha=0.5)
    z = np.zeros((2, 3))
    t.update(z)
    spike = z.copy()
    spike[0] = 0.9
    assert t.update(spike) == []  # EMA 0.45 < 0.5
    assert [e.state for e in t.update(spike)] == [STATE_START]  # sustained evidence does start it


def test_reported_horizon_is_the_soonest_likely_one():
    t = tracker(alpha=1.0)
    (e,) = t.update(np.array([[0.1, 0.6, 0.9], [0, 0, 0]]))
    assert e.horizon == 1.0 and e.time_to_event == pytest.approx(0.75) and e.probability == pytest.approx(0.6)


def test_tracker_rejects_bad_input():
    t = tracker()
    with pytest.raises(ValueError, match="shape"):
        t.update(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="unknown"):
        EventTracker(["a"], [1.0], {"zz": 0.5})
    with pytest.raises(ValueError, match="horizons"):
        EventTracker(["a"], [1.0, 0.5])
    # NaN probabilities read as no evidence instead of poisoning the EMA
    assert t.update(np.full((2, 3), np.nan)) == []
    assert np.all(np.isfinite(t.smoothed))


# ---- the real runtime on a random-weight bundle -----------------------------------------------------
def test_pipeline_with_onnxruntime_on_a_random_bundle(random_model_dir):
    runtime = pytest.importorskip("mmfusion_ros.runtime")
    backend = runtime.create_backend(random_model_dir, "onnxruntime")
    prompts = json.loads((random_model_dir / "prompts.json").read_text())["prompts"]
    labels = [q["label"] for q in prompts]
    emb = np.array([q["embedding"] for q in prompts], np.float32)
    p = Pipeline(backend, PipelineConfig(top_k=3, caption_every_n=2), labels, emb)
    man = backend.manifest
    results = [p.process(frame(0.1 * i, camera=i % 2 == 0, seed=i)) for i in range(4)]
    for r in results:
        assert r.embedding.shape == (man["embed_dim"],) and abs(np.linalg.norm(r.embedding) - 1) < 1e-4
        assert len(r.labels) == 3 and all(label in labels for label, _ in r.labels)
        assert isinstance(r.caption, str)
        for e in r.events:
            assert e.type in man["event_types"] and 0 <= e.probability <= 1
    assert results[1].modality_weights[0] == 0 and results[0].modality_weights[0] > 0
    # the camera comes and goes: a caption decoded with it must not be reused without it
    assert results[1].timings_ms["caption_reused"] == 0.0
    assert results[1].used == ["lidar", "audio", "imu"] and results[0].used[0] == "camera"
    backend.close()
