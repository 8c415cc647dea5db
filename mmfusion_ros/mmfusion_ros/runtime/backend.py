"""The one interface every inference engine implements (TensorRT, ONNX Runtime, PyTorch).

Subclasses only run a named part on named numpy inputs (`run_part`); input checks, the per-part
helpers and greedy caption decoding live here once, so every backend decodes and validates alike.
"""

from __future__ import annotations

import abc
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mmfusion_ros.core.caption_choice import load_optional as load_presence

from .manifest import BOS, EOS, ENCODER_PARTS, PAD, Manifest

log = logging.getLogger(__name__)

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}
#: Tokens after which decoding joins without a space (word-level vocab; see detokenize).
_NO_SPACE_BEFORE = {".", ",", "!", "?", ";"}


def detokenize(ids: Sequence[int], vocab: Sequence[str]) -> str:
    """Word-level vocab ids -> text; special tokens dropped, punctuation attached to the word before."""
    words = []
    for i in ids:
        i = int(i)
        if i in (PAD, BOS, EOS) or i < 0 or i >= len(vocab):
            continue
        tok = vocab[i]
        if words and tok in _NO_SPACE_BEFORE:
            words[-1] += tok
        else:
            words.append(tok)
    return " ".join(words)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Backend(abc.ABC):
    """Runs the exported model parts of one bundle.

    ``encode``/``fuse``/``events``/``caption`` are what the pipeline calls; ``run_part`` is what a
    new engine implements. Inputs are checked against the manifest (shape, finiteness) so a bad array
    fails here with the part and input named, not deep inside an engine.
    """

    #: short engine name for logs and diagnostics ("onnxruntime", "tensorrt", "torch")
    name: str = "base"

    def __init__(self, manifest: Manifest, text_encoder=None):
        self.manifest = manifest
        # Optional TextEncoder: makes caption confidence the caption-to-input cosine (see caption()).
        self.text_encoder = text_encoder
        self._memory: Optional[np.ndarray] = None  # (M, D) caption memory, loaded on first caption()
        self._memory_kinds: Optional[List[str]] = None  # (M,) clause kinds of each memory entry, when recorded
        self._memory_cut: Optional[List[str]] = None  # (M,) the kinds each entry was cut for (grounded memory)
        self._memory_loaded = False
        self._presence = None  # core/caption_choice.CaptionPresence, when the bundle ships one (loaded with the memory)

    # --- what an engine implements -------------------------------------------------------------
    @abc.abstractmethod
    def run_part(self, part: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run one part on already checked inputs; return {output name: array}."""

    def close(self) -> None:
        """Free sessions / engines / device memory. Safe to call twice."""

    # --- the API the pipeline uses -------------------------------------------------------------
    def encode(self, modality: str, x: np.ndarray) -> np.ndarray:
        """(B, *input shape) preprocessed input -> (B, D) L2-normalised embedding."""
        modality = getattr(modality, "value", modality)
        if modality not in ENCODER_PARTS:
            raise ValueError(f"unknown modality {modality!r}; expected one of {list(ENCODER_PARTS)}")
        part = ENCODER_PARTS[modality]
        (name,) = self.manifest.inputs(part).keys()
        out = self.run(part, {name: x})
        return out["embedding"]

    def fuse(self, tokens: np.ndarray, present: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """tokens (B,4,D), present (B,4) -> fused (B,D), weights (B,4)."""
        out = self.run("fusion", {"tokens": tokens, "present": present})
        return out["fused"], out["weights"]

    def events(self, history: np.ndarray) -> np.ndarray:
        """history (B,T,D) oldest first -> probs (B,E,H)."""
        return self.run("event_head", {"history": history})["probs"]

    def caption(self, embedding: np.ndarray, max_len: Optional[int] = None,
                kinds: Optional[Sequence[str]] = None, tokens: Optional[np.ndarray] = None,
                used: Optional[np.ndarray] = None) -> Tuple[str, float]:
        """Greedy decode of one (D,) embedding -> (text, confidence in [0, 1]).

        When the bundle ships a caption memory, the embedding is first replaced by its nearest entry
        (as the model's evaluation does); confidence is still measured against the input embedding.

        kinds: the caption clause kinds (core/observability.py) the frame's modalities can observe; a memory
        that records each entry's kinds (grounded training) is searched only among entries within them.

        tokens (4,D) / used (4,): the frame's sensor embeddings and which of them its claims rest on; with a
        bundle's caption presence probe, the entry is the probe's pick among the nearest allowed ones
        (core/caption_choice.py), else the nearest.

        Confidence is the cosine between the caption's text embedding and the input embedding (clipped
        to [0, 1]) when a TextEncoder was given: both live in the text space, so it says whether the
        words describe what was sensed. Without one it is the mean probability of the chosen tokens.
        """
        emb = np.asarray(embedding, np.float32).reshape(1, -1)  # (1, D)
        if emb.shape[1] != self.manifest.embed_dim or not np.isfinite(emb).all():
            raise ValueError(f"caption: expected a finite ({self.manifest.embed_dim},) embedding, got {np.shape(embedding)}")
        mem = self.caption_memory()
        query = emb
        max_len = int(max_len or self.manifest["caption_max_len"])
        key = None
        if mem is not None:
            # the decoder was trained on text embeddings: decode the nearest training caption's embedding
            sims = mem @ emb[0]  # (M,)
            allowed = self._memory_allowed(kinds)
            if allowed is not None:
                if not allowed.any():
                    return "", 0.0
                sims = np.where(allowed, sims, -np.inf)
            if self._presence is not None and tokens is not None and used is not None:
                probs = self._presence.probs(np.asarray(tokens, np.float32)[None], np.asarray(used, np.float32))
                idx = int(self._presence.choose(sims[None], probs)[0])
            else:
                idx = int(np.argmax(sims))
            query = mem[idx][None]  # (1, D)
            # greedy decoding of a memory entry is deterministic: decode each entry once (a greedy decode
            # is up to caption_max_len decoder runs, ~10-25 ms on a CPU core; a scene repeats its captions)
            key = (idx, max_len)
            cache = self.__dict__.setdefault("_caption_cache", {})
            hit = cache.get(key)
            if hit is not None:
                return self._caption_result(*hit, emb)
        text, mean_prob = self._greedy_decode(query, max_len)
        if key is not None:
            if len(cache) >= 4096:  # bounded: a memory is a few thousand captions
                cache.clear()
            cache[key] = (text, mean_prob)
        return self._caption_result(text, mean_prob, emb)

    def _caption_result(self, text: str, mean_prob: float, emb: np.ndarray) -> Tuple[str, float]:
        """(text, confidence) for caption(): the text-to-input cosine with a TextEncoder, else ``mean_prob``."""
        if self.text_encoder is not None and text:
            t = self.text_encoder.encode([text])[0]  # (D,)
            e = emb[0] / max(float(np.linalg.norm(emb[0])), 1e-12)
            return text, float(np.clip(np.dot(t, e), 0.0, 1.0))
        return text, mean_prob

    def _greedy_decode(self, query: np.ndarray, max_len: int) -> Tuple[str, float]:
        """(1, D) query -> greedy caption text and the mean probability of its chosen tokens."""
        tok_spec = self.manifest.inputs("caption_decoder")["tokens"]["shape"]
        fixed_len = tok_spec[1] if isinstance(tok_spec[1], int) else None
        ids = [BOS]
        probs = []
        for _ in range(max_len - 1):
            if fixed_len:
                # a decoder exported with a fixed length is causal: pad and read the last real position
                toks = np.full((1, fixed_len), PAD, np.int64)
                toks[0, :len(ids)] = ids
            else:
                toks = np.asarray([ids], np.int64)  # (1, L)
            logits = self.run("caption_decoder", {"embedding": query, "tokens": toks})["logits"]  # (1, L, V)
            step = _softmax(logits[0, len(ids) - 1].astype(np.float64))  # (V,)
            nxt = int(step.argmax())
            probs.append(float(step[nxt]))
            if nxt == EOS:
                break
            ids.append(nxt)
            if fixed_len and len(ids) >= fixed_len:
                break
        return detokenize(ids, self.manifest.vocab), (float(np.mean(probs)) if probs else 0.0)

    def _memory_allowed(self, kinds: Optional[Sequence[str]]) -> Optional[np.ndarray]:
        """(M,) bool: the memory entries a frame observing clause `kinds` may be projected onto; None = all.

        A grounded memory records per entry the kinds it was cut for ("cut"): the frame gets exactly the cut
        for its kinds, as in training. Without "cut", entries whose own kinds lie within `kinds`."""
        self.caption_memory()  # loads the memory and its per-entry kinds on first use
        if kinds is None or self._memory_kinds is None:
            return None
        key = frozenset(kinds)
        cache = self.__dict__.setdefault("_allowed_cache", {})
        if key not in cache:
            if self._memory_cut is not None:
                want = "+".join(sorted(key))
                cache[key] = np.array([c == want for c in self._memory_cut], bool)
            else:
                cache[key] = np.array([set(k.split("+")) <= key if k else False for k in self._memory_kinds], bool)
        return cache[key]

    def caption_memory(self) -> Optional[np.ndarray]:
        """(M, D) float32 unit embeddings of the training captions when the bundle ships them
        (manifest "caption_memory": an .npz with "embeddings"), else None. caption() projects onto it."""
        if not self._memory_loaded:
            self._memory_loaded = True
            name = self.manifest.get("caption_memory")
            if name:
                path = self.manifest.model_dir / str(name)
                try:
                    with np.load(path) as z:
                        mem = np.asarray(z["embeddings"], np.float32)  # (M, D)
                        # "kinds": per entry, its clause kinds joined by "+" (a grounded memory); absent in older bundles
                        self._memory_kinds = [str(k) for k in z["kinds"]] if "kinds" in z else None
                        self._memory_cut = [str(k) for k in z["cut"]] if "cut" in z else None
                except (OSError, KeyError, ValueError) as e:
                    raise ValueError(f"{path}: cannot read the caption memory named in manifest.json: {e}") from e
                if mem.ndim != 2 or mem.shape[1] != self.manifest.embed_dim or len(mem) == 0:
                    raise ValueError(f"{path}: caption memory must be (M, {self.manifest.embed_dim}), got {mem.shape}")
                self._memory = mem / np.maximum(np.linalg.norm(mem, axis=1, keepdims=True), 1e-12)
                self._presence = load_presence(self.manifest.model_dir, self.manifest.get("caption_presence"),
                                               len(mem), self.manifest.embed_dim)
        return self._memory

    # --- shared plumbing -----------------------------------------------------------------------
    def run(self, part: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Check inputs against the manifest, then run the part."""
        return self.run_part(part, self.check_inputs(part, inputs))

    def check_inputs(self, part: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Cast to the manifest dtype and check names, ranks, fixed dims, batch agreement, finiteness."""
        spec = self.manifest.inputs(part)
        if set(inputs) != set(spec):
            raise ValueError(f"{part}: inputs {sorted(inputs)} do not match the model's {list(spec)}")
        out = {}
        batch = None
        for name, io in spec.items():
            a = np.asarray(inputs[name])
            want = io["shape"]
            if a.ndim != len(want):
                raise ValueError(f"{part}.{name}: expected shape {want}, got {a.shape} (did you forget the batch dim?)")
            for d, (have, exp) in enumerate(zip(a.shape, want)):
                if isinstance(exp, int) and have != exp:
                    raise ValueError(f"{part}.{name}: dim {d} is {have}, model expects {exp} (shape {want})")
            if batch is None:
                batch = a.shape[0]
            elif a.shape[0] != batch:
                raise ValueError(f"{part}: batch sizes differ between inputs ({batch} vs {a.shape[0]} for {name})")
            if a.shape[0] == 0 or a.size == 0:
                raise ValueError(f"{part}.{name}: empty input {a.shape}")
            dt = _NP_DTYPES[io["dtype"]]
            if np.issubdtype(dt, np.floating):
                if not np.issubdtype(a.dtype, np.number):
                    raise ValueError(f"{part}.{name}: expected numbers, got dtype {a.dtype}")
                a = np.ascontiguousarray(a, dtype=dt)
                if not np.isfinite(a).all():
                    raise ValueError(f"{part}.{name}: input contains NaN or Inf")
            else:
                if not np.issubdtype(a.dtype, np.integer):
                    raise ValueError(f"{part}.{name}: expected integer token ids, got dtype {a.dtype}")
                a = np.ascontiguousarray(a, dtype=dt)
            out[name] = a
        return out

    def describe(self) -> str:
        """One line for logs: engine and settings."""
        return self.name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
