"""Captions written from the ground truth: what is seen, what is heard, how the robot moves.

Several phrasings per instant (templates with varied word order and synonyms), so the text
encoder sees variety; every phrasing names the same facts.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .world import Scene, SimObject

NAME = {"person": "a person", "dog": "a dog", "car": "a car", "bicycle": "a bicycle",
        "traffic_cone": "a traffic cone", "box": "a box", "chair": "a chair", "door": "a door", "alarm": "an alarm"}
MOVE = {"person": "walks", "dog": "runs", "car": "drives", "bicycle": "rides"}
STILL = {"person": "stands", "dog": "sits", "car": "is parked", "bicycle": "is parked", "traffic_cone": "stands",
         "box": "sits", "chair": "stands", "door": "stands", "alarm": "is mounted"}
SOUND = {"person": ["someone talking", "voices and footsteps"], "dog": ["a dog barking", "barking"],
         "car": ["an engine humming", "engine noise"], "bicycle": ["a bicycle bell ringing", "a bell"],
         "traffic_cone": ["a plastic knocking", "knocking"], "box": ["something scraping", "scraping"],
         "chair": ["a chair squeaking", "squeaking"], "door": ["a door creaking and slamming", "a door slam"],
         "alarm": ["an alarm ringing", "an alarm beeping"]}


def _where(x: float, y: float) -> str:
    b = np.degrees(np.arctan2(y, x))
    if abs(b) < 12:
        return "ahead"
    if abs(b) < 90:
        return "ahead on the left" if b > 0 else "ahead on the right"
    return "on the left" if b > 0 else "on the right"


def describe_object(scene: Scene, o: SimObject, t: float) -> str:
    rel = scene.relative(o, [t])
    x, y = rel["xy"][0]
    vo = rel["v_own"][0]
    sp = float(np.hypot(*vo))
    where = _where(x, y)
    if sp > 0.2 and o.cls in MOVE:
        r = max(float(rel["range"][0]), 1e-6)
        toward = -(vo[0] * x + vo[1] * y) / r
        if abs(vo[1]) > 0.7 * sp and x > 0:
            return f"{NAME[o.cls]} {MOVE[o.cls]} across the path {where}"
        if toward > 0.5 * sp:
            src = {"ahead on the left": "the left", "ahead on the right": "the right"}.get(where, where)
            src = src[3:] if src.startswith("on ") else src
            return f"{NAME[o.cls]} {MOVE[o.cls]} toward the robot from {src}"
        return f"{NAME[o.cls]} {MOVE[o.cls]} {'away' if toward < -0.5 * sp else 'past'} {where}"
    return f"{NAME[o.cls]} {STILL[o.cls]} {where}"


def ego_phrase(scene: Scene, t: float) -> str:
    e = scene.ego
    i = int(e.index([t])[0])
    v, w = float(e.v[i]), float(e.w[i])
    if abs(v) < 0.05:
        s = "the robot stands still"
    elif v < 0.5:
        s = "the robot drives slowly"
    elif v < 1.0:
        s = "the robot drives"
    else:
        s = "the robot drives quickly"
    if abs(w) > 0.05 and abs(v) >= 0.05:
        s += " turning left" if w > 0 else " turning right"
    if e.rough[i] and abs(v) >= 0.05:
        s += " over rough ground"
    if any(0.0 <= t - ti < 0.6 for ti, _ in e.impacts):
        s += " and jolts from an impact"
    return s


def captions(scene: Scene, t: float, seen: Sequence[int], heard: Sequence[int], rng: np.random.Generator,
             n: int = 3, collision_with: Optional[int] = None) -> List[str]:
    """n phrasings of the scene at t. seen/heard: track ids, most prominent first (focus first if present);
    collision_with: track id of the object a collision is imminent with, if any."""
    objs: Dict[int, SimObject] = {o.track_id: o for o in scene.objects}
    seen_txt = []
    for k in seen:
        d = describe_object(scene, objs[k], t)
        if d not in seen_txt:  # two alike objects in the same place read as one
            seen_txt.append(d)
    seen_txt = seen_txt[:3]
    heard_cls = []
    for k in heard:
        if objs[k].cls not in heard_cls:
            heard_cls.append(objs[k].cls)
    heard_cls = heard_cls[:2]
    ego = ego_phrase(scene, t)
    if collision_with in objs:
        ego += f", about to hit {NAME[objs[collision_with].cls]}"
    out = []
    for j in range(n):
        snd = " and ".join(SOUND[c][int(rng.integers(2))] for c in heard_cls)
        look = ", ".join(seen_txt[:2] if j == 2 else seen_txt) if seen_txt else "nothing stands out"
        if j % 3 == 0:
            s = f"{look}" + (f" while {snd} can be heard" if snd else "") + f"; {ego}"
        elif j % 3 == 1:
            s = f"{ego}. " + (f"in view: {look}." if seen_txt else "nothing is in view.") + \
                (f" sounds: {snd}." if snd else " it is quiet.")
        else:
            s = (f"you can hear {snd}; " if snd else "it is quiet; ") + f"{look}, and {ego}"
        out.append(s[0].upper() + s[1:])
    return out


_NOUNS_LONGEST_FIRST = sorted(NAME.values(), key=len, reverse=True)  # "a traffic cone" before any shorter prefix


def caption_facts(caption: str) -> Dict[str, List[str]]:
    """The single facts of a caption in the first phrasing's template ("<seen>[ while <heard> can be heard];
    <ego>"): {"seen": one phrase per object in view, "nouns": their bare noun phrases, "heard": the sound
    clause, "ego": the robot's motion}. Training matches sensors to these short texts too, so an embedding
    names each object on its own instead of only the whole combination (which new combinations break)."""
    text = caption[:1].lower() + caption[1:]
    look, _, ego = text.partition("; ")
    look, _, snd = look.partition(" while ")
    seen = [] if look in ("", "nothing stands out") else [p.strip() for p in look.split(", ") if p.strip()]
    nouns = []
    for p in seen:
        noun = next((n for n in _NOUNS_LONGEST_FIRST if p.startswith(n + " ")), None)
        if noun is not None and noun not in nouns:
            nouns.append(noun)
    heard = [snd.strip()] if snd.endswith("can be heard") else []
    return {"seen": seen, "nouns": nouns, "heard": heard, "ego": [ego.strip()] if ego.strip() else []}
