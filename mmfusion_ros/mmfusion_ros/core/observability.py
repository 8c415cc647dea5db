"""Which sensors can observe which kind of claim: the one table every published claim is checked against.

A caption clause, a scene label or a flagged event is published only when a modality that is present,
familiar (its encoder recognises the input) and not dropped can observe it. Training reads the same
table (grounded caption targets, masked event losses), so a new event type or modality is one row here.
Geometric outputs (LiDAR boxes, tracks, time to collision) are not claims of the learned space and are
not gated by it.
"""

from __future__ import annotations

import re
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

#: claim kind -> the sensor modalities that can observe it (names as in core.types.Modality values).
CLAIM_OBSERVERS: Dict[str, FrozenSet[str]] = {
    "objects": frozenset({"camera", "lidar"}),  # things in view: where they are, what they do
    "sounds": frozenset({"audio"}),  # what is heard, and that it is quiet
    "ego": frozenset({"imu"}),  # the robot's own motion, the ground under it, impacts it feels
    "labels": frozenset({"camera", "lidar", "audio"}),  # scene labels name object classes, seen or heard
}

#: event type -> the modalities that can observe it (its onset or its cue) from the model's inputs.
EVENT_OBSERVERS: Dict[str, FrozenSet[str]] = {
    "person_approaching": frozenset({"camera", "lidar"}),
    "crossing_path": frozenset({"camera", "lidar"}),
    "collision_imminent": frozenset({"camera", "lidar"}),
    "alarm_sounding": frozenset({"audio"}),
    "dog_barking": frozenset({"audio"}),
    "robot_impact": frozenset({"imu"}),
    "rough_ground": frozenset({"imu"}),
}


def observable(kind: str, modalities: Iterable[str]) -> bool:
    """True when one of `modalities` can observe claim `kind` (a CLAIM_OBSERVERS key or an event type)."""
    table = CLAIM_OBSERVERS if kind in CLAIM_OBSERVERS else EVENT_OBSERVERS
    if kind not in table:
        raise KeyError(f"observability: no row for claim kind {kind!r}")
    return bool(table[kind] & {str(getattr(m, "value", m)) for m in modalities})


def event_mask(event_types: Sequence[str], modalities: Iterable[str]) -> List[bool]:
    """Per event type, whether `modalities` can observe it (an unknown type is observable by nothing)."""
    mods = {str(getattr(m, "value", m)) for m in modalities}
    return [bool(EVENT_OBSERVERS.get(e, frozenset()) & mods) for e in event_types]


def claim_modalities(kinds: Iterable[str], modalities: Iterable[str]) -> List[str]:
    """The modalities among `modalities` (order kept) that observe at least one of `kinds`."""
    kinds = list(kinds)
    out = []
    for m in modalities:
        name = str(getattr(m, "value", m))
        if any(name in (CLAIM_OBSERVERS.get(k) or EVENT_OBSERVERS.get(k) or ()) for k in kinds):
            out.append(name)
    return out


# ---- caption clauses -------------------------------------------------------------------------------
# The caption grammar (the simulator's three templates, which the decoder reproduces) puts each fact in
# its own clause: "<seen>[ while <heard> can be heard]; <ego>[, about to hit <object>]",
# "<ego>. in view: <seen>. sounds: <heard>." and "you can hear <heard>; <seen>, and <ego>". Written by hand
# because the grammar is this package's own; a clause we cannot place is treated as an object claim (the
# strictest kind that needs a sensor), so an unknown phrasing is never published from the wrong sensor.

_EGO = re.compile(r"^(the robot\b.*)$")
_HIT = re.compile(r"^(the robot\b.*?),\s*(about to hit .+)$")


def caption_clauses(text: str) -> List[Tuple[str, str]]:
    """A caption -> [(kind, clause)] with kind in objects / sounds / ego, in the caption's order."""
    s = text.strip().rstrip(".").strip()
    if not s:
        return []
    s = s[0].lower() + s[1:]
    out: List[Tuple[str, str]] = []
    for piece in re.split(r"(?:\.|;)\s+", s):
        piece = piece.strip().rstrip(".;").strip()
        if not piece:
            continue
        # the decoder's vocabulary has no ":", so "in view: x" may come back as "in view x"
        if re.match(r"in view\b:?", piece):
            out.extend(("objects", o.strip()) for o in re.sub(r"^in view\b:?", "", piece).split(", ") if o.strip())
        elif piece == "nothing is in view" or piece == "nothing stands out":
            out.append(("objects", "nothing stands out"))
        elif re.match(r"sounds\b:?", piece):
            out.append(("sounds", re.sub(r"^sounds\b:?", "", piece).strip()))
        elif piece == "it is quiet":
            out.append(("sounds", ""))
        elif piece.startswith("you can hear "):
            out.append(("sounds", piece[len("you can hear "):].strip()))
        else:
            look, sep, ego = piece.partition(", and the robot")
            if sep:
                out.extend(_split_look(look))
                out.extend(_ego_clauses("the robot" + ego))
            elif _EGO.match(piece):
                out.extend(_ego_clauses(piece))
            else:
                out.extend(_split_look(piece))
    return out


def _split_look(piece: str) -> List[Tuple[str, str]]:
    if " while " not in piece and piece.endswith("can be heard"):  # a sound clause on its own (our rendering)
        return [("sounds", piece[: -len("can be heard")].strip())]
    look, sep, snd = piece.partition(" while ")
    out = [("objects", o.strip()) for o in look.split(", ") if o.strip()]  # one clause per object in view
    if sep:
        snd = snd.strip()
        if snd.endswith("can be heard"):
            snd = snd[: -len("can be heard")].strip()
        out.append(("sounds", snd))
    return out


def _ego_clauses(piece: str) -> List[Tuple[str, str]]:
    m = _HIT.match(piece)
    if m:  # "about to hit a box" names an object: it rests on the sensors that see it
        return [("ego", m.group(1).strip()), ("objects", m.group(2).strip())]
    return [("ego", piece.strip())]


#: Ego phrases whose verb reads as an object's ("stands"): the canonical caption words them as motion.
_EGO_WORDING = {"the robot stands still": "the robot is stationary"}

#: Sound phrases that name their source; a frame that cannot see the source says what is heard, not who.
_SOUND_WITHOUT_SOURCE = {
    "a dog barking": "barking", "a bicycle bell ringing": "a bell ringing", "a chair squeaking": "squeaking",
    "a door creaking and slamming": "creaking and slamming", "a door slam": "a slam",
    "an alarm ringing": "a ringing", "an alarm beeping": "a beeping",
}


def _without_source(heard: str) -> str:
    for phrase in sorted(_SOUND_WITHOUT_SOURCE, key=len, reverse=True):  # longest first: no partial rewrites
        heard = heard.replace(phrase, _SOUND_WITHOUT_SOURCE[phrase])
    return heard


def render_clauses(clauses: Sequence[Tuple[str, str]], sees_objects: bool = True, reword: bool = True) -> str:
    """[(kind, clause)] -> one caption in a fixed order (objects; sounds; ego); '' when there is none.

    sees_objects=False words sounds without the object that makes them (it was heard, not seen);
    reword=False keeps every clause's own words."""
    parts = []
    for kind in CAPTION_KINDS:
        texts = [c for k, c in clauses if k == kind]
        if not texts:
            continue
        if kind == "ego" and reword:
            texts = [_EGO_WORDING.get(t, t) for t in texts]
        if kind == "sounds":
            heard = [t for t in texts if t]
            if not sees_objects:
                heard = [_without_source(h) for h in heard]
            parts.append(" and ".join(heard) + " can be heard" if heard else "it is quiet")
        else:
            parts.append(", ".join(t for t in texts if t))
    s = "; ".join(p for p in parts if p)
    return s[:1].upper() + s[1:]


#: The caption's clause kinds, in rendering order.
CAPTION_KINDS = ("objects", "sounds", "ego")


def observable_kinds(modalities: Iterable[str]) -> List[str]:
    """The caption clause kinds `modalities` can observe, in CAPTION_KINDS order."""
    mods = [str(getattr(m, "value", m)) for m in modalities]
    return [k for k in CAPTION_KINDS if observable(k, mods)]


def select_clauses(text: str, kinds: Iterable[str], reword: bool = True) -> str:
    """The caption rendered with only the clauses of `kinds` ('' when none is left).

    reword=False keeps the caption's own words (training targets: the decoder's vocabulary); True words
    the clauses for publishing (see render_clauses)."""
    kinds = set(kinds)
    # a clause the decoder could not spell (a word outside its vocabulary) is not published
    kept = [(k, c) for k, c in caption_clauses(text) if k in kinds and "<unk>" not in c]
    if not kept:
        return ""
    if not reword:
        return render_clauses(kept, sees_objects=True, reword=False)
    return render_clauses(kept, sees_objects="objects" in kinds)


def grounded_caption(text: str, modalities: Iterable[str]) -> Tuple[str, List[str], List[str]]:
    """Keep only the clauses `modalities` can observe.

    Returns (caption, kinds kept, modalities the kept clauses rest on); ('', [], []) when nothing is left.
    """
    mods = [str(getattr(m, "value", m)) for m in modalities]
    allowed = observable_kinds(mods)
    out = select_clauses(text, allowed)
    if not out:
        return "", [], []
    kinds = sorted({k for k, _ in caption_clauses(text) if k in allowed})
    return out, kinds, claim_modalities(kinds, mods)


def label_modalities(modalities: Iterable[str]) -> List[str]:
    """The modalities among `modalities` that scene labels may rest on."""
    return claim_modalities(["labels"], modalities)


def subset_key(modalities: Optional[Iterable[str]]) -> str:
    """A presence subset as a stable key ('camera+audio'), in model order; '' for the empty set."""
    order = ["camera", "lidar", "audio", "imu"]
    mods = {str(getattr(m, "value", m)) for m in (modalities or ())}
    return "+".join(m for m in order if m in mods)


#: How scene labels combine the sensors: "mean" of the label sensors' embeddings (ImageBind's embedding
#: arithmetic over the modalities that can observe the class), or "fused" (the attention fusion's embedding).
LABEL_FUSIONS = ("mean", "fused")


def label_embedding(tokens: np.ndarray, used: Sequence[str], fused: np.ndarray, method: str = "mean",
                    order: Sequence[str] = ("camera", "lidar", "audio", "imu"),
                    weights: Optional[Mapping[str, float]] = None) -> Optional[np.ndarray]:
    """(..., 4, D) per-sensor embeddings -> (..., D) the embedding scene labels are read from, or None when no
    used modality can observe labels. "mean" averages the used label sensors' embeddings (measured in
    `mmfusion eval` T9: it beats the attention fusion, which leans on the camera and on the IMU's motion cues),
    weighted by `weights` (the bundle's skill weights, fitted by `mmfusion calibrate`: a sensor whose
    embedding names the class no better than chance gets 0) when given; equal weights when none is given or
    every used label sensor's weight is 0. "fused" returns `fused` (..., D)."""
    if method not in LABEL_FUSIONS:
        raise ValueError(f"label fusion must be one of {LABEL_FUSIONS}, got {method!r}")
    mods = label_modalities(used)
    if not mods:
        return None
    if method == "fused":
        return fused
    idx = [list(order).index(m) for m in mods]
    w = np.array([float(weights.get(m, 0.0)) for m in mods] if weights else [], np.float32)
    if not w.sum() > 0:  # no weights, or none for the sensors present: equal
        w = np.ones(len(mods), np.float32)
    e = (np.asarray(tokens, np.float32)[..., idx, :] * (w / w.sum())[:, None]).sum(axis=-2)  # (..., D)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
