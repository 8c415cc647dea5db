"""Evaluation of a trained model on a dataset split: tables T1-T5 as markdown and JSON.

Gallery for retrieval and the caption set: one frame per second of every scene of the split (the
frames in between are near-duplicates and would only inflate the gallery). Event metrics use every
frame, in time order.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from mmfusion_ros.model.checkpoint import load_checkpoint
from mmfusion_ros.model.mmfusion import SENSOR_KEYS, MMFusionModel
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


class Evaluator:
    def __init__(self, model_path, text_cache=None, threads: int = 1):
        torch.set_num_threads(max(1, threads))
        self.model, self.vocab, self.info = load_checkpoint(model_path)
        self.model.eval()
        root = Path(model_path)
        self.root = root if root.is_dir() else root.parent
        self.embedder = TextEmbedder(text_cache)
        self.prompts = default_prompts()
        self.prompt_emb = self.embedder.encode([p["text"] for p in self.prompts])  # (C, 384)
        mem = self.root / str(self.info.get("metadata", {}).get("caption_memory_file", "caption_memory.npz"))
        self.memory = None
        if mem.is_file():
            z = np.load(mem)
            self.memory = z["embeddings"].astype(np.float32)  # (M, 384)
        meta = self.info.get("metadata", {})
        thr = dict(meta.get("event_thresholds", {}))
        manifest = self.root / "manifest.json"
        if root.is_dir() and manifest.is_file():
            # a bundle: score with the thresholds the runtime uses (export may have overridden them)
            import json

            thr.update(json.loads(manifest.read_text()).get("event_thresholds", {}))
        self.thresholds = {t: float(thr.get(t, 0.5)) for t in self.model.cfg.events.event_types}

    def embed(self, split: Split) -> np.ndarray:
        return embed_split(self.model, split)  # (N, 4, 384)

    @torch.no_grad()
    def fuse(self, tokens: np.ndarray, present) -> np.ndarray:
        t = torch.from_numpy(tokens)
        p = torch.tensor(present, dtype=torch.float32).expand(t.shape[0], -1)
        return _np(self.model.fusion(t * p.unsqueeze(-1), p)[0])  # (N, 384)

    @torch.no_grad()
    def caption(self, emb: np.ndarray, project: bool) -> List[str]:
        """Greedy captions; with project, each embedding is first replaced by its nearest caption
        memory entry (the decoder was trained on text embeddings, which that memory holds)."""
        e = emb
        if project and self.memory is not None:
            e = self.memory[np.argmax(emb @ self.memory.T, axis=1)]  # (N, 384)
        out = []
        for s in range(0, len(e), 256):
            ids = self.model.caption_decoder.greedy(torch.from_numpy(np.ascontiguousarray(e[s:s + 256])))
            out.extend(self.vocab.decode(r) for r in ids.tolist())
        return out

    @torch.no_grad()
    def event_probs(self, fused: np.ndarray, history_index: np.ndarray) -> np.ndarray:
        f = torch.from_numpy(fused)
        out = [_np(self.model.event_head(f[torch.from_numpy(history_index[s:s + 512])])) for s in range(0, len(f), 512)]
        return np.concatenate(out)  # (N, E, H)

    def run(self, data, split: str = "test", upper_bound: Optional[str] = None, max_samples: int = 0) -> dict:
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
        text_all = self.embedder.encode(canon)  # (N, 384)
        res: Dict = {"split": split, "n_samples": n, "n_scenes": int(first.sum()), "gallery_frames": int(len(gal)),
                     "model": str(self.info.get("metadata", {}).get("data", "")), "checkpoint_sha256": self.info["sha256"]}
        fused_all = self.fuse(tokens, [1, 1, 1, 1])

        # ---- T1 retrieval
        emb = {k: tokens[:, j] for j, k in enumerate(SENSOR_KEYS)}
        emb["fused"] = fused_all
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
        res["T1_retrieval"] = t1

        # ---- T2 zero-shot
        labels = a["class_id"].astype(np.int64)
        counts = np.bincount(labels, minlength=len(self.prompts))
        t2 = {"chance_uniform": 1.0 / len(self.prompts), "chance_majority": float(counts.max() / n), "accuracy": {}}
        for k in SENSOR_KEYS + ["fused"]:
            t2["accuracy"][k] = M.zero_shot_accuracy(emb[k], self.prompt_emb, labels)
        if upper_bound:
            ubt = embed_split(load_checkpoint(upper_bound)[0], sp)  # (N, 4, 384)
            t2["supervised_upper_bound"] = {}
            t2["emergent_ratio"] = {}
            for j, k in enumerate(SENSOR_KEYS):
                if k == "camera":
                    continue
                acc_ub = M.zero_shot_accuracy(ubt[:, j], self.prompt_emb, labels)
                t2["supervised_upper_bound"][k] = acc_ub
                t2["emergent_ratio"][k] = t2["accuracy"][k] / acc_ub if acc_ub > 0 else float("nan")
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
        res["T2_zero_shot"] = t2

        # ---- T3 robustness
        t3 = {"subsets": []}
        full = None
        for r in range(4, 0, -1):
            for combo in itertools.combinations(range(4), r):
                mask = [1.0 if j in combo else 0.0 for j in range(4)]
                acc = M.zero_shot_accuracy(self.fuse(tokens, mask), self.prompt_emb, labels)
                t3["subsets"].append({"modalities": [SENSOR_KEYS[j] for j in combo], "accuracy": acc})
                if r == 4:
                    full = acc
        t3["relative_drop_when_missing"] = {}
        for j, k in enumerate(SENSOR_KEYS):
            others = [SENSOR_KEYS[i] for i in range(4) if i != j]
            acc = next(s["accuracy"] for s in t3["subsets"] if s["modalities"] == others)
            t3["relative_drop_when_missing"][k] = (full - acc) / full if full else float("nan")
        res["T3_robustness"] = t3

        # ---- T4 captions (from the fused embedding of every gallery frame)
        refs = [sp.captions[i] for i in gal]
        truth_obj = [{sp.classes[c] for c in np.flatnonzero(a["classes_present"][i])} for i in gal]
        truth_snd = [{sp.classes[a["sound_class"][i]]} if a["sound_class"][i] >= 0 else set() for i in gal]
        ref_obj = [M.mentions(r[0], OBJECT_WORDS) for r in refs]
        t4 = []
        variants = [("fused, memory projection", fused_all[gal], True), ("fused, direct", fused_all[gal], False),
                    ("camera only, memory projection", emb["camera"][gal], True)]
        for name, e, proj in variants:
            if proj and self.memory is None:
                continue
            hyp = self.caption(e, proj)
            objs = [M.mentions(h, OBJECT_WORDS) for h in hyp]
            snds = [M.mentions(h, SOUND_WORDS) for h in hyp]
            t4.append({"source": name, "BLEU-4": M.bleu4(hyp, refs), "CIDEr": M.cider(hyp, refs),
                       "objects_vs_truth": M.precision_recall(objs, truth_obj),
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
        res["T4_captions"] = t4

        # ---- T5 events over every frame
        probs = self.event_probs(fused_all, sp.history_index)  # (N, E, H)
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
        res["T5_events"] = t5
        return res

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


def _f(x, pct=False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def to_markdown(res: dict) -> str:
    L = [f"Split `{res['split']}`: {res['n_samples']} frames, {res['n_scenes']} scenes; retrieval/caption gallery "
         f"{res['gallery_frames']} frames (one per second per scene).", ""]
    L += ["### T1 retrieval (%)", "", "| query | gallery | gallery size | R@1 | R@5 |", "|---|---|---|---|---|"]
    for r in res["T1_retrieval"]:
        L.append(f"| {r['query']} | {r['gallery']} | {r['gallery_size']} | {_f(r['R@1'], 1)} | {_f(r['R@5'], 1)} |")
    t2 = res["T2_zero_shot"]
    L += ["", f"### T2 zero-shot top-1 (%) — chance {_f(t2['chance_uniform'], 1)} uniform, "
              f"{_f(t2['chance_majority'], 1)} majority class", "",
          "| modality | top-1 | supervised upper bound | emergent / upper bound |", "|---|---|---|---|"]
    for k, v in t2["accuracy"].items():
        ub = t2.get("supervised_upper_bound", {}).get(k)
        ratio = t2.get("emergent_ratio", {}).get(k)
        L.append(f"| {k} | {_f(v, 1)} | {_f(ub, 1) if ub is not None else '-'} | {_f(ratio) if ratio is not None else '-'} |")
    if t2.get("per_class"):
        L += ["", "| focus class | frames | camera top-1 | fused top-1 | camera's most frequent wrong label (frames) |",
              "|---|---|---|---|---|"]
        for r in t2["per_class"]:
            conf = f"{r['camera_top_confusion']} ({r['camera_top_confusion_frames']})" if r["camera_top_confusion"] else "-"
            L.append(f"| {r['class']} | {r['frames']} | {_f(r['camera'], 1)} | {_f(r['fused'], 1)} | {conf} |")
    t3 = res["T3_robustness"]
    L += ["", "### T3 fused top-1 (%) per modality subset", "", "| present | top-1 |", "|---|---|"]
    for s in t3["subsets"]:
        L.append(f"| {'+'.join(s['modalities'])} | {_f(s['accuracy'], 1)} |")
    L += ["", "| missing modality | relative drop (%) |", "|---|---|"]
    for k, v in t3["relative_drop_when_missing"].items():
        L.append(f"| {k} | {_f(v, 1)} |")
    L += ["", "### T4 captions", "", "| source | BLEU-4 | CIDEr | object P / R / F1 vs truth | object F1 vs reference caption | sound P / R |",
          "|---|---|---|---|---|---|"]
    for r in res["T4_captions"]:
        o, oc, s = r["objects_vs_truth"], r["objects_vs_reference_caption"], r["sounds_vs_truth"]
        L.append(f"| {r['source']} | {_f(r['BLEU-4'])} | {_f(r['CIDEr'])} | {_f(o['precision'])} / {_f(o['recall'])} / {_f(o['f1'])} "
                 f"| {_f(oc['f1'])} | {_f(s['precision'])} / {_f(s['recall'])} |")
    for r in res["T4_captions"][:1]:
        for ex in r.get("examples", []):
            L.append(f"\n- generated: _{ex['generated']}_  \n  reference: _{ex['reference']}_")
    t5 = res["T5_events"]
    L += ["", "### T5 events", "", "| horizon (s) | mAP | micro AP | mean F1 @ thr | mean lead (s) | onsets warned | false alarms / min |",
          "|---|---|---|---|---|---|---|"]
    for r in t5["per_horizon"]:
        L.append(f"| {r['horizon_s']} | {_f(r['mAP'])} | {_f(r['micro_AP'])} | {_f(r['mean_F1'])} | {_f(r['mean_lead_s'])} "
                 f"| {r['warned']}/{r['onsets']} | {r['false_alarms_per_min']:.2f} |")
    L += ["", "| event (1 s horizon) | AP | F1 | threshold | mean lead (s) | warned/onsets | false alarms / min |", "|---|---|---|---|---|---|---|"]
    for r in t5["per_type_at_1s"]:
        L.append(f"| {r['event']} | {_f(r['AP'])} | {_f(r['F1'])} | {r['threshold']:.2f} | {_f(r['mean_lead_s'])} "
                 f"| {r['warned']}/{r['onsets']} | {r['false_alarms_per_min']:.2f} |")
    if "real_audio" in res:
        ra = res["real_audio"]
        L += ["", f"### Real audio (UrbanSound8K clips, classes mapped to simulator classes): top-1 {_f(ra['accuracy'], 1)}% "
                  f"on {ra['n']} clips (chance {_f(ra['chance'], 1)}%)", "", "| clip | class | expected | predicted |", "|---|---|---|---|"]
        for c in ra["clips"]:
            L.append(f"| {c['file']} | {c['class']} | {c['expected']} | {c['predicted']} |")
    return "\n".join(L) + "\n"


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
