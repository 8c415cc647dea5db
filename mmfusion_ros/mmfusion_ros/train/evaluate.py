"""Evaluation of a trained model on a dataset split: tables T1-T8 as markdown and JSON.

T1 retrieval, T2 zero-shot labels, T3 robustness to missing modalities, T4 captions, T5 events (per-frame
alarms and the node's event tracker), T6 calibration error per output with reliability diagrams, T7
unsupported claims per presence subset, T8 familiarity against real recordings. One method per table.

Gallery for retrieval and the caption set: one frame per second of every scene of the split (the
frames in between are near-duplicates and would only inflate the gallery). Event metrics use every
frame, in time order.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mmfusion_ros.core.calibration import Calibration
from mmfusion_ros.core.caption_choice import load_optional as load_presence
from mmfusion_ros.model.checkpoint import load_checkpoint
from mmfusion_ros.model.mmfusion import SENSOR_KEYS, MMFusionModel
from mmfusion_ros.core.observability import observable_kinds
from mmfusion_ros.model.prompts import default_prompts
from mmfusion_ros.model.text import TextEmbedder
from mmfusion_ros.train import metrics as M
from mmfusion_ros.train.data import Split, load_split

# The words a caption uses for each class when it sees it or hears it (from the simulator's caption
# templates), for the mention precision/recall of T4.
OBJECT_WORDS = {"person": ["person", "someone", "voices", "footsteps"], "dog": ["dog", "barking"],
                "car": ["car", "engine"], "bicycle": ["bicycle", "bell"], "traffic_cone": ["traffic cone", "knocking"],
                "box": ["box", "scraping"], "chair": ["chair", "squeaking"], "door": ["door"],
                "alarm": ["alarm"]}
SOUND_WORDS = {"person": ["talking", "voices", "footsteps"], "dog": ["barking"], "car": ["engine"],
               "bicycle": ["bell"], "traffic_cone": ["knocking"], "box": ["scraping"], "chair": ["squeaking"],
               "door": ["creaking", "slam"], "alarm": ["alarm ringing", "alarm beeping"]}


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


@torch.no_grad()
def embed_split(model: MMFusionModel, split: Split, batch: int = 128) -> np.ndarray:
    """(N, 4, 384) embeddings of every sample by every sensor encoder."""
    model.eval()
    out = np.zeros((len(split), len(SENSOR_KEYS), model.cfg.embed_dim), np.float32)
    for s in range(0, len(split), batch):
        idx = np.arange(s, min(s + batch, len(split)))
        x = split.inputs(idx)
        for j, k in enumerate(SENSOR_KEYS):
            out[idx, j] = _np(model.encode(k, torch.from_numpy(x[k])))
    return out


@dataclass
class EvalContext:
    """What every table of one split shares: the split, its embeddings and the gallery."""

    split: Split
    tokens: np.ndarray  # (N, 4, 384) per-sensor embeddings
    fused_all: np.ndarray  # (N, 384) fused with all four present
    gal: np.ndarray  # (G,) gallery frame indices: one per second per scene
    canon: List[str]  # (N,) first caption phrasing
    first: np.ndarray  # (N,) bool, first frame of a scene
    outputs: Optional[object] = None  # train.calibrate.SplitOutputs, computed once for T6/T7

    @property
    def arrays(self) -> Dict[str, np.ndarray]:
        return self.split.arrays

    @property
    def emb(self) -> Dict[str, np.ndarray]:
        e = {k: self.tokens[:, j] for j, k in enumerate(SENSOR_KEYS)}
        e["fused"] = self.fused_all
        return e


class Evaluator:
    def __init__(self, model_path, text_cache=None, threads: int = 1):
        torch.set_num_threads(max(1, threads))
        self.model, self.vocab, self.info = load_checkpoint(model_path)
        self.model.eval()
        root = Path(model_path)
        self.root = root if root.is_dir() else root.parent
        self.tower = None  # train/towers.TowerSide of a checkpoint bound to a frozen pretrained tower
        towers = self.info.get("metadata", {}).get("towers")
        if towers:
            from mmfusion_ros.train.towers import TowerSide

            # a bound bundle carries its towers; a bare checkpoint finds the tower bundle it was bound to
            here = self.root / "manifest.json"
            own = here.is_file() and "towers" in json.loads(here.read_text())
            self.tower = TowerSide(self.root if own else towers["bundle"], threads=max(1, threads))
            self.embedder = self.tower.text_embedder()
        else:
            self.embedder = TextEmbedder(text_cache)
        self.prompts = default_prompts()
        self.manifest: dict = {}
        manifest = self.root / "manifest.json"
        if root.is_dir() and manifest.is_file():
            self.manifest = json.loads(manifest.read_text())
        self.prompt_emb = self._bundle_prompt_embeddings()
        if self.prompt_emb is None:
            self.prompt_emb = self.embedder.encode([p["text"] for p in self.prompts])  # (C, 384)
        # the memory the runtime reads (manifest "caption_memory"), else the one the checkpoint was trained with
        mem = self.root / str(self.manifest.get("caption_memory")
                              or self.info.get("metadata", {}).get("caption_memory_file", "caption_memory.npz"))
        self.memory = self.memory_unit = None
        self.memory_cut = self.memory_kinds = self.memory_texts = None
        if mem.is_file():
            z = np.load(mem)
            self.memory = z["embeddings"].astype(np.float32)  # (M, 384)
            # rows normalised, as the runtime backend searches them
            self.memory_unit = self.memory / np.maximum(np.linalg.norm(self.memory, axis=1, keepdims=True), 1e-12)
            self.memory_cut = [str(c) for c in z["cut"]] if "cut" in z else None  # grounded memory (trainer)
            self.memory_kinds = [str(c) for c in z["kinds"]] if "kinds" in z else None
            self.memory_texts = [str(c) for c in z["texts"]] if "texts" in z else None
        # the bundle's caption presence probe (core/caption_choice.py): re-ranks the nearest memory entries
        self.presence = None
        if self.memory is not None and self.manifest.get("caption_presence"):
            self.presence = load_presence(self.root, self.manifest["caption_presence"], len(self.memory),
                                          self.model.cfg.embed_dim)
        meta = self.info.get("metadata", {})
        thr = dict(meta.get("event_thresholds", {}))
        # a bundle: score with the thresholds the runtime uses (export may have overridden them)
        thr.update(self.manifest.get("event_thresholds", {}))
        self.thresholds = {t: float(thr.get(t, 0.5)) for t in self.model.cfg.events.event_types}
        # the label softmax scale the runtime uses (manifest logit_scale = the camera's learned scale)
        self.logit_scale = float(self.manifest.get("logit_scale", float(self.model.logit_scale("camera").detach())))
        self.calibration = Calibration.from_manifest(self.manifest) if self.manifest else Calibration(None)

    def _bundle_prompt_embeddings(self) -> Optional[np.ndarray]:
        """The bundle's prompts.json embeddings (what the robot labels with) when they are the default prompts."""
        path = self.root / str(self.manifest.get("prompts_file", "prompts.json"))
        if not self.manifest and self.tower is not None:  # a bound checkpoint: the tower bundle's prompts
            path = self.tower.dir / str(self.tower.manifest.get("prompts_file", "prompts.json"))
        elif not self.manifest:
            return None
        if not path.is_file():
            return None
        doc = json.loads(path.read_text())
        rows = doc.get("prompts", [])
        if [r.get("label") for r in rows] != [p["label"] for p in self.prompts]:
            return None
        e = np.asarray([r["embedding"] for r in rows], np.float32)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    def embed(self, split: Split) -> np.ndarray:
        self.attach_towers(split)
        return embed_split(self.model, split)  # (N, 4, D)

    def attach_towers(self, split: Split) -> Split:
        """Give a split its image-tower embeddings (the camera "input" of a model bound to a frozen tower)."""
        if self.tower is not None and split.camera_embeddings is None:
            from mmfusion_ros.train.towers import default_cache_dir

            split.camera_embeddings = self.tower.split_embeddings(split, default_cache_dir())
        return split

    @torch.no_grad()
    def fuse(self, tokens: np.ndarray, present) -> np.ndarray:
        t = torch.from_numpy(tokens)
        p = torch.tensor(present, dtype=torch.float32).expand(t.shape[0], -1)
        return _np(self.model.fusion(t * p.unsqueeze(-1), p)[0])  # (N, 384)

    @torch.no_grad()
    def memory_rows(self, modalities: Sequence[str]) -> np.ndarray:
        """(M,) bool: the memory entries a frame fused from `modalities` is projected onto, as the runtime
        backend chooses them (runtime/backend.py `_memory_allowed`)."""
        kinds = set(observable_kinds(modalities))
        if self.memory_cut is not None:
            want = "+".join(sorted(kinds))
            return np.array([c == want for c in self.memory_cut], bool)
        if self.memory_kinds is not None:
            return np.array([bool(k) and set(k.split("+")) <= kinds for k in self.memory_kinds], bool)
        return np.ones(len(self.memory), bool)

    def memory_sims(self, fused: np.ndarray, modalities: Sequence[str]) -> np.ndarray:
        """(N, M) cosines of each fused embedding to the memory rows, -inf where `modalities` may not be projected."""
        return np.where(self.memory_rows(modalities)[None], fused @ self.memory_unit.T, -np.inf)

    def memory_choice(self, fused: np.ndarray, modalities: Sequence[str], tokens: Optional[np.ndarray] = None
                      ) -> np.ndarray:
        """(N,) the memory entry each fused embedding is captioned with, as the runtime backend chooses it:
        the nearest allowed entry, or with the bundle's presence probe and the frames' tokens (N,4,D) the
        probe's pick among the nearest (core/caption_choice.py)."""
        sims = self.memory_sims(fused, modalities)  # (N, M)
        if self.presence is None or tokens is None:
            return np.argmax(sims, axis=1)
        used = np.array([1.0 if k in modalities else 0.0 for k in SENSOR_KEYS], np.float32)
        return self.presence.choose(sims, self.presence.probs(tokens, used))

    def caption(self, emb: np.ndarray, project: bool, modalities: Sequence[str] = SENSOR_KEYS,
                tokens: Optional[np.ndarray] = None) -> List[str]:
        """Greedy captions; with project, each embedding is first replaced by its memory entry
        (memory_choice: the decoder was trained on text embeddings, which that memory holds)."""
        e = emb
        if project and self.memory is not None:
            e = self.memory[self.memory_choice(emb, modalities, tokens)]  # (N, 384)
        out = []
        for s in range(0, len(e), 256):
            ids = self.model.caption_decoder.greedy(torch.from_numpy(np.ascontiguousarray(e[s:s + 256])))
            out.extend(self.vocab.decode(r) for r in ids.tolist())
        return out

    @torch.no_grad()
    def _greedy_with_confidence(self, emb: np.ndarray) -> Tuple[List[str], np.ndarray]:
        """(B,D) -> greedy captions and the runtime's raw confidence: the mean probability of the chosen
        tokens, EOS included (runtime/backend.py `_greedy_decode`)."""
        dec = self.model.caption_decoder
        texts, confs = [], []
        for s in range(0, len(emb), 256):
            e = torch.from_numpy(np.ascontiguousarray(emb[s:s + 256], np.float32))
            b = e.shape[0]
            tokens = torch.full((b, 1), 1, dtype=torch.long)
            done = torch.zeros(b, dtype=torch.bool)
            psum = torch.zeros(b, dtype=torch.float64)
            pcnt = torch.zeros(b, dtype=torch.float64)
            for _ in range(dec.cfg.max_len - 1):
                step = torch.softmax(dec(e, tokens)[:, -1].double(), dim=-1)  # (B, V)
                pv, nxt = step.max(-1)
                live = ~done
                psum += torch.where(live, pv, torch.zeros_like(pv))
                pcnt += live.double()
                nxt = torch.where(done, torch.zeros_like(nxt), nxt)
                tokens = torch.cat([tokens, nxt[:, None]], dim=1)
                done |= nxt == 2
                if bool(done.all()):
                    break
            texts.extend(self.vocab.decode(r) for r in tokens[:, 1:].tolist())
            confs.append((psum / pcnt.clamp(min=1)).numpy())
        return texts, np.concatenate(confs) if confs else np.zeros(0)

    def runtime_captions(self, fused_by: Dict[str, np.ndarray], tokens: Optional[np.ndarray] = None
                         ) -> Dict[str, Tuple[List[str], np.ndarray]]:
        """{subset: (N,D) fused} -> {subset: (captions, raw confidences)} as the robot's backend makes them:
        the memory entry of memory_choice (tokens (N,4,D): the frames' sensor embeddings, for the presence
        probe), greedy decode, mean chosen-token probability. Each memory entry is decoded once."""
        if self.memory is None:
            out = {}
            for k, f in fused_by.items():
                out[k] = self._greedy_with_confidence(f)
            return out
        near = {k: self.memory_choice(f, k.split("+"), tokens) for k, f in fused_by.items()}
        uniq = np.unique(np.concatenate(list(near.values())))
        texts, conf = self._greedy_with_confidence(self.memory_unit[uniq])
        pos = {int(u): i for i, u in enumerate(uniq)}
        return {k: ([texts[pos[int(j)]] for j in idx], np.array([conf[pos[int(j)]] for j in idx]))
                for k, idx in near.items()}

    @torch.no_grad()
    def event_probs(self, fused: np.ndarray, history_index: np.ndarray) -> np.ndarray:
        f = torch.from_numpy(fused)
        out = [_np(self.model.event_head(f[torch.from_numpy(history_index[s:s + 512])])) for s in range(0, len(f), 512)]
        return np.concatenate(out)  # (N, E, H)

    # ---- the tables ----------------------------------------------------------------------------------
    def context(self, data, split: str = "test", max_samples: int = 0) -> EvalContext:
        sp = load_split(data, split, max_samples)
        ev = self.model.cfg.events
        sp.build_histories(ev.history_len, ev.history_step)
        tokens = self.embed(sp)  # (N, 4, 384)
        n = len(sp)
        a = sp.arrays
        stride = max(1, int(round(1.0 / sp.frame_step)))
        first = np.r_[True, a["scene_id"][1:] != a["scene_id"][:-1]]
        scene_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        gal = np.flatnonzero((np.arange(n) - scene_start) % stride == 0)  # one frame per second per scene
        canon = [sp.captions[i][0] for i in range(n)]
        return EvalContext(sp, tokens, self.fuse(tokens, [1, 1, 1, 1]), gal, canon, first)

    def run(self, data, split: str = "test", upper_bound: Optional[str] = None, max_samples: int = 0,
            figures_dir=None, real_data=None, tables: Sequence[str] = ("T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9"),
            log: Callable[[str], None] = lambda m: None) -> dict:
        """Every table on one split. figures_dir: where T6 writes its reliability diagrams (PNG);
        real_data: the folder of real recordings for T8 (default ../shared/data when present)."""
        ctx = self.context(data, split, max_samples)
        res: Dict = {"split": split, "n_samples": len(ctx.split), "n_scenes": int(ctx.first.sum()),
                     "gallery_frames": int(len(ctx.gal)), "model": str(self.info.get("metadata", {}).get("data", "")),
                     "checkpoint_sha256": self.info["sha256"], "calibrated": self.calibration.available}
        steps = [("T1", "T1_retrieval", lambda: self.t1_retrieval(ctx)),
                 ("T2", "T2_zero_shot", lambda: self.t2_zero_shot(ctx, upper_bound)),
                 ("T3", "T3_robustness", lambda: self.t3_robustness(ctx)),
                 ("T4", "T4_captions", lambda: self.t4_captions(ctx)),
                 ("T5", "T5_events", lambda: self.t5_events(ctx)),
                 ("T6", "T6_calibration", lambda: self.t6_calibration(ctx, figures_dir)),
                 ("T7", "T7_unsupported_claims", lambda: self.t7_unsupported(ctx)),
                 ("T8", "T8_familiarity", lambda: self.t8_familiarity(ctx, real_data)),
                 ("T9", "T9_fusion_variants", lambda: self.t9_fusion_variants(ctx))]
        for tag, key, fn in steps:
            if tag in tables:
                t0 = time.time()
                out = fn()
                if out is not None:
                    res[key] = out
                log(f"{tag} {time.time() - t0:.1f} s")
        return res

    def t9_fusion_variants(self, ctx: EvalContext) -> dict:
        """Zero-shot top-1 of ways to combine the same per-sensor embeddings, side by side on one split: the
        shipped fusion part, the mean of the present embeddings (ImageBind's embedding arithmetic), late
        fusion as a product of experts (sum of each sensor's log-softmax over the prompts), and each of the
        latter two over only the sensors that can observe the object class (core/observability.py "labels").
        The pipeline's `label_fusion: mean` is the "mean of embeddings, label sensors only" row, or with the
        bundle's skill weights (`mmfusion calibrate`) the "skill-weighted mean" row."""
        from mmfusion_ros.core.observability import label_modalities

        labels = ctx.arrays["class_id"].astype(np.int64)
        scene = ctx.arrays["scene_id"]
        tok = ctx.tokens  # (N, 4, D)
        P = self.prompt_emb  # (C, D)

        def row(name, scores):  # scores (N, C)
            hit = np.argmax(scores, axis=1) == labels
            lo, hi = M.scene_bootstrap_ci(hit, scene)
            return {"variant": name, "top1": float(hit.mean()), "ci95": [lo, hi]}

        def logsoft(x, k):  # (N, C) log-softmax of sensor k's own logits (its learned scale: a calibrated expert)
            z = float(self.model.logit_scale(k).detach()) * x
            z = z - z.max(axis=1, keepdims=True)
            return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

        out = {"rows": []}
        every = list(SENSOR_KEYS)
        seeing = label_modalities(every)
        fus = self.model.fusion
        kind = ("skill-weighted mean + attention" if getattr(fus, "fixed_prior", False)
                else "mean + attention" if getattr(fus, "residual", False) else "attention")
        out["rows"].append(row(f"the fusion part ({kind}; captions and events read it), all four", ctx.fused_all @ P.T))
        for name, mods in (("all four", every), ("label sensors only (" + "+".join(seeing) + ")", seeing)):
            idx = [SENSOR_KEYS.index(m) for m in mods]
            mean = tok[:, idx].mean(1)
            mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
            out["rows"].append(row(f"mean of embeddings, {name}", mean @ P.T))
            out["rows"].append(row(f"product of experts, {name}",
                                   sum(logsoft(tok[:, j] @ P.T, SENSOR_KEYS[j]) for j in idx)))
        lw = self.calibration.label_weights
        if lw:  # what the pipeline publishes labels from (core/observability.label_embedding)
            from mmfusion_ros.core.observability import label_embedding

            w = ", ".join(f"{m} {lw.get(m, 0.0):.2f}" for m in seeing)
            out["rows"].append(row(f"skill-weighted mean, label sensors (the bundle's label_weights: {w})",
                                   label_embedding(tok, every, ctx.fused_all, "mean", weights=lw) @ P.T))
        for j, m in enumerate(SENSOR_KEYS):
            out["rows"].append(row(f"{m} alone", tok[:, j] @ P.T))
        return out

    def t1_retrieval(self, ctx: EvalContext) -> list:
        emb, gal, canon = ctx.emb, ctx.gal, ctx.canon
        uniq = sorted(set(canon[i] for i in gal))
        uidx = {c: i for i, c in enumerate(uniq)}
        uemb = self.embedder.encode(uniq)  # (U, 384)
        lab = np.array([uidx[canon[i]] for i in gal])
        text_match = lab[:, None] == np.arange(len(uniq))[None, :]  # (G, U)
        frame_match = np.eye(len(gal), dtype=bool)
        t1 = []

        def row(q, g, name_q, name_g, match):
            r = M.recall_at_k(q, g, match)
            t1.append({"query": name_q, "gallery": name_g, "gallery_size": int(g.shape[0]), "R@1": r[1], "R@5": r[5]})

        row(emb["camera"][gal], uemb, "camera", "text", text_match)
        row(uemb, emb["camera"][gal], "text", "camera", text_match.T)
        for k in ("lidar", "audio", "imu"):
            row(emb[k][gal], emb["camera"][gal], k, "camera", frame_match)
            row(emb["camera"][gal], emb[k][gal], "camera", k, frame_match)
        for k in ("lidar", "audio", "imu", "fused"):
            row(emb[k][gal], uemb, k, "text", text_match)
            row(uemb, emb[k][gal], "text", k, text_match.T)
        return t1

    def t2_zero_shot(self, ctx: EvalContext, upper_bound: Optional[str] = None) -> dict:
        emb, a, n = ctx.emb, ctx.arrays, len(ctx.split)
        labels = a["class_id"].astype(np.int64)
        counts = np.bincount(labels, minlength=len(self.prompts))
        t2 = {"chance_uniform": 1.0 / len(self.prompts), "chance_majority": float(counts.max() / n), "accuracy": {},
              "ci95": {}}
        scene = a["scene_id"]
        for k in SENSOR_KEYS + ["fused"]:
            hit = np.argmax(emb[k] @ self.prompt_emb.T, axis=1) == labels  # (N,)
            t2["accuracy"][k] = float(hit.mean())
            t2["ci95"][k] = list(M.scene_bootstrap_ci(hit, scene))  # 95 % over scenes
        # the IMU cannot observe the object class: above chance would mean the data ties motion to classes
        lo = t2["ci95"]["imu"][0]
        t2["imu_predicts_class"] = {"accuracy": t2["accuracy"]["imu"], "ci95_low": lo,
                                    "chance_majority": t2["chance_majority"],
                                    "above_chance": bool(lo > t2["chance_majority"])}
        # the IMU on what it can observe: which of the split's robot-motion phrases ("the robot drives slowly
        # turning left") is the frame's, zero-shot against their text embeddings
        ego_txt, ego_emb, ego_lab = self._ego_prompts(ctx)
        hit = np.argmax(emb["imu"] @ ego_emb.T, axis=1) == ego_lab
        t2["imu_ego_motion"] = {"accuracy": float(hit.mean()), "ci95": list(M.scene_bootstrap_ci(hit, scene)),
                                "phrases": len(ego_txt),
                                "chance_majority": float(np.bincount(ego_lab).max() / n)}
        if upper_bound:
            ubt = embed_split(load_checkpoint(upper_bound)[0], ctx.split)  # (N, 4, 384)
            t2["supervised_upper_bound"] = {}
            t2["emergent_ratio"] = {}
            for j, k in enumerate(SENSOR_KEYS):
                if k == "camera":
                    continue
                acc_ub = M.zero_shot_accuracy(ubt[:, j], self.prompt_emb, labels)
                t2["supervised_upper_bound"][k] = acc_ub
                t2["emergent_ratio"][k] = t2["accuracy"][k] / acc_ub if acc_ub > 0 else float("nan")
            ub = float((np.argmax(ubt[:, SENSOR_KEYS.index("imu")] @ ego_emb.T, axis=1) == ego_lab).mean())
            t2["imu_ego_motion"]["supervised_upper_bound"] = ub
            t2["imu_ego_motion"]["ratio"] = t2["imu_ego_motion"]["accuracy"] / ub if ub > 0 else float("nan")
        t2["text_ceiling"] = self._text_ceiling(ctx, labels, scene)
        # per focus class: where the camera and the fused embedding go wrong (which class they say instead)
        t2["per_class"] = []
        pred = {k: np.argmax(emb[k] @ self.prompt_emb.T, axis=1) for k in ("camera", "fused")}  # (N,)
        names = [p["label"] for p in self.prompts]
        for c in np.flatnonzero(counts):
            sel = labels == c
            wrong = np.bincount(pred["camera"][sel][pred["camera"][sel] != c], minlength=len(names))
            t2["per_class"].append({"class": names[c], "frames": int(sel.sum()),
                                    "camera": float((pred["camera"][sel] == c).mean()),
                                    "fused": float((pred["fused"][sel] == c).mean()),
                                    "camera_top_confusion": names[int(wrong.argmax())] if wrong.any() else "",
                                    "camera_top_confusion_frames": int(wrong.max())})
        return t2

    def _text_ceiling(self, ctx: EvalContext, labels: np.ndarray, scene: np.ndarray) -> dict:
        """Zero-shot top-1 of the frames' own caption texts: what an encoder that reproduced its training text
        exactly would score. The whole caption names distractors too, so it caps encoders taught on it."""
        from mmfusion_ros.sim.captions import caption_facts

        seen = [caption_facts(c)["seen"] for c in ctx.canon]
        out = {}
        for name, texts in (("whole caption", list(ctx.canon)),
                            ("objects in view", [". ".join(f) or c for f, c in zip(seen, ctx.canon)]),
                            ("the object ahead (named first)", [(f or [c])[0] for f, c in zip(seen, ctx.canon)])):
            uniq = sorted(set(texts))
            ix = {t: i for i, t in enumerate(uniq)}
            emb = self.embedder.encode(uniq)[[ix[t] for t in texts]]  # (N, D)
            hit = np.argmax(emb @ self.prompt_emb.T, axis=1) == labels  # (N,)
            out[name] = {"accuracy": float(hit.mean()), "ci95": list(M.scene_bootstrap_ci(hit, scene))}
        return out

    def _ego_prompts(self, ctx: EvalContext) -> Tuple[List[str], np.ndarray, np.ndarray]:
        """The split's distinct robot-motion phrases (sim/captions.caption_facts "ego"), their text embeddings
        (P, D) and each frame's phrase index (N,)."""
        from mmfusion_ros.sim.captions import caption_facts

        ego = [(caption_facts(c)["ego"] or [""])[0] for c in ctx.canon]
        txt = sorted(set(ego))
        ix = {t: i for i, t in enumerate(txt)}
        return txt, self.embedder.encode(txt), np.array([ix[t] for t in ego], np.int64)

    def t3_robustness(self, ctx: EvalContext) -> dict:
        """Top-1 per presence subset of the attention-fused embedding and of the published labels (the label
        sensors' mean with the bundle's weights; None where no present sensor can observe a class)."""
        from mmfusion_ros.core.observability import label_embedding

        labels = ctx.arrays["class_id"].astype(np.int64)
        t3 = {"subsets": []}
        for r in range(4, 0, -1):
            for combo in itertools.combinations(range(4), r):
                mask = [1.0 if j in combo else 0.0 for j in range(4)]
                used = [SENSOR_KEYS[j] for j in combo]
                fused = self.fuse(ctx.tokens, mask)
                acc = M.zero_shot_accuracy(fused, self.prompt_emb, labels)
                lab = label_embedding(ctx.tokens, used, fused, "mean", weights=self.calibration.label_weights)
                t3["subsets"].append({"modalities": used, "accuracy": acc, "labels_accuracy":
                                      None if lab is None else M.zero_shot_accuracy(lab, self.prompt_emb, labels)})
        for key, out in (("accuracy", "relative_drop_when_missing"), ("labels_accuracy", "labels_relative_drop_when_missing")):
            full = t3["subsets"][0][key]
            t3[out] = {}
            for j, k in enumerate(SENSOR_KEYS):
                others = [SENSOR_KEYS[i] for i in range(4) if i != j]
                acc = next(s[key] for s in t3["subsets"] if s["modalities"] == others)
                t3[out][k] = (full - acc) / full if full else float("nan")
        return t3

    def t4_captions(self, ctx: EvalContext) -> list:
        """Captions from the fused embedding of every gallery frame."""
        sp, a, gal, emb = ctx.split, ctx.arrays, ctx.gal, ctx.emb
        refs = [sp.captions[i] for i in gal]
        truth_obj = [{sp.classes[c] for c in np.flatnonzero(a["classes_present"][i])} for i in gal]
        truth_snd = [{sp.classes[a["sound_class"][i]]} if a["sound_class"][i] >= 0 else set() for i in gal]
        ref_obj = [M.mentions(r[0], OBJECT_WORDS) for r in refs]
        t4 = []
        variants = [("fused, memory projection", ctx.fused_all[gal], True), ("fused, direct", ctx.fused_all[gal], False),
                    ("camera only, memory projection", emb["camera"][gal], True)]
        for name, e, proj in variants:
            if proj and self.memory is None:
                continue
            mods = ["camera"] if name.startswith("camera") else SENSOR_KEYS
            hyp = self.caption(e, proj, mods, ctx.tokens[gal])
            objs = [M.mentions(h, OBJECT_WORDS) for h in hyp]
            snds = [M.mentions(h, SOUND_WORDS) for h in hyp]
            t4.append({"source": name, "BLEU-4": M.bleu4(hyp, refs), "CIDEr": M.cider(hyp, refs),
                       "objects_vs_truth": {**M.precision_recall(objs, truth_obj),  # F1 interval: 95 % over scenes
                                            "f1_ci95": list(M.scene_bootstrap_f1(objs, truth_obj, a["scene_id"][gal]))},
                       "objects_vs_reference_caption": M.precision_recall(objs, ref_obj),
                       "sounds_vs_truth": M.precision_recall(snds, truth_snd),
                       "examples": [{"generated": h, "reference": r[0]} for h, r in list(zip(hyp, refs))[:3]]})
        # the reference captions themselves (a second phrasing against the others): the ceiling
        alt = [r[1] if len(r) > 1 else r[0] for r in refs]
        t4.append({"source": "reference phrasing (ceiling)", "BLEU-4": M.bleu4(alt, [r[:1] + r[2:] for r in refs]),
                   "CIDEr": M.cider(alt, [r[:1] + r[2:] for r in refs]),
                   "objects_vs_truth": M.precision_recall([M.mentions(h, OBJECT_WORDS) for h in alt], truth_obj),
                   "objects_vs_reference_caption": M.precision_recall([M.mentions(h, OBJECT_WORDS) for h in alt], ref_obj),
                   "sounds_vs_truth": M.precision_recall([M.mentions(h, SOUND_WORDS) for h in alt], truth_snd)})
        return t4

    def t5_events(self, ctx: EvalContext) -> dict:
        """Per-frame alarms at the raw manifest thresholds (as before), plus the node's view: the event
        tracker (EMA + hysteresis) over calibrated probabilities at the shipped calibrated thresholds,
        beside the same tracker over raw probabilities at the raw thresholds."""
        sp, a = ctx.split, ctx.arrays
        ev = self.model.cfg.events
        probs = self.event_probs(ctx.fused_all, sp.history_index)  # (N, E, H)
        scene = a["scene_id"]
        t5 = {"thresholds": self.thresholds, "per_horizon": [], "per_type_at_1s": []}
        for h, hz in enumerate(ev.horizons):
            aps, f1s, leads, fa, n_on, n_warned = [], [], [], 0.0, 0, 0
            for e, name in enumerate(ev.event_types):
                y = a["events_future"][:, e, h]
                if not y.any():
                    continue
                p = probs[:, e, h]
                thr = self.thresholds[name]
                alarm = p >= thr
                ap = M.average_precision(y, p)
                f1 = M.f1_at(y, p, thr)
                lt = M.lead_times(alarm, a["events_now"][:, e], scene, a["t"])
                fam = M.false_alarms_per_minute(alarm, y | a["events_now"][:, e], scene, sp.frame_step)
                aps.append(ap)
                f1s.append(f1)
                warned = [x for x in lt if not math.isnan(x)]
                leads.extend(warned)
                n_on += len(lt)
                n_warned += len(warned)
                fa += fam
                if hz == 1.0:
                    t5["per_type_at_1s"].append({"event": name, "AP": ap, "F1": f1, "threshold": thr,
                                                 "onsets": len(lt), "warned": len(warned),
                                                 "mean_lead_s": float(np.mean(warned)) if warned else float("nan"),
                                                 "false_alarms_per_min": fam, "positive_rate": float(y.mean())})
            t5["per_horizon"].append({"horizon_s": hz, "mAP": float(np.mean(aps)) if aps else float("nan"),
                                      "micro_AP": M.average_precision(a["events_future"][:, :, h].ravel(), probs[:, :, h].ravel()),
                                      "mean_F1": float(np.mean(f1s)) if f1s else float("nan"),
                                      "mean_lead_s": float(np.mean(leads)) if leads else float("nan"),
                                      "onsets": n_on, "warned": n_warned, "false_alarms_per_min": fa})
        t5["tracker"] = self._tracker_table(ctx, probs)
        return t5

    def _tracker_table(self, ctx: EvalContext, probs: np.ndarray) -> dict:
        """Event flags as the node raises them (core.events.EventTracker), raw and calibrated."""
        from mmfusion_ros.train import calibrate as C

        a, sp = ctx.arrays, ctx.split
        ev = self.model.cfg.events
        h1 = list(ev.horizons).index(1.0) if 1.0 in ev.horizons else 0
        now, fut, scene, t = a["events_now"].astype(bool), a["events_future"].astype(bool), a["scene_id"], a["t"]
        out = {"minutes": len(sp) * sp.frame_step / 60.0, "variants": []}
        variants = [("raw probabilities, manifest event_thresholds", probs, self.thresholds)]
        if self.calibration.available:
            variants.append(("calibrated probabilities, calibration thresholds", self.calibration.events(probs),
                             {k: self.calibration.thresholds.get(k, v) for k, v in self.thresholds.items()}))
        if sp.sweeps is not None:  # what the node merges its tracks into: the calibrated head when it has one
            variants.append(self._with_tracks(ctx, *variants[-1]))
        else:
            out["tracks"] = "not scored: this dataset keeps no LiDAR sweeps (written before they were kept)"
        for name, p, thr in variants:
            st, sh, ac = C.run_tracker(p, scene, ev.event_types, ev.horizons, thr)
            rows = C.tracker_metrics(st, sh, ac, now, fut, scene, t, sp.frame_step)
            for r, e in zip(rows, ev.event_types):
                k = ev.event_types.index(e)
                r.update(event=e, threshold=float(thr[e]), AP_1s=M.average_precision(fut[:, k, h1], p[:, k, h1]))
            aps = [r["AP_1s"] for r in rows if not math.isnan(r["AP_1s"])]
            on = sum(r["onsets"] for r in rows)
            ci = M.scene_bootstrap_map(fut[:, :, h1], p[:, :, h1], scene)  # 95 % over scenes
            out["variants"].append({"name": name, "per_type": rows, "mAP_1s": float(np.mean(aps)) if aps else float("nan"),
                                    "mAP_1s_ci95": list(ci),
                                    "false_alarms_per_min_max": max(r["false_alarms_per_min"] for r in rows),
                                    "false_alarms_per_min_total": sum(r["false_alarms_per_min"] for r in rows),
                                    "onsets": on, "warned": sum(r["warned"] for r in rows),
                                    "warned_before_onset": sum(r["warned_before_onset"] for r in rows)})
        return out

    def track_forecast(self, split: Split, tokens: np.ndarray, fused: np.ndarray) -> Optional[np.ndarray]:
        """(N, E, H) the node's LiDAR track forecasts over the split's sweeps (train/track_events.py), NaN for
        the types tracks do not forecast; None when the dataset keeps no sweeps. Untracked objects count as
        people by the frame's published person probability, as in the pipeline (all four sensors present)."""
        if split.sweeps is None:
            return None
        from mmfusion_ros.core.observability import label_embedding
        from mmfusion_ros.core.pipeline import PipelineConfig
        from mmfusion_ros.train import calibrate as C
        from mmfusion_ros.train.track_events import track_forecasts

        pc = PipelineConfig()
        lab = label_embedding(tokens, SENSOR_KEYS, fused, pc.label_fusion,
                              weights=self.calibration.label_weights)  # (N, D) the published labels' embedding
        lp = C.softmax_labels(lab, self.prompt_emb, self.logit_scale, pc.label_temperature)  # (N, P)
        if self.calibration.available:
            lp = self.calibration.labels(lp, SENSOR_KEYS)
        top = np.argsort(-lp, axis=1, kind="stable")[:, :pc.top_k]  # (N, k) the labels the node publishes
        person = np.array(["person" in p["label"].lower() for p in self.prompts])
        person_prob = np.array([max([lp[i, j] for j in row if person[j]], default=0.0) for i, row in enumerate(top)])
        return track_forecasts(split.sweeps, split.arrays["scene_id"], self.model.cfg.events.event_types,
                               self.model.cfg.events.horizons, person_prob, pc.kinematic_config(self.calibration))

    def _with_tracks(self, ctx: EvalContext, base: str, probs: np.ndarray, thresholds: Dict[str, float]) -> tuple:
        """The node's events: the head's probabilities (calibrated where the bundle is) noisy-OR'd with the
        forecasts of its LiDAR tracks, forecast types at the pipeline's thresholds for them (the calibration's
        track_event_thresholds, fitted on this merge; without them the head's raised to the pipeline's floor)."""
        from mmfusion_ros.core.kinematic_events import forecast_on_threshold, merge_forecast
        from mmfusion_ros.core.pipeline import PipelineConfig

        ev = self.model.cfg.events
        forecast = self.track_forecast(ctx.split, ctx.tokens, ctx.fused_all)  # (N, E, H)
        have = np.isfinite(forecast).any(axis=(0, 2))  # (E,) the types the tracks forecast
        floor = PipelineConfig().kinematic_config().min_on_threshold
        fitted = self.calibration.track_thresholds
        thr = {k: forecast_on_threshold(v, fitted.get(k), floor) if have[ev.event_types.index(k)] else v
               for k, v in thresholds.items()}
        return (f"{base.split(',')[0]} + LiDAR track forecasts (the node)", merge_forecast(probs, forecast), thr)

    def outputs(self, ctx: EvalContext):
        """Per-subset labels, captions and events with their ground truth (train.calibrate.collect), once."""
        from mmfusion_ros.train import calibrate as C

        if ctx.outputs is None:
            ctx.outputs = C.collect(self, ctx.split, tokens=ctx.tokens)
        return ctx.outputs

    def t6_calibration(self, ctx: EvalContext, figures_dir=None) -> dict:
        """Expected calibration error per output, raw vs calibrated, and reliability diagrams (PNG)."""
        from mmfusion_ros.core.observability import observable
        from mmfusion_ros.train import calibrate as C

        o = self.outputs(ctx)
        cal = self.calibration
        h1 = o.horizons.index(1.0) if 1.0 in o.horizons else 0
        ok = o.prompt_class >= 0
        curves: Dict[str, Dict[str, tuple]] = {"labels (top-1)": {}, "events (1 s horizon)": {}, "caption": {}}
        t6: Dict = {"calibration_available": cal.available, "bins": 15, "per_subset": [], "per_event_1s": []}
        rows = {}
        for variant in ("raw", "calibrated"):
            if variant == "calibrated" and not cal.available:
                continue
            l1c, l1r, lac, lar, cc, cr, l5c, l5r = [], [], [], [], [], [], [], []
            for key, probs in o.label_probs.items():
                used = key.split("+")
                p = cal.labels(probs, used) if variant == "calibrated" else probs
                c1, r1 = C.top1(p[:, ok], o.label_right[key][:, ok])
                publish = observable("labels", used)
                if publish:
                    l1c.append(c1)
                    l1r.append(r1)
                    lac.append(p[:, ok].ravel())
                    lar.append(o.label_right[key][:, ok].ravel())
                    top = np.argsort(-p[:, ok], axis=1)[:, :5]  # the top-5 labels the node publishes
                    l5c.append(np.take_along_axis(p[:, ok], top, 1).ravel())
                    l5r.append(np.take_along_axis(o.label_right[key][:, ok], top, 1).ravel())
                conf = o.caption_conf.get(key, np.zeros(0))
                if variant == "calibrated":
                    conf = np.array([cal.caption(c, used) for c in conf])
                cc.append(conf)
                cr.append(o.caption_right.get(key, np.zeros(0, bool)))
                rows.setdefault(key, {"subset": key, "labels_published": publish,
                                      "captions": int(len(conf)), "caption_right": float(np.mean(cr[-1])) if len(conf) else float("nan")})
                rows[key][f"labels_top1_ECE_{variant}"] = C.ece(c1, r1) if publish else float("nan")
                rows[key][f"labels_top1_accuracy"] = float(np.mean(r1))
                rows[key][f"caption_ECE_{variant}"] = C.ece(conf, cr[-1]) if len(conf) else float("nan")
            ep = cal.events(o.event_probs) if variant == "calibrated" else o.event_probs
            lc, lr = np.concatenate(l1c), np.concatenate(l1r)
            ccat, rcat = np.concatenate(cc), np.concatenate(cr)
            t6[variant] = {"labels_top1_ECE": C.ece(lc, lr), "labels_top5_ECE": C.ece(np.concatenate(l5c), np.concatenate(l5r)),
                           "labels_all_prompts_ECE": C.ece(np.concatenate(lac), np.concatenate(lar)),
                           "events_1s_ECE": C.ece(ep[:, :, h1], o.events_future[:, :, h1]),
                           "events_all_horizons_ECE": C.ece(ep, o.events_future),
                           "caption_ECE": C.ece(ccat, rcat), "labels_n": int(len(lc)), "captions_n": int(len(ccat))}
            for e, name in enumerate(o.event_types):
                if variant == "raw":
                    t6["per_event_1s"].append({"event": name, "positive_rate": float(o.events_future[:, e, h1].mean())})
                t6["per_event_1s"][e][f"ECE_{variant}"] = C.ece(ep[:, e, h1], o.events_future[:, e, h1])
            curves["labels (top-1)"][variant] = (lc, lr)
            curves["events (1 s horizon)"][variant] = (ep[:, :, h1].ravel(), o.events_future[:, :, h1].ravel())
            curves["caption"][variant] = (ccat, rcat)
        t6["per_subset"] = list(rows.values())
        t6["reliability"] = {out: {v: C.reliability(c, r) for v, (c, r) in d.items()} for out, d in curves.items()}
        if figures_dir is not None:
            t6["figures"] = write_reliability_pngs(curves, Path(figures_dir), f"{ctx.split.name}")
        return t6

    def t7_unsupported(self, ctx: EvalContext) -> dict:
        """Claims the frame's sensors cannot observe, per presence subset (core/observability.py judges).

        Counted per frame: caption clauses (of the caption published with that frame), scene labels (the
        top-5 published), flagged events (EventTracker starts and ongoing at the shipped thresholds).
        `model` is what the model says when nothing gates it; `published` is what the robot's path
        publishes after grounding (grounded_caption, labels only where `labels` is observable, events only
        of observable types). `published_text_reparsed_unobservable_clauses` reads the published caption back
        with core.observability.caption_clauses: non-zero means the parser misreads its own rendering (a
        checker reading the text would count claims that are in fact supported)."""
        from mmfusion_ros.core.observability import caption_clauses, event_mask, grounded_caption, observable
        from mmfusion_ros.train import calibrate as C

        o = self.outputs(ctx)
        sp = ctx.split
        ev = self.model.cfg.events
        cal = self.calibration
        thr = {k: cal.thresholds.get(k, v) for k, v in self.thresholds.items()} if cal.available else self.thresholds
        rows = []
        caps = self._subset_captions(ctx)
        top_k = 5
        for used in C.all_subsets():
            key = "+".join(used)
            fused = self.fuse(ctx.tokens, [1.0 if m in used else 0.0 for m in SENSOR_KEYS])
            probs = self.event_probs(fused, sp.history_index)
            if cal.available:
                probs = cal.events(probs)
            _, _, active = C.run_tracker(probs, sp.arrays["scene_id"], ev.event_types, ev.horizons, thr)
            mask = np.array(event_mask(ev.event_types, used))
            n = len(sp)
            r = {"subset": key, "frames": n}
            reparse = 0
            for variant in ("model", "published"):
                unsup = {"caption_clauses": 0, "labels": 0, "events": 0}
                claims = {"caption_clauses": 0, "labels": 0, "events": 0}
                for i, text in enumerate(caps[key]):
                    # published: the clauses grounding keeps, with the kinds read from the decoded caption
                    clauses = C.published_clauses(text, used) if variant == "published" else caption_clauses(text)
                    for kind, _ in clauses:
                        claims["caption_clauses"] += 1
                        unsup["caption_clauses"] += int(not observable(kind, used))
                    if variant == "published" and clauses:
                        # the published text read back by the same parser (what a downstream checker sees)
                        reparse += sum(not observable(k, used) for k, _ in caption_clauses(grounded_caption(text, used)[0]))
                labels_ok = observable("labels", used)
                n_labels = top_k * n if (variant == "model" or labels_ok) else 0
                claims["labels"] = n_labels
                unsup["labels"] = 0 if labels_ok else n_labels
                flagged = active if variant == "model" else active & mask[None, :]
                claims["events"] = int(flagged.sum())
                unsup["events"] = int((flagged & ~mask[None, :]).sum())
                if variant == "published":
                    r["published_text_reparsed_unobservable_clauses"] = reparse
                r[variant] = {"claims_per_frame": sum(claims.values()) / n,
                              "unsupported_per_frame": sum(unsup.values()) / n,
                              **{f"unsupported_{k}": v for k, v in unsup.items()}}
            rows.append(r)
        return {"subsets": rows, "top_k_labels": top_k, "event_thresholds": thr,
                "published_total_unsupported": int(sum(sum(r["published"][f"unsupported_{k}"] for k in ("caption_clauses", "labels", "events")) for r in rows))}

    def _subset_captions(self, ctx: EvalContext) -> Dict[str, List[str]]:
        """Raw (ungrounded) runtime caption of every frame per subset (decoded once, in collect)."""
        return self.outputs(ctx).caption_raw

    def t8_familiarity(self, ctx: EvalContext, real_data=None) -> Optional[dict]:
        """Familiarity AUROC between the simulator split and each real set, per modality, and the share of
        simulator frames flagged unfamiliar (core/familiarity.py on model inputs, statistics shipped in the
        bundle; real sets from train/real_data.py)."""
        from mmfusion_ros.core.familiarity import Familiarity

        fam = Familiarity.from_manifest(self.manifest, self.root) if self.manifest else None
        if fam is None or not fam.available:
            return {"available": False, "note": "the bundle ships no familiarity statistics"}
        from mmfusion_ros.train import real_data as R

        root = Path(real_data) if real_data else R.default_root()
        sim_scores = {}
        out: Dict = {"available": True, "threshold": fam.threshold, "sim": [], "real": []}
        n = len(ctx.split)
        for m in SENSOR_KEYS:
            if not fam.assessed(m):
                continue
            s = np.concatenate([fam.scores(m, ctx.split.inputs(np.arange(i, min(i + 256, n)), [m])[m])
                                for i in range(0, n, 256)])
            sim_scores[m] = s
            out["sim"].append({"modality": m, "frames": int(len(s)), "flagged_unfamiliar": float(np.mean(s < fam.threshold)),
                               "score_p50": float(np.median(s))})
        sets = R.real_sets(root) if root is not None else {}
        if not sets:
            out["note"] = f"no real recordings found (looked in {root})"
        for name, mods in sets.items():
            for m, x in mods.items():
                if m not in sim_scores or len(x) == 0:
                    continue
                rs = np.asarray(fam.scores(m, x), np.float64)
                out["real"].append({"set": name, "modality": m, "samples": int(len(rs)),
                                    "AUROC": auroc(sim_scores[m], rs), "flagged_unfamiliar": float(np.mean(rs < fam.threshold)),
                                    "score_p50": float(np.median(rs))})
        return out

    def real_audio(self, folder) -> dict:

        """Zero-shot audio on real UrbanSound8K clips whose class maps to a simulator class."""
        import csv

        from scipy.io import wavfile

        from mmfusion_ros.core.preprocess import audio_resample, log_mel

        mapping = {"car_horn": "car", "engine_idling": "car", "dog_bark": "dog", "siren": "alarm", "children_playing": "person"}
        folder = Path(folder)
        rows = list(csv.DictReader(open(folder / "labels.csv")))
        names = [p["label"] for p in self.prompts]
        out = []
        for r in rows:
            if r["class"] not in mapping:
                continue
            rate, raw = wavfile.read(folder / r["filename"])
            x = raw.astype(np.float32)
            if np.issubdtype(raw.dtype, np.integer):
                x /= float(np.iinfo(raw.dtype).max)
            a = audio_resample(x, rate, 16000)
            # the clip's loudest 1 s window (the model hears 1 s at a time)
            hop = 1600
            starts = range(0, max(1, len(a) - 16000 + 1), hop)
            best = max(starts, key=lambda s: float(np.mean(a[s:s + 16000] ** 2)))
            mel = log_mel(a[best:best + 16000])[None]  # (1, 1, 64, 101)
            with torch.no_grad():
                e = _np(self.model.encode("audio", torch.from_numpy(mel)))[0]
            sims = self.prompt_emb @ e
            pred = names[int(np.argmax(sims))]
            out.append({"file": r["filename"], "class": r["class"], "expected": mapping[r["class"]], "predicted": pred,
                        "correct": pred == mapping[r["class"]]})
        acc = float(np.mean([o["correct"] for o in out])) if out else float("nan")
        return {"clips": out, "accuracy": acc, "chance": 1.0 / len(names), "n": len(out)}


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a `pos` score > a `neg` score), ties counting half (Mann-Whitney); NaN when either is empty."""
    pos, neg = np.asarray(pos, np.float64).ravel(), np.asarray(neg, np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    i = 0
    while i < len(sv):  # average ranks over ties
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def write_reliability_pngs(curves: Dict[str, Dict[str, tuple]], out_dir: Path, tag: str, n_bins: int = 15) -> List[str]:
    """One reliability diagram per output: accuracy per confidence bin, raw and calibrated, with the
    diagonal and the share of samples per bin. matplotlib when installed, else OpenCV drawing."""
    from mmfusion_ros.train.calibrate import ece, reliability

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for output, variants in curves.items():
        slug = output.split(" ")[0]
        path = out_dir / f"reliability_{slug}_{tag}.png"
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
            ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
            for v, (c, r) in variants.items():
                rel = reliability(c, r, n_bins)
                ax.plot([b["confidence"] for b in rel], [b["accuracy"] for b in rel], marker="o", ms=3,
                        label=f"{v} (ECE {ece(c, r, n_bins):.3f}, n={len(c)})")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("confidence")
            ax.set_ylabel("fraction right")
            ax.set_title(f"{output}: {tag}", fontsize=9)
            ax.legend(fontsize=7, loc="upper left")
            fig.tight_layout()
            fig.savefig(path)
            plt.close(fig)
        except ImportError:
            import cv2

            S = 420
            img = np.full((S, S, 3), 255, np.uint8)
            cv2.line(img, (20, S - 20), (S - 20, 20), (160, 160, 160), 1)
            for (v, (c, r)), col in zip(variants.items(), [(0, 0, 200), (200, 80, 0)]):
                pts = [(int(20 + b["confidence"] * (S - 40)), int(S - 20 - b["accuracy"] * (S - 40))) for b in reliability(c, r, n_bins)]
                for p0, p1 in zip(pts[:-1], pts[1:]):
                    cv2.line(img, p0, p1, col, 2)
                cv2.putText(img, f"{v} ECE {ece(c, r, n_bins):.3f}", (25, 30 + 18 * list(variants).index(v)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.45, col, 1)
            cv2.imwrite(str(path), img)
        paths.append(str(path))
    return paths


def _f(x, pct=False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def _md_t1(res: dict) -> List[str]:
    L = ["### T1 retrieval (%)", "", "| query | gallery | gallery size | R@1 | R@5 |", "|---|---|---|---|---|"]
    for r in res["T1_retrieval"]:
        L.append(f"| {r['query']} | {r['gallery']} | {r['gallery_size']} | {_f(r['R@1'], 1)} | {_f(r['R@5'], 1)} |")
    return L


def _md_t2(res: dict) -> List[str]:
    t2 = res["T2_zero_shot"]
    L = [f"### T2 zero-shot top-1 (%) — chance {_f(t2['chance_uniform'], 1)} uniform, "
         f"{_f(t2['chance_majority'], 1)} majority class", "",
         "| modality | top-1 | 95 % interval (scenes) | supervised upper bound | emergent / upper bound |",
         "|---|---|---|---|---|"]
    for k, v in t2["accuracy"].items():
        ub = t2.get("supervised_upper_bound", {}).get(k)
        ratio = t2.get("emergent_ratio", {}).get(k)
        ci = t2.get("ci95", {}).get(k)
        ci_s = f"{_f(ci[0], 1)} - {_f(ci[1], 1)}" if ci else "-"
        L.append(f"| {k} | {_f(v, 1)} | {ci_s} | {_f(ub, 1) if ub is not None else '-'} | "
                 f"{_f(ratio) if ratio is not None else '-'} |")
    imu = t2.get("imu_predicts_class")
    if imu:
        L += ["", f"IMU alone predicts the object class above chance (lower 95 % bound {_f(imu['ci95_low'], 1)} vs "
                  f"majority {_f(imu['chance_majority'], 1)}): {'YES: the data ties motion to classes' if imu['above_chance'] else 'no'}"]
    tc = t2.get("text_ceiling")
    if tc:
        L += ["", "The frames' own caption texts, zero-shot (what an encoder reproducing its training text would score): "
              + "; ".join(f"{k} {_f(v['accuracy'], 1)} ({_f(v['ci95'][0], 1)} - {_f(v['ci95'][1], 1)})" for k, v in tc.items())]
    ego = t2.get("imu_ego_motion")
    if ego:
        ub = ego.get("supervised_upper_bound")
        L += ["", f"IMU on what it observes (which of {ego['phrases']} robot-motion phrases is the frame's): "
                  f"{_f(ego['accuracy'], 1)} ({_f(ego['ci95'][0], 1)} - {_f(ego['ci95'][1], 1)}), majority "
                  f"{_f(ego['chance_majority'], 1)}" + (f"; supervised upper bound {_f(ub, 1)}, ratio "
                                                         f"{_f(ego['ratio'])}" if ub is not None else "")]
    if t2.get("per_class"):
        L += ["", "| focus class | frames | camera top-1 | fused top-1 | camera's most frequent wrong label (frames) |",
              "|---|---|---|---|---|"]
        for r in t2["per_class"]:
            conf = f"{r['camera_top_confusion']} ({r['camera_top_confusion_frames']})" if r["camera_top_confusion"] else "-"
            L.append(f"| {r['class']} | {r['frames']} | {_f(r['camera'], 1)} | {_f(r['fused'], 1)} | {conf} |")
    return L


def _md_t3(res: dict) -> List[str]:
    t3 = res["T3_robustness"]
    L = ["### T3 top-1 (%) per modality subset: attention-fused embedding and published labels (weighted mean of "
         "the label sensors)", "", "| present | fused top-1 | labels top-1 |", "|---|---|---|"]
    for s in t3["subsets"]:
        la = s.get("labels_accuracy")
        L.append(f"| {'+'.join(s['modalities'])} | {_f(s['accuracy'], 1)} | {'-' if la is None else _f(la, 1)} |")
    L += ["", "| missing modality | fused relative drop (%) | labels relative drop (%) |", "|---|---|---|"]
    lab = t3.get("labels_relative_drop_when_missing", {})
    for k, v in t3["relative_drop_when_missing"].items():
        L.append(f"| {k} | {_f(v, 1)} | {_f(lab[k], 1) if k in lab else '-'} |")
    return L


def _md_t4(res: dict) -> List[str]:
    L = ["### T4 captions", "", "| source | BLEU-4 | CIDEr | object P / R / F1 (95 % over scenes) vs truth | object F1 vs reference caption | sound P / R |",
         "|---|---|---|---|---|---|"]
    for r in res["T4_captions"]:
        o, oc, s = r["objects_vs_truth"], r["objects_vs_reference_caption"], r["sounds_vs_truth"]
        ci = f" ({_f(o['f1_ci95'][0])}-{_f(o['f1_ci95'][1])})" if "f1_ci95" in o else ""
        L.append(f"| {r['source']} | {_f(r['BLEU-4'])} | {_f(r['CIDEr'])} | {_f(o['precision'])} / {_f(o['recall'])} / {_f(o['f1'])}{ci} "
                 f"| {_f(oc['f1'])} | {_f(s['precision'])} / {_f(s['recall'])} |")
    for r in res["T4_captions"][:1]:
        for ex in r.get("examples", []):
            L.append(f"\n- generated: _{ex['generated']}_  \n  reference: _{ex['reference']}_")
    return L


def _md_t5(res: dict) -> List[str]:
    t5 = res["T5_events"]
    L = ["### T5 events", "", "Per-frame alarms (probability >= the manifest's raw `event_thresholds`):", "",
         "| horizon (s) | mAP | micro AP | mean F1 @ thr | mean lead (s) | onsets warned | false alarms / min |",
         "|---|---|---|---|---|---|---|"]
    for r in t5["per_horizon"]:
        L.append(f"| {r['horizon_s']} | {_f(r['mAP'])} | {_f(r['micro_AP'])} | {_f(r['mean_F1'])} | {_f(r['mean_lead_s'])} "
                 f"| {r['warned']}/{r['onsets']} | {r['false_alarms_per_min']:.2f} |")
    L += ["", "| event (1 s horizon) | AP | F1 | threshold | mean lead (s) | warned/onsets | false alarms / min |", "|---|---|---|---|---|---|---|"]
    for r in t5["per_type_at_1s"]:
        L.append(f"| {r['event']} | {_f(r['AP'])} | {_f(r['F1'])} | {r['threshold']:.2f} | {_f(r['mean_lead_s'])} "
                 f"| {r['warned']}/{r['onsets']} | {r['false_alarms_per_min']:.2f} |")
    tr = t5.get("tracker")
    if tr:
        L += ["", f"Flags as the node raises them (core.events.EventTracker: EMA + hysteresis, reset per scene; "
                  f"{tr['minutes']:.1f} min; a false alarm is a start while the event is neither active nor due within "
                  f"the reported horizon; warned = flag on at the onset, in time = on before it):", "",
              "| variant | mAP @ 1 s (95 % interval, scenes) | false alarms / min (worst type) | false alarms / min (all types) | onsets warned | in time |",
              "|---|---|---|---|---|---|"]
        for v in tr["variants"]:
            ci = v.get("mAP_1s_ci95", [float("nan")] * 2)
            L.append(f"| {v['name']} | {_f(v['mAP_1s'])} ({_f(ci[0])}-{_f(ci[1])}) | {v['false_alarms_per_min_max']:.2f} | {v['false_alarms_per_min_total']:.2f} "
                     f"| {v['warned']}/{v['onsets']} | {v['warned_before_onset']}/{v['onsets']} |")
        if tr.get("tracks"):
            L += ["", f"LiDAR track forecasts: {tr['tracks']}."]
        L += ["", "| event | " + " | ".join(f"{v['name'].split(',')[0]}: thr / AP @ 1 s / FA per min / warned / in time" for v in tr["variants"]) + " |",
              "|---|" + "---|" * len(tr["variants"])]
        for k, r0 in enumerate(tr["variants"][0]["per_type"]):
            cells = []
            for v in tr["variants"]:
                r = v["per_type"][k]
                cells.append(f"{r['threshold']:.2f} / {_f(r['AP_1s'])} / {r['false_alarms_per_min']:.2f} / {r['warned']}/{r['onsets']} / {r['warned_before_onset']}/{r['onsets']}")
            L.append(f"| {r0['event']} | " + " | ".join(cells) + " |")
    return L


def _md_t6(res: dict) -> List[str]:
    t6 = res["T6_calibration"]
    L = ["### T6 calibration error (ECE, 15 equal-width bins; lower is better)", ""]
    if not t6["calibration_available"]:
        L += ["The bundle ships no calibration (`mmfusion calibrate`): raw scores only.", ""]
    vs = [v for v in ("raw", "calibrated") if v in t6]
    L += ["| output | " + " | ".join(vs) + " |", "|---|" + "---|" * len(vs)]
    for key, name in [("labels_top1_ECE", "labels: top-1 label, subsets where labels are published"),
                      ("labels_top5_ECE", "labels: the top-5 published"),
                      ("labels_all_prompts_ECE", "labels: every prompt"), ("events_1s_ECE", "events: 1 s horizon, every type"),
                      ("events_all_horizons_ECE", "events: every horizon"), ("caption_ECE", "caption confidence (published captions)")]:
        L.append(f"| {name} | " + " | ".join(_f(t6[v][key]) for v in vs) + " |")
    L += ["", "| presence subset | top-1 right | labels top-1 ECE " + " / ".join(vs) + " | captions (right) | caption ECE " + " / ".join(vs) + " |",
          "|---|---|---|---|---|"]
    for r in t6["per_subset"]:
        L.append(f"| {r['subset']} | {_f(r['labels_top1_accuracy'], 1)} | " + " / ".join(_f(r.get(f"labels_top1_ECE_{v}")) for v in vs)
                 + f" | {r['captions']} ({_f(r['caption_right'], 1)} %) | " + " / ".join(_f(r.get(f"caption_ECE_{v}")) for v in vs) + " |")
    L += ["", "| event (1 s) | positive rate | ECE " + " / ".join(vs) + " |", "|---|---|---|"]
    for r in t6["per_event_1s"]:
        L.append(f"| {r['event']} | {_f(r['positive_rate'], 1)} % | " + " / ".join(_f(r.get(f"ECE_{v}")) for v in vs) + " |")
    for p in t6.get("figures", []):
        L.append(f"\n![reliability]({Path(p).name})")
    return L


def _md_t7(res: dict) -> List[str]:
    t7 = res["T7_unsupported_claims"]
    L = ["### T7 unsupported claims per frame, per presence subset (judged by core/observability.py)", "",
         "`model`: what the model says ungated (every decoded caption clause, the top-5 labels, every flagged event); "
         "`published`: after grounding as the robot publishes.", "",
         "| present | model: claims / unsupported per frame | published: claims / unsupported per frame | published unsupported (clauses, labels, events) | published caption re-read as unobservable |",
         "|---|---|---|---|---|"]
    for r in t7["subsets"]:
        m, p = r["model"], r["published"]
        L.append(f"| {r['subset']} | {m['claims_per_frame']:.2f} / {m['unsupported_per_frame']:.2f} | {p['claims_per_frame']:.2f} / "
                 f"{p['unsupported_per_frame']:.2f} | {p['unsupported_caption_clauses']}, {p['unsupported_labels']}, {p['unsupported_events']} "
                 f"| {r.get('published_text_reparsed_unobservable_clauses', 0)} |")
    L.append(f"\nPublished unsupported claims over all subsets: {t7['published_total_unsupported']}.")
    return L


def _md_t8(res: dict) -> List[str]:
    t8 = res["T8_familiarity"]
    L = ["### T8 familiarity (simulator split vs real recordings)", ""]
    if not t8.get("available"):
        return L + [f"Not assessed: {t8.get('note', '')}."]
    L += [f"Unfamiliar below {t8['threshold']:.2f}.", "", "| simulator modality | frames | flagged unfamiliar | median score |", "|---|---|---|---|"]
    for r in t8["sim"]:
        L.append(f"| {r['modality']} | {r['frames']} | {_f(r['flagged_unfamiliar'], 1)} % | {_f(r['score_p50'])} |")
    L += ["", "| real set | modality | samples | AUROC (sim vs real) | flagged unfamiliar | median score |", "|---|---|---|---|---|---|"]
    for r in t8["real"]:
        L.append(f"| {r['set']} | {r['modality']} | {r['samples']} | {_f(r['AUROC'])} | {_f(r['flagged_unfamiliar'], 1)} % | {_f(r['score_p50'])} |")
    if t8.get("note"):
        L.append(f"\n{t8['note']}")
    return L


def _md_real_audio(res: dict) -> List[str]:
    ra = res["real_audio"]
    L = [f"### Real audio (UrbanSound8K clips, classes mapped to simulator classes): top-1 {_f(ra['accuracy'], 1)}% "
         f"on {ra['n']} clips (chance {_f(ra['chance'], 1)}%)", "", "| clip | class | expected | predicted |", "|---|---|---|---|"]
    for c in ra["clips"]:
        L.append(f"| {c['file']} | {c['class']} | {c['expected']} | {c['predicted']} |")
    return L


def _md_t9(res: dict) -> List[str]:
    L = ["### T9 fusion variants: zero-shot top-1 (%) of the same embeddings combined differently", "",
         "| variant | top-1 | 95 % interval (scenes) |", "|---|---|---|"]
    for r in res["T9_fusion_variants"]["rows"]:
        L.append(f"| {r['variant']} | {_f(r['top1'], 1)} | {_f(r['ci95'][0], 1)} - {_f(r['ci95'][1], 1)} |")
    return L


_MARKDOWN = [("T1_retrieval", _md_t1), ("T2_zero_shot", _md_t2), ("T3_robustness", _md_t3), ("T4_captions", _md_t4),
             ("T5_events", _md_t5), ("T6_calibration", _md_t6), ("T7_unsupported_claims", _md_t7),
             ("T8_familiarity", _md_t8), ("T9_fusion_variants", _md_t9), ("real_audio", _md_real_audio)]


def to_markdown(res: dict) -> str:
    L = [f"Split `{res['split']}`: {res['n_samples']} frames, {res['n_scenes']} scenes; retrieval/caption gallery "
         f"{res['gallery_frames']} frames (one per second per scene).", ""]
    for key, fn in _MARKDOWN:
        if key in res:
            L += fn(res) + [""]
    return "\n".join(L).rstrip("\n") + "\n"


def write_json(res: dict, path) -> None:
    def clean(o):
        if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (np.floating, np.integer)):
            return clean(o.item())
        return o

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(clean(res), indent=1))
