"""Default open-vocabulary prompts: a natural phrasing for each simulator object class."""

from __future__ import annotations

from typing import Dict, List

from mmfusion_ros.core.types import OBJECT_CLASSES

#: class -> prompt; the label the node publishes is the class name, the prompt is what gets embedded.
PROMPT_TEMPLATES: Dict[str, str] = {
    "person": "a person walking nearby",
    "dog": "a dog nearby",
    "car": "a car on the road",
    "bicycle": "a bicycle",
    "traffic_cone": "a traffic cone",
    "box": "a cardboard box on the ground",
    "chair": "a chair",
    "door": "a door",
    "alarm": "an alarm ringing",
}


def default_prompts() -> List[Dict[str, str]]:
    """[{"label": class, "text": phrasing}] in OBJECT_CLASSES order."""
    return [{"label": c, "text": PROMPT_TEMPLATES.get(c, "a " + c.replace("_", " "))} for c in OBJECT_CLASSES]
