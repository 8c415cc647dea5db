"""The training recipe: camera->text, then LiDAR/audio/IMU->camera, then fusion, captions, events.

Stages after the encoders work on embeddings computed once with the frozen encoders, so the heads
train in seconds instead of re-running the CNNs every step. Every stage runs the same loop, which
works in one process or under `torchrun` (DistributedDataParallel, gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mmfusion_ros.core.observability import CAPTION_KINDS, caption_clauses, event_mask, observable, select_clauses
from mmfusion_ros.model.checkpoint import load_checkpoint, save_checkpoint
from mmfusion_ros.model.config import ModelConfig, tiny_config
from mmfusion_ros.model.mmfusion import SENSOR_KEYS, MMFusionModel, build_model
from mmfusion_ros.model.text import TextEmbedder
from mmfusion_ros.model.vocab import PAD, Vocab, tokenize
from mmfusion_ros.sim.captions import caption_facts
from mmfusion_ros.train.config import STAGES, TrainConfig
from mmfusion_ros.train.data import Split, load_split, shard_indices
from mmfusion_ros.train.losses import info_nce, same


# --------------------------------------------------------------------------- distributed helpers
class Dist:
    """Rank/world/device of this process; initialises the process group under torchrun."""

    def __init__(self, device: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but no CUDA GPU is available")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def wrap(self, module: nn.Module) -> nn.Module:
        if self.world == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------- per-stage loss modules
class CameraTextStep(nn.Module):
    """Stage 1: camera embedding meets the caption's text embedding."""

    def __init__(self, model: MMFusionModel):
        super().__init__()
        self.model = model

    def forward(self, camera, text, pos):
        e = self.model.encode("camera", camera)  # (B, 384)
        return info_nce(e, text, self.model.logit_scale("camera"), pos)


class BindStep(nn.Module):
    """Stage 2: LiDAR, audio and IMU embeddings meet a fixed target (the frozen camera embedding,
    or caption text for the supervised upper bound)."""

    def __init__(self, model: MMFusionModel, keys: List[str]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, inputs: Dict[str, torch.Tensor], targets: Dict[str, torch.Tensor], pos: Dict[str, torch.Tensor]):
        losses = [info_nce(self.model.encode(k, inputs[k]), targets[k], self.model.logit_scale(k), pos[k])
                  for k in self.keys]
        return torch.stack(losses).sum()


class FusionStep(nn.Module):
    """Fusion: the fused embedding of the present tokens meets the caption text embedding."""

    def __init__(self, model: MMFusionModel):
        super().__init__()
        self.model = model

    def forward(self, tokens, present, text, pos):
        fused, _ = self.model.fusion(tokens * present.unsqueeze(-1), present)  # (B, 384)
        return info_nce(fused, text, self.model.logit_scale("fused"), pos)


class JointStep(nn.Module):
    """Joint fine-tuning of the encoders and the fusion on the fused embedding's InfoNCE against the caption text,
    with on-the-fly gradient modulation (OGM-GE; Peng et al., CVPR 2022) against modality imbalance.

    Per step each modality's own score is the mean softmax probability its embedding gives the matching texts; a
    modality scoring above the mean of the others (ratio rho > 1) has its gradient scaled by 1 - tanh(alpha (rho-1)),
    plus (GE) Gaussian noise of that gradient's own spread, so the sensors the fusion leans on stop drowning the
    others' learning. Hand-written (no library implements it for this model): the scaling is applied to the gradient
    at the modality's embedding, which scales every parameter gradient of its encoder alike (exact for OGM); GE's
    noise is drawn there too (the paper draws it per parameter)."""

    def __init__(self, model: MMFusionModel, keys: List[str], alpha: float, ge: bool):
        super().__init__()
        self.model, self.keys, self.alpha, self.ge = model, keys, float(alpha), bool(ge)
        self.coef_sum = torch.zeros(len(SENSOR_KEYS))  # running sums of the coefficients, for the log
        self.steps = 0

    def forward(self, inputs: Dict[str, torch.Tensor], present, text, pos):
        toks, scores = [], []
        posf = pos.float() + torch.eye(len(text), device=text.device)
        posf = (posf > 0).float()
        for k in SENSOR_KEYS:
            e = self.model.encode(k, inputs[k])  # (B, D)
            with torch.no_grad():
                p = F.softmax(self.model.logit_scale(k) * e @ text.t(), 1)  # (B, B)
                scores.append(((p * posf).sum(1)).mean())
            toks.append(e)
        coef = torch.ones(len(SENSOR_KEYS))
        if self.training and self.alpha > 0:
            s = torch.stack(scores).cpu()  # (4,)
            for i, k in enumerate(SENSOR_KEYS):
                if k not in self.keys:
                    continue
                others = torch.cat([s[:i], s[i + 1:]]).mean().clamp(min=1e-6)
                coef[i] = 1.0 - torch.tanh(self.alpha * torch.relu(s[i] / others - 1.0))
                if coef[i] < 1.0 and toks[i].requires_grad:
                    c, ge = float(coef[i]), self.ge
                    toks[i].register_hook(lambda g, c=c, ge=ge: g * c + (torch.randn_like(g) * g.std() if ge else 0.0))
        self.coef_sum += coef
        self.steps += 1
        tokens = torch.stack(toks, 1)  # (B, 4, D)
        fused, _ = self.model.fusion(tokens * present.unsqueeze(-1), present)  # (B, D)
        return info_nce(fused, text, self.model.logit_scale("fused"), pos)


class CaptionStep(nn.Module):
    """Caption decoder: teacher-forced next-token cross-entropy from a conditioning embedding."""

    def __init__(self, model: MMFusionModel):
        super().__init__()
        self.model = model

    def forward(self, cond, tokens):
        logits = self.model.caption_decoder(cond, tokens[:, :-1])  # (B, L-1, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=PAD)


class EventStep(nn.Module):
    """Event head: BCE on events_future of the newest frame of each history."""

    def __init__(self, model: MMFusionModel, pos_weight: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, history, target, observed=None):
        logits = self.model.event_head.logits(history)  # (B, E, H)
        if observed is None:
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)
        # grounded: event types the sample's modalities cannot observe teach nothing (their loss is masked)
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight, reduction="none")
        w = observed.unsqueeze(-1).expand_as(loss)  # (B, E, H)
        return (loss * w).sum() / w.sum().clamp(min=1.0)


# --------------------------------------------------------------------------- text targets
class CaptionTable:
    """All phrasings of a split's captions embedded once; per sample: its phrasing ids and a
    caption-group id (samples whose first phrasing is identical are the same caption). With facts,
    also each caption's single facts (sim/captions.caption_facts): "camera" ones (objects in view)
    and "fused" ones (those plus the sound and the robot's motion); always "ego": the robot-motion fact."""

    def __init__(self, split: Split, embedder: TextEmbedder, facts: bool = False):
        texts: Dict[str, int] = {}
        self.sample_ids: List[List[int]] = []
        for caps in split.captions:
            ids = []
            for c in caps or [""]:
                ids.append(texts.setdefault(c, len(texts)))
            self.sample_ids.append(ids)
        self.n_full = len(texts)  # ids below this are whole phrasings (what the caption decoder learns)
        self.fact_ids: Dict[str, List[List[int]]] = {"camera": [], "fused": [], "ego": [], "focus": []}
        for caps in split.captions:  # the robot-motion fact (IMU binding target); "" when a caption has none
            ego = caption_facts(caps[0] if caps else "")["ego"]
            self.fact_ids["ego"].append([texts.setdefault(ego[0] if ego else "", len(texts))])
        if facts:
            memo: Dict[str, tuple] = {}
            for caps in split.captions:
                first = caps[0] if caps else ""
                if first not in memo:
                    f = caption_facts(first)
                    cam = [texts.setdefault(t, len(texts)) for t in f["nouns"] + f["seen"]]
                    # the object ahead: captions name it first ("a box sits ahead, a person ... on the right")
                    focus = [texts.setdefault(f["seen"][0], len(texts))] if f["seen"] else []
                    memo[first] = (cam, cam + [texts.setdefault(t, len(texts)) for t in f["heard"] + f["ego"]], focus)
                self.fact_ids["camera"].append(memo[first][0])
                self.fact_ids["fused"].append(memo[first][1])
                self.fact_ids["focus"].append(memo[first][2])
        self.texts = list(texts)
        self.emb = embedder.encode(self.texts)  # (U, 384)
        self.group = np.array([ids[0] for ids in self.sample_ids], np.int64)  # (N,)

    def pick(self, idx: np.ndarray, rng: np.random.Generator, facts: str = "", p_fact: float = 0.0,
             p_focus: float = 0.0) -> np.ndarray:
        """One random text id per sample: with probability p_focus the fact of the object ahead, else with
        probability p_fact one of its `facts`, else a whole phrasing."""
        out = []
        for i in idx:
            foc = self.fact_ids["focus"][i] if p_focus > 0 and self.fact_ids["focus"] else []
            if foc and rng.random() < p_focus:
                out.append(foc[0])
                continue
            f = self.fact_ids[facts][i] if facts and p_fact > 0 else []
            ids = f if f and rng.random() < p_fact else self.sample_ids[i]
            out.append(ids[rng.integers(len(ids))])
        return np.array(out, np.int64)

    def positives(self, idx: np.ndarray, tid: np.ndarray, facts: str = "") -> np.ndarray:
        """(B, B) bool: text tid[j] is one of sample idx[i]'s phrasings (or facts), so not a negative for it."""
        allowed = [set(self.sample_ids[i]) | (set(self.fact_ids[facts][i]) if facts else set()) for i in idx]
        return np.array([[t in a for t in tid.tolist()] for a in allowed], bool)


def grounded_memory(texts: Sequence[str], vocab: Vocab, embedder: TextEmbedder) -> Dict[str, np.ndarray]:
    """The caption memory of a grounded model: every caption cut to each combination of clause kinds.

    Per entry: its text, its embedding, `cut` (the kinds the cut asked for, "+"-joined: the runtime projects a
    frame only onto entries cut for exactly the kinds its modalities observe, as training conditioned the
    decoder) and `kinds` (the kinds the text has; a silent scene's full cut has no sound clause). Captions
    with words outside the decoder's vocabulary are left out: projecting onto one would publish <unk>."""
    rows: Dict[tuple, None] = {}
    nk = len(CAPTION_KINDS)
    for t in texts:
        for bits in range(1, 1 << nk):
            kinds = [k for i, k in enumerate(CAPTION_KINDS) if bits >> i & 1]
            v = select_clauses(t, kinds, reword=False)
            if v and all(w in vocab.index for w in tokenize(v)):
                rows.setdefault((v, "+".join(sorted(kinds))), None)
    keys = sorted(rows)
    vt = [v for v, _ in keys]
    return {"texts": np.array(vt), "cut": np.array([c for _, c in keys]),
            "kinds": np.array(["+".join(sorted({k for k, _ in caption_clauses(v)})) for v in vt]),
            "embeddings": embedder.encode(vt).astype(np.float16)}


# --------------------------------------------------------------------------- the trainer
class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] = print,
                 restart_stages: List[str] = (), calibrate: bool = False):
        self.cfg = cfg
        self.calibrate = calibrate  # recompute event thresholds even when the events stage does not run
        self.log_fn = log
        torch.set_num_threads(max(1, cfg.threads))
        self.dist = Dist(cfg.device)
        self.out = Path(cfg.out)
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed + 7 * self.dist.rank)
        self.train = load_split(cfg.data, "train", cfg.max_samples)
        self.tower = None  # train/towers.TowerSide: the frozen pretrained image and text towers, when binding to them
        if cfg.towers:
            from mmfusion_ros.train.towers import TowerSide

            self.tower = TowerSide(cfg.towers, threads=max(1, cfg.threads))
            self.train.camera_embeddings = self.tower.split_embeddings(self.train, self.out / "tower_cache", self.log)
            if cfg.epochs.get("camera", 0):
                self.log("[towers] the camera is the frozen image tower: no camera stage")
            cfg.epochs = dict(cfg.epochs, camera=0)
            self.embedder = self.tower.text_embedder()
        else:
            self.embedder = TextEmbedder(cfg.text_cache or self.out / "text_cache")
        self.progress: Dict[str, int] = {}  # stage -> epochs done
        self.stage_seconds: Dict[str, float] = {}
        self.metadata: Dict = {}
        self.opt_state = None
        last = self.out / "last.pt"
        if resume and last.is_file():
            self.model, self.vocab, info = load_checkpoint(last)
            extra = info.get("extra", {})
            meta = info.get("metadata", {})  # a finished checkpoint.pt keeps its progress in the metadata
            self.progress = dict(extra.get("progress") or meta.get("progress") or {})
            self.stage_seconds = dict(extra.get("stage_seconds") or meta.get("stage_seconds") or {})
            self.opt_state = extra.get("optimizer")
            self.metadata = dict(info.get("metadata", {}))
            self.log(f"resumed from {last}: epochs done {self.progress}")
            if self.tower is not None and (self.model.cfg.embed_dim != self.tower.dim
                                           or "camera" not in self.model.tower_modalities):
                raise ValueError(f"{last}: its encoders embed into {self.model.cfg.embed_dim} dims "
                                 f"{'with their own camera' if 'camera' not in self.model.tower_modalities else ''}; the "
                                 f"tower bundle {cfg.towers} has {self.tower.dim}: start a new --out to bind to it")
        else:
            if resume:
                self.log(f"--resume: no {last} yet, starting fresh")
            self.vocab = Vocab.build(c for caps in self.train.captions for c in caps)
            mcfg = ModelConfig() if cfg.model == "small" else tiny_config()
            mcfg.caption.vocab_size = len(self.vocab)
            if cfg.camera_encoder and self.tower is None:
                mcfg.encoders["camera"] = cfg.camera_encoder_config(mcfg.encoders["camera"])
            for e in mcfg.encoders.values():
                e.dropout = cfg.encoder_dropout
            mcfg.caption.max_len = cfg.caption_max_len
            if cfg.model_name:
                mcfg.name = cfg.model_name
            if self.tower is not None:
                from mmfusion_ros.model.config import EncoderConfig

                mcfg.embed_dim = self.tower.dim
                mcfg.encoders["camera"] = EncoderConfig(kind="tower", in_channels=self.tower.dim)
                if not cfg.model_name:
                    mcfg.name = f"{self.tower.manifest['name']}_bound"
            self.model = build_model(mcfg)
            if self.tower is not None:  # labels use the pretrained model's own temperature
                with torch.no_grad():
                    self.model.logit_scales["camera"].fill_(math.log(self.tower.logit_scale))
                self.metadata["towers"] = self.tower.describe()
        for stage in restart_stages:
            # retrain these stages from scratch on top of the loaded checkpoint (e.g. a new fusion)
            if stage not in STAGES:
                raise ValueError(f"unknown stage to restart {stage!r}; stages are {STAGES}")
            self.progress.pop(stage, None)
            self.stage_seconds.pop(stage, None)
            self.opt_state = None
            self.log(f"[{stage}] restarting from scratch")
        if "fusion" in restart_stages or not (resume and last.is_file()):
            self._new_fusion()
        if cfg.camera_encoder and resume and last.is_file():
            self._reshape_camera("camera" in restart_stages)
        self.model.to(self.dist.device)
        self.mcfg = self.model.cfg
        self.train.build_histories(self.mcfg.events.history_len, self.mcfg.events.history_step)
        # rank 0 embeds the captions (and fills the cache) first; the others then read the cache
        if self.dist.main:
            self.captions = CaptionTable(self.train, self.embedder, cfg.uses_facts)
        self.dist.barrier()
        if not self.dist.main:
            self.embedder = TextEmbedder(cfg.text_cache or self.out / "text_cache")
            self.captions = CaptionTable(self.train, self.embedder, cfg.uses_facts)
        self.text = torch.from_numpy(self.captions.emb).to(self.dist.device)  # (U, 384)
        # scenes held out from the encoder stages train the fusion: on frames the encoders memorised,
        # the camera looks far more reliable than it is on new scenes, and fusion would learn that
        scene = self.train.arrays["scene_id"].astype(np.int64)
        k = int(round(1.0 / cfg.head_holdout)) if cfg.head_holdout > 0 else 0
        held = (scene % k == 0) if k > 1 else np.zeros(len(scene), bool)
        self.enc_idx = np.flatnonzero(~held) if held.any() else np.arange(len(scene))
        self.head_idx = np.flatnonzero(held) if held.any() else np.arange(len(scene))
        self._tokens_cache: Optional[torch.Tensor] = None

    def _reshape_camera(self, restarted: bool) -> None:
        """camera_encoder on a loaded checkpoint: a fresh camera of that shape when the camera stage is retrained;
        otherwise the checkpoint's camera must already have it (a run cannot silently keep another shape)."""
        have = self.model.cfg.encoders["camera"]
        if have.kind == "tower":
            raise ValueError("camera_encoder: this checkpoint's camera is a pretrained tower")
        want = self.cfg.camera_encoder_config(have)
        if want == have:
            return
        if not restarted:
            raise ValueError(f"camera_encoder {self.cfg.camera_encoder} differs from the checkpoint's camera; retrain "
                             "it (--init CKPT --stages camera ...) or drop camera_encoder")
        from mmfusion_ros.model.encoders import ConvTrunk

        self.model.cfg.encoders["camera"] = want
        trunk = ConvTrunk(want)
        self.model.modality_trunks["camera"] = trunk
        self.model.modality_heads["camera"] = torch.nn.Linear(trunk.out_dim, self.model.cfg.embed_dim)
        with torch.no_grad():
            self.model.logit_scales["camera"].fill_(self.model.cfg.init_logit_scale)
        self.log(f"[camera] a new camera encoder: {want}")

    def _new_fusion(self, prior: Optional[List[float]] = None) -> None:
        """A freshly initialised fusion module of the configured kind (residual or attention-only; `prior`: the
        residual mean's fixed weights)."""
        from mmfusion_ros.model.fusion import AttentionFusion

        fcfg = self.model.cfg.fusion
        fcfg.residual = bool(self.cfg.fusion_residual)
        fcfg.prior = [float(w) for w in prior] if prior is not None else None
        fcfg.attention_gain = float(self.cfg.fusion_attention_gain)
        torch.manual_seed(self.cfg.seed)
        self.model.fusion = AttentionFusion(fcfg, self.model.cfg.embed_dim, len(SENSOR_KEYS)).to(self.dist.device)

    @torch.no_grad()
    def skill_prior(self) -> List[float]:
        """Per sensor (SENSOR_KEYS order), its zero-shot skill above chance on the val split (the train split's
        fusion scenes when there is none): the weights `mmfusion calibrate` gives the published labels
        (train/calibrate.label_skill_weights), 0 for the IMU, which cannot observe the class."""
        from mmfusion_ros.model.prompts import default_prompts
        from mmfusion_ros.train.calibrate import label_skill_weights, split_classes
        from mmfusion_ros.train.data import DatasetError

        prompts = default_prompts()
        try:
            split = load_split(self.cfg.data, "val")
        except DatasetError as e:  # a dataset without a val split
            self.log(f"[fusion] no val split for the skill prior ({e}); measuring it on the fusion scenes")
            split, rows = self.train, self.head_idx
            toks = self._tokens()[self._to(rows)].cpu().numpy()  # (N, 4, D)
        else:
            rows = np.arange(len(split))
            toks = self.embed_split(split).numpy()  # (N, 4, D)
        pc = np.array([split.classes.index(p["label"]) if p["label"] in split.classes else -1 for p in prompts])
        cls = split_classes(split, pc)[rows]  # (N,)
        pemb = self.embedder.encode([p["text"] for p in prompts])  # (P, D)
        skill = label_skill_weights([toks], [cls], np.asarray(pemb, np.float32), pc)
        self.log(f"[fusion] skill prior {skill['weights']} (zero-shot top-1 {skill['top1']}, chance {skill['chance']}, "
                 f"{skill['frames']} frames)")
        self.metadata["fusion_skill_prior"] = skill
        return [float(skill["weights"].get(k, 0.0)) for k in SENSOR_KEYS]

    # ---------------------------------------------------------------- utilities
    def log(self, msg: str) -> None:
        if self.dist.main:
            self.log_fn(msg)

    def _log_json(self, rec: dict) -> None:
        if self.dist.main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    def _set_trainable(self, modules: List[nn.Module], params: List[nn.Parameter] = ()) -> List[nn.Parameter]:
        for p in self.model.parameters():
            p.requires_grad_(False)
        out = []
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(True)
                out.append(p)
        for p in params:
            p.requires_grad_(True)
            out.append(p)
        return out

    def save(self, name: str = "last.pt", extra: Optional[dict] = None) -> None:
        if not self.dist.main:
            return
        meta = dict(self.metadata)
        meta.update(train_config=self.cfg.to_dict(), stage_seconds=self.stage_seconds, progress=self.progress,
                    world_size=self.dist.world, device=str(self.dist.device))
        save_checkpoint(self.out / name, self.model, self.vocab, meta, extra)

    def _batches(self, n: int, epoch: int, batch: int) -> np.ndarray:
        idx = shard_indices(n, self.dist.rank, self.dist.world, self.cfg.seed, epoch, drop_last=True, batch=batch)
        return idx.reshape(-1, batch) if len(idx) else np.zeros((0, batch), np.int64)

    def _to(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.dist.device)

    # ---------------------------------------------------------------- the generic loop
    def _run_stage(self, stage: str, step_module: nn.Module, params: List[nn.Parameter], n: int,
                   make_batch: Callable[[np.ndarray], tuple], lr: Optional[float] = None) -> None:
        epochs = int(self.cfg.epochs.get(stage, 0))
        done = int(self.progress.get(stage, 0))
        if done >= epochs:
            self.log(f"[{stage}] done ({done}/{epochs} epochs), skipping")
            return
        batch = min(self.cfg.batch_size, max(2, n // self.dist.world))
        steps_per_epoch = len(self._batches(n, 0, batch))
        if steps_per_epoch == 0:
            raise ValueError(f"[{stage}] {n} samples are too few for batch {batch} x {self.dist.world} processes")
        total = steps_per_epoch * epochs
        warm = max(1, int(self.cfg.warmup_frac * total))
        opt = torch.optim.AdamW(params, lr=lr or self.cfg.lr, weight_decay=self.cfg.weight_decay)
        if self.opt_state is not None and self.opt_state.get("stage") == stage:
            opt.load_state_dict(self.opt_state["state"])
        self.opt_state = None
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
        for _ in range(done * steps_per_epoch):
            sched.step()
        wrapped = self.dist.wrap(step_module)
        t0 = time.time()
        for epoch in range(done, epochs):
            wrapped.train()
            batches = self._batches(n, epoch + 1000 * STAGES.index(stage), batch)
            bar = tqdm(batches, desc=f"{stage} {epoch + 1}/{epochs}", disable=not self.dist.main, leave=False)
            running = []
            for step, idx in enumerate(bar):
                args = make_batch(idx)
                loss = wrapped(*args)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"[{stage}] loss became {loss.item()} at epoch {epoch} step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()
                sched.step()
                running.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(running[-20:]):.3f}")
                if step % self.cfg.log_every == 0:
                    self._log_json({"stage": stage, "epoch": epoch, "step": step, "loss": running[-1], "lr": sched.get_last_lr()[0]})
            self.progress[stage] = epoch + 1
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + (time.time() - t0)
            t0 = time.time()
            self._log_json({"stage": stage, "epoch": epoch, "epoch_loss": float(np.mean(running))})
            self.log(f"[{stage}] epoch {epoch + 1}/{epochs} loss {np.mean(running):.4f}")
            self.save("last.pt", {"progress": self.progress, "stage_seconds": self.stage_seconds,
                                  "optimizer": {"stage": stage, "state": opt.state_dict()}})
        self.model.eval()

    # ---------------------------------------------------------------- embeddings with frozen encoders
    @torch.no_grad()
    def embed_split(self, split: Split, keys=SENSOR_KEYS, batch: int = 128) -> torch.Tensor:
        """(N, 4, 384) per-modality embeddings of every sample (zeros for keys not computed)."""
        self.model.eval()
        out = torch.zeros(len(split), len(SENSOR_KEYS), self.mcfg.embed_dim)
        for s in range(0, len(split), batch):
            idx = np.arange(s, min(s + batch, len(split)))
            x = split.inputs(idx, keys)
            for k in keys:
                out[idx, SENSOR_KEYS.index(k)] = self.model.encode(k, self._to(x[k])).cpu()
        return out

    def _text_positives(self, idx: np.ndarray, tid: np.ndarray, facts: str) -> torch.Tensor:
        """(B, B) matches for InfoNCE: same caption, or (with fact phrasings) any text true of the sample."""
        if self.cfg.uses_facts:
            return self._to(self.captions.positives(idx, tid, facts))
        return same(self._to(self.captions.group[idx]))

    def _dropout_mask(self, b: int) -> torch.Tensor:
        """(B,4) presence with each modality dropped w.p. modality_dropout, at least one kept."""
        p = self.cfg.modality_dropout
        keep = (self.rng.random((b, len(SENSOR_KEYS))) >= p).astype(np.float32)
        none = keep.sum(1) == 0
        keep[none, self.rng.integers(0, len(SENSOR_KEYS), none.sum())] = 1.0
        return self._to(keep)

    # ---------------------------------------------------------------- stages
    def stage_camera(self) -> None:
        tr = self.train
        params = self._set_trainable([self.model.modality_trunks["camera"], self.model.modality_heads["camera"]],
                                     [self.model.logit_scales["camera"]])
        aug = self.cfg.camera_augment()

        sel = self.enc_idx

        def make(idx):
            idx = sel[idx]
            x = aug(self._to(tr.camera_float(idx)), self.rng)  # (B, 3, S, S)
            tid = self.captions.pick(idx, self.rng, "camera", self.cfg.fact_phrasings, self.cfg.camera_focus_fact)
            pos = self._text_positives(idx, tid, "camera")
            return x, self.text[self._to(tid)], pos

        self._run_stage("camera", CameraTextStep(self.model), params, len(sel), make)

    def stage_bind(self) -> None:
        tr = self.train
        keys = [k for k in ("lidar", "audio", "imu") if k in self.cfg.bind_modalities]
        params = self._set_trainable([m for k in keys for m in (self.model.modality_trunks[k], self.model.modality_heads[k])],
                                     [self.model.logit_scales[k] for k in keys])
        if self.progress.get("bind", 0) >= self.cfg.epochs.get("bind", 0):
            return self._run_stage("bind", BindStep(self.model, keys), params, len(self.enc_idx), None)
        upper = self.cfg.supervised_upper_bound
        if not upper and any(self.cfg.bind_targets.get(k, "camera") == "camera" for k in keys):
            cam = self.embed_split(tr, ["camera"])[:, 0].to(self.dist.device)  # (N, 384) frozen anchors
        scene = tr.arrays["scene_id"].astype(np.int64)

        sel = self.enc_idx

        by = {k: "text" if upper else self.cfg.bind_targets.get(k, "camera") for k in keys}

        def make(idx):
            idx = sel[idx]
            x = {k: self._to(v) for k, v in tr.inputs(idx, keys).items()}
            made = {}  # target kind -> ((B, D) targets, (B, B) matches), built once per batch
            if "text" in by.values():
                tid = self.captions.pick(idx, self.rng, "fused", self.cfg.fact_phrasings)
                made["text"] = (self.text[self._to(tid)], self._text_positives(idx, tid, "fused"))
            if "camera" in by.values():
                # co-located frames of one scene are all matches
                made["camera"] = (cam[self._to(idx)], same(self._to(scene[idx])))
            if "ego" in by.values():
                eid = np.array([self.captions.fact_ids["ego"][i][0] for i in idx], np.int64)
                made["ego"] = (self.text[self._to(eid)], same(self._to(eid)))  # the same motion text: a match
            targets = {k: made[by[k]][0] for k in keys}
            pos = {k: made[by[k]][1] for k in keys}
            return x, targets, pos

        self._run_stage("bind", BindStep(self.model, keys), params, len(sel), make)

    def _tokens(self) -> torch.Tensor:
        if self._tokens_cache is None:
            self._tokens_cache = self.embed_split(self.train).to(self.dist.device)  # (N, 4, 384)
        return self._tokens_cache

    def stage_fusion(self) -> None:
        if self.cfg.fusion_prior == "skill" and self.progress.get("fusion", 0) == 0 and not self.model.fusion.fixed_prior:
            self._new_fusion(self.skill_prior())
        params = self._set_trainable([self.model.fusion], [self.model.logit_scales["fused"]])
        if self.progress.get("fusion", 0) >= self.cfg.epochs.get("fusion", 0):
            return self._run_stage("fusion", FusionStep(self.model), params, len(self.head_idx), None)
        toks = self._tokens()
        sel = self.head_idx

        def make(idx):
            idx = sel[idx]
            t = toks[self._to(idx)]  # (B, 4, 384)
            tid = self.captions.pick(idx, self.rng, "fused", self.cfg.fact_phrasings)
            return t, self._dropout_mask(len(idx)), self.text[self._to(tid)], self._text_positives(idx, tid, "fused")

        self._run_stage("fusion", FusionStep(self.model), params, len(sel), make)

    @torch.no_grad()
    def _fused(self, present: Optional[torch.Tensor] = None) -> torch.Tensor:
        toks = self._tokens()
        self.model.eval()
        out = []
        for s in range(0, len(toks), 512):
            t = toks[s:s + 512]
            p = torch.ones(t.shape[:2], device=t.device) if present is None else present[s:s + 512]
            out.append(self.model.fusion(t * p.unsqueeze(-1), p)[0])
        return torch.cat(out)  # (N, 384)

    def _kind_bits(self, present: torch.Tensor) -> np.ndarray:
        """(B,4) presence -> (B,) bitmask of the caption clause kinds those modalities observe (bit i = CAPTION_KINDS[i])."""
        bits = np.zeros(len(present), np.int64)
        for row, mask in enumerate(present.cpu().numpy() > 0.5):
            mods = [m for m, on in zip(SENSOR_KEYS, mask) if on]
            bits[row] = sum(1 << i for i, k in enumerate(CAPTION_KINDS) if observable(k, mods))
        return bits

    def grounded_captions(self, n_text: int) -> Tuple[np.ndarray, List[str], np.ndarray]:
        """Every whole phrasing cut to each combination of clause kinds (core/observability.py).

        Returns table (n_text, 2**K) -> variant id, the variant texts, and their (V, 384) text embeddings."""
        nk = len(CAPTION_KINDS)
        variants: Dict[str, int] = {}
        table = np.zeros((n_text, 1 << nk), np.int64)
        for t in range(n_text):
            for bits in range(1 << nk):
                kinds = [k for i, k in enumerate(CAPTION_KINDS) if bits >> i & 1]
                text = select_clauses(self.captions.texts[t], kinds, reword=False) if kinds else ""
                table[t, bits] = variants.setdefault(text, len(variants))
        texts = list(variants)
        return table, texts, self.embedder.encode(texts)

    def stage_caption(self) -> None:
        """One step item per distinct caption phrasing (frames repeat the same captions many times).

        Grounded (cfg.grounded_captions): each item draws a presence subset (modality dropout) and learns the
        caption cut to the clauses that subset can observe, conditioned on that cut's text embedding (with
        noise) or on a frame's fused embedding under the same subset."""
        params = self._set_trainable([self.model.caption_decoder])
        n_text = self.captions.n_full  # whole phrasings only: facts are training targets, not captions
        if self.progress.get("caption", 0) >= self.cfg.epochs.get("caption", 0):
            return self._run_stage("caption", CaptionStep(self.model), params, n_text, None)
        max_len = self.mcfg.caption.max_len
        grounded = bool(self.cfg.grounded_captions)
        if grounded:
            table, vtexts, vemb = self.grounded_captions(n_text)
            self.log(f"[caption] grounded targets: {len(vtexts)} variants of {n_text} phrasings")
            tok_table = self._to(np.array([self.vocab.encode(t, max_len) for t in vtexts], np.int64))  # (V, L)
            text_table = self._to(vemb)  # (V, 384)
        else:
            tok_table = self._to(np.array([self.vocab.encode(t, max_len) for t in self.captions.texts[:n_text]], np.int64))  # (U, L)
            text_table = self.text
        masks = self._dropout_mask(len(self.train))  # (N, 4) random missing modalities
        fused = self._fused(masks)  # (N, 384)
        frame_bits = self._kind_bits(masks)  # (N,)
        frames_of: List[List[int]] = [[] for _ in range(n_text)]
        for i, ids in enumerate(self.captions.sample_ids):
            for t in ids:
                frames_of[t].append(i)
        sigma = self.cfg.caption_noise
        frac = self.cfg.caption_fused_frac

        def make(idx):
            b = len(idx)
            frame = np.array([frames_of[t][self.rng.integers(len(frames_of[t]))] for t in idx], np.int64)
            use_fused = self.rng.random(b) < frac  # (B,) some steps condition on a real fused embedding
            if grounded:
                bits = np.where(use_fused, frame_bits[frame], self._kind_bits(self._dropout_mask(b)))
                vid = self._to(table[idx, bits])
            else:
                vid = self._to(idx)
            text = text_table[vid]  # (B, 384)
            scale = sigma * torch.rand(b, 1, device=text.device)
            noise = torch.randn_like(text) * scale / math.sqrt(text.shape[1])
            cond = F.normalize(text + noise, dim=-1)
            cond = torch.where(self._to(use_fused[:, None]), fused[self._to(frame)], cond)
            return cond, tok_table[vid]

        self._run_stage("caption", CaptionStep(self.model), params, n_text, make)

    def stage_events(self) -> None:
        tr = self.train
        target = self._to(tr.arrays["events_future"].astype(np.float32))  # (N, E, H)
        rate = target.mean(0).clamp(1e-3, 1.0)
        pos_weight = ((1 - rate) / rate).clamp(1.0, 10.0)  # (E, H) rare events weigh more
        params = self._set_trainable([self.model.event_head])
        step = EventStep(self.model, pos_weight)
        if self.progress.get("events", 0) >= self.cfg.epochs.get("events", 0):
            return self._run_stage("events", step, params, len(tr), None)
        full = self._fused()  # (N, 384)
        masks = self._dropout_mask(len(tr))  # (N, 4)
        dropped = self._fused(masks)  # (N, 384) another view with missing modalities
        hist = self._to(tr.history_index)  # (N, T)
        # (N, E): which event types each frame's dropout subset can observe (core/observability.py)
        obs_drop = self._to(np.array([event_mask(self.mcfg.events.event_types,
                                                 [m for m, on in zip(SENSOR_KEYS, row) if on])
                                      for row in masks.cpu().numpy() > 0.5], np.float32))
        grounded = bool(self.cfg.grounded_captions)

        def make(idx):
            i = self._to(idx)
            h = hist[i]  # (B, T)
            use_drop = torch.rand(len(idx), 1, 1, device=h.device) < 0.3
            x = torch.where(use_drop, dropped[h], full[h])  # (B, T, 384)
            if not grounded:
                return x, target[i]
            observed = torch.where(use_drop[:, :, 0], obs_drop[h[:, -1]], torch.ones_like(obs_drop[h[:, -1]]))  # (B, E)
            return x, target[i], observed

        self._run_stage("events", step, params, len(tr), make)

    def stage_joint(self) -> None:
        """Encoders (not a frozen tower) and fusion fine-tuned together with OGM-GE (JointStep), modality dropout as
        in the fusion stage. Off unless epochs.joint > 0. Captions and events read the fused embedding: retrain
        them after this stage (`--stages joint caption events`)."""
        keys = [k for k in SENSOR_KEYS if k in self.cfg.joint_modalities and k not in self.model.tower_modalities]
        mods = [m for k in keys for m in (self.model.modality_trunks[k], self.model.modality_heads[k])]
        params = self._set_trainable(mods + [self.model.fusion], [self.model.logit_scales["fused"]])
        step = JointStep(self.model, keys, self.cfg.joint_ogm_alpha, self.cfg.joint_ge)
        if self.progress.get("joint", 0) >= self.cfg.epochs.get("joint", 0):
            return self._run_stage("joint", step, params, len(self.train), None)
        tr = self.train
        aug = self.cfg.camera_augment() if self.cfg.joint_camera_augment and "camera" in keys else None

        def make(idx):
            x = {k: self._to(v) for k, v in tr.inputs(idx).items()}
            if aug is not None and aug.active and tr.camera_embeddings is None:
                x["camera"] = aug(x["camera"], self.rng)  # (B, 3, S, S)
            tid = self.captions.pick(idx, self.rng, "fused", self.cfg.fact_phrasings)
            return x, self._dropout_mask(len(idx)), self.text[self._to(tid)], self._text_positives(idx, tid, "fused")

        self._run_stage("joint", step, params, len(tr), make, lr=self.cfg.lr * self.cfg.joint_lr_scale)
        self._tokens_cache = None  # the encoders changed
        if step.steps:
            coef = {k: round(float(c) / step.steps, 4) for k, c in zip(SENSOR_KEYS, step.coef_sum)}
            self.metadata["joint_ogm_mean_coefficients"] = coef
            self.log(f"[joint] mean OGM coefficients {coef}")
            self._log_json({"stage": "joint", "ogm_mean_coefficients": coef})

    # ---------------------------------------------------------------- after training
    @torch.no_grad()
    def calibrate_event_thresholds(self) -> Dict[str, float]:
        """Per event type, the threshold maximising F1 at the 1 s horizon on the val split."""
        from mmfusion_ros.train.metrics import best_f1_threshold

        try:
            val = load_split(self.cfg.data, "val")
        except Exception as e:  # a dataset without a val split keeps the 0.5 default
            self.log(f"no val split for threshold calibration ({e}); thresholds stay 0.5")
            return {}
        val.build_histories(self.mcfg.events.history_len, self.mcfg.events.history_step)
        if self.tower is not None:
            val.camera_embeddings = self.tower.split_embeddings(val, self.out / "tower_cache", self.log)
        toks = self.embed_split(val).to(self.dist.device)
        fused = self.model.fusion(toks, torch.ones(toks.shape[:2], device=toks.device))[0]
        probs = torch.cat([self.model.event_head(fused[self._to(val.history_index[s:s + 512])])
                           for s in range(0, len(val), 512)]).cpu().numpy()  # (N, E, H)
        h = self.mcfg.events.horizons.index(1.0) if 1.0 in self.mcfg.events.horizons else 0
        thr = {}
        for e, name in enumerate(self.mcfg.events.event_types):
            y = val.arrays["events_future"][:, e, h]
            thr[name] = float(best_f1_threshold(y, probs[:, e, h], self.cfg.event_threshold_floor)) if y.any() else max(0.5, self.cfg.event_threshold_floor)
        return thr

    def write_caption_memory(self) -> str:
        """Unique training captions and their text embeddings, for projection before decoding. Grounded:
        every caption cut to each combination of clause kinds, with the kinds recorded per entry, so a frame is
        projected only onto captions its modalities can observe (runtime/backend.py caption(kinds=...))."""
        name = "caption_memory.npz"
        if self.dist.main:
            texts = sorted({caps[0] for caps in self.train.captions if caps})
            if not self.cfg.grounded_captions:
                idx = [self.captions.texts.index(t) for t in texts]
                np.savez(self.out / name, texts=np.array(texts), embeddings=self.captions.emb[idx].astype(np.float16))
                return name
            np.savez_compressed(self.out / name, **grounded_memory(texts, self.vocab, self.embedder))
        return name

    def fit_familiarity(self) -> Optional[dict]:
        """Familiarity statistics of this training data (train: bank; val: threshold) next to the checkpoint."""
        from mmfusion_ros.train.familiarity import fit_from_splits

        if not self.dist.main:
            return None
        try:
            val = load_split(self.cfg.data, "val")
            # a pretrained image tower knows far more than this data: its camera is not judged by it
            mods = ["lidar", "audio", "imu"] if self.tower is not None else None
            return fit_from_splits(self.train, val, self.out, source=f"{self.cfg.data}: train (bank), val (threshold)",
                                   modalities=mods)
        except Exception as e:  # noqa: BLE001 - a bundle without statistics still works (familiarity not assessed)
            self.log(f"familiarity statistics not fitted ({e}); the bundle will report familiarity as not assessed")
            return None

    def fit_calibration(self, checkpoint: Path) -> Optional[dict]:
        """Calibration maps and budgeted event thresholds (train/calibrate.py) of the saved checkpoint on the
        val split; export copies them into the bundle's manifest ("calibration")."""
        from mmfusion_ros.train import calibrate as C
        from mmfusion_ros.train.evaluate import Evaluator

        if not self.dist.main:
            return None
        try:
            val = load_split(self.cfg.data, "val")
            ev = Evaluator(checkpoint, text_cache=self.cfg.text_cache or self.out / "text_cache", threads=self.cfg.threads)
            o, lw = C.collect_weighted(ev, [(val, ev.embed(val), 0)])
            spec = C.add_label_weights(C.fit(o, budget_per_min=float(getattr(self.cfg, "event_false_alarm_budget", 1.0))), lw)
            spec["fitted_on"] = {"sets": [{"data": str(self.cfg.data), "split": "val", "frames": len(val)}],
                                 "frames": len(val), "minutes": round(len(val) * val.frame_step / 60.0, 2)}
            return spec
        except Exception as e:  # noqa: BLE001 - an uncalibrated bundle still works (raw scores, raw thresholds)
            self.log(f"calibration not fitted ({type(e).__name__}: {e}); the bundle will publish raw scores")
            return None

    def fit(self) -> Path:
        t0 = time.time()
        for stage in self.cfg.stages:
            getattr(self, f"stage_{stage}")()
            if stage == "camera" and self.progress.get("camera", 0) >= self.cfg.epochs.get("camera", 0) \
                    and self.tower is None:
                # the starting point of a --supervised-upper-bound run (same camera, text-bound encoders)
                self.save("after_camera.pt", {"progress": {"camera": self.progress["camera"]},
                                              "stage_seconds": {"camera": self.stage_seconds.get("camera", 0.0)}})
        final = self.out / "checkpoint.pt"
        # the final checkpoint is a complete model: every stage has run its configured epochs
        if all(self.progress.get(s, 0) >= self.cfg.epochs.get(s, 0) for s in STAGES):
            if "events" in self.cfg.stages or self.calibrate:
                self.metadata["event_thresholds"] = self.calibrate_event_thresholds()
            self.metadata["caption_memory_file"] = self.write_caption_memory()
            self.metadata["familiarity"] = self.fit_familiarity()
            self.metadata["supervised_upper_bound"] = self.cfg.supervised_upper_bound
            self.metadata["train_samples"] = len(self.train)
            self.metadata["data"] = str(self.cfg.data)
            self.save("checkpoint.pt")
            if "events" in self.cfg.stages or self.calibrate:
                cal = self.fit_calibration(final)
                if cal:
                    self.metadata["calibration"] = cal
                    self.save("checkpoint.pt")
            self.save("last.pt", {"progress": self.progress, "stage_seconds": self.stage_seconds})
        self.log(f"training finished in {time.time() - t0:.0f} s (stage seconds {self.stage_seconds}); checkpoint {final}")
        self.dist.barrier()
        return final

    def close(self) -> None:
        self.dist.close()
