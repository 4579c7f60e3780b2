"""Held-out evaluation on freshly generated substation scenes (the shipped teacher's yardstick).

Scenes come from a stream seed that no training run uses (:data:`HELDOUT_SEED`), so the numbers measure
generalisation to new scenes of the generator, per object size, next to the box-as-mask reference.

    from powersam.eval.scenes import evaluate_on_scenes
    result = evaluate_on_scenes(build_model(checkpoint="synth", img_size=256), count=100)
"""
from __future__ import annotations

from typing import Any, Sequence

from ..data.synth_stream import SceneSpec, render_scenes
from .miou import evaluate_miou
from .reference import box_as_mask_miou

HELDOUT_SEED = 424242  # never a training stream (configs/pretrain uses 1000+)


class SceneSet(list):
    """A list of rendered :class:`~powersam.data.coco.Sample` that evaluation code treats like a dataset."""

    has_masks = True

    def __init__(self, samples: Sequence[Any], class_names: Sequence[str], load_masks: bool = True) -> None:
        super().__init__(samples)
        self.class_names = list(class_names)
        self.load_masks = load_masks  # False: detection evaluation scores boxes only

    @property
    def category_ids(self) -> list[int]:
        """COCO category id of each class (1, 2, …, as the generated datasets number them)."""
        return list(range(1, len(self.class_names) + 1))

    @property
    def image_ids(self) -> list[int]:
        return [sample.image_id for sample in self]


def heldout_scenes(count: int = 100, seed: int = HELDOUT_SEED, spec: SceneSpec = SceneSpec()) -> SceneSet:
    """The first ``count`` scenes of stream ``seed`` (default: the demo's scene settings)."""
    from ..data.synth_scene import SYNTH_CLASSES

    return SceneSet(render_scenes(seed, count, spec), SYNTH_CLASSES)


def evaluate_on_scenes(model: Any, count: int = 100, seed: int = HELDOUT_SEED, spec: SceneSpec = SceneSpec(),
                       prompts: Sequence[str] = ("box", "point"), refine_iters: int = 2,
                       progress: bool = False, zoom: float | None = None) -> dict[str, Any]:
    """:func:`evaluate_miou` on ``count`` held-out scenes, plus ``"box_as_mask"`` for the same instances.

    ``zoom``: decode each box prompt on a crop of that many box sides around it (zoom-in prompting)."""
    scenes = heldout_scenes(count, seed, spec)
    result = evaluate_miou(model, scenes, prompts=prompts, refine_iters=refine_iters, progress=progress, zoom=zoom)
    result["box_as_mask"] = box_as_mask_miou(scenes)
    result["scenes"] = {"count": int(count), "seed": int(seed), "height": spec.height, "width": spec.width,
                        "min_objects": spec.min_objects, "max_objects": spec.max_objects}
    return result


def format_scene_table(result: dict[str, Any], label: str = "model") -> str:
    """Box mIoU overall and per size, with the box-as-mask row and instance counts."""
    sizes = ("small", "medium", "large")
    counts = result["size_counts"]

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.1f}"

    header = "| | all | " + " | ".join(f"{s} ({counts[s]})" for s in sizes) + " |"
    lines = [header, "|---|---|---|---|---|"]
    for key in [k for k in result["miou"] if k.startswith(("box", "point"))]:
        row = [cell(result["miou"][key])] + [cell(result["per_size"][s][key]) for s in sizes]
        lines.append(f"| {label} {key} | " + " | ".join(row) + " |")
    box = result["box_as_mask"]
    lines.append("| the GT box itself as the mask | " + " | ".join(
        [cell(box["miou"])] + [cell(box["per_size"][s]) for s in sizes]) + " |")
    return "\n".join(lines)
