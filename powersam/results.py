"""Detection + segmentation results for one image: export to COCO, summarise, draw."""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from powersam.io import ImageSource, load_image


def class_color(label: int) -> tuple[int, int, int]:
    """Deterministic, well-separated RGB colour for a class index (golden-ratio hue steps)."""
    hue = (0.1 + int(label) * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(red * 255 + 0.5), int(green * 255 + 0.5), int(blue * 255 + 0.5)


@dataclass
class Results:
    """Instances found in one image, all in original-image pixels.

    Attributes:
        boxes: N×4 float32 xyxy.
        scores: N float32.
        labels: N int64 class indices into ``class_names``.
        masks: N×H×W bool, or None for box-only results.
        class_names: name of each class index.
        orig_shape: (H, W) of the image.
        image_path: where the image came from, if known.
        speed: milliseconds per pipeline stage (``preprocess``, ``encoder``, …, ``postprocess``) of the call that
            made these results, in the order the stages ran; empty when they were built by hand.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: Optional[np.ndarray]
    class_names: list[str]
    orig_shape: tuple[int, int]
    image_path: Optional[Union[str, Path]] = field(default=None)
    speed: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32)
        if self.boxes.size == 0:
            self.boxes = self.boxes.reshape(0, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels).reshape(-1)
        self.class_names = [str(name) for name in self.class_names]
        height, width = (int(v) for v in self.orig_shape)
        self.orig_shape = (height, width)
        n = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape N×4 (xyxy); got shape {self.boxes.shape}")
        if self.scores.shape != (n,):
            raise ValueError(f"scores must have shape ({n},) to match boxes; got shape {self.scores.shape}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) to match boxes; got shape {self.labels.shape}")
        if n and not np.issubdtype(self.labels.dtype, np.integer):
            raise ValueError(f"labels must be integers; got dtype {self.labels.dtype}")
        self.labels = self.labels.astype(np.int64)
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(
                f"labels must lie in [0, {len(self.class_names)}) (one per class name); "
                f"got range [{self.labels.min()}, {self.labels.max()}]"
            )
        if self.masks is not None:
            masks = np.asarray(self.masks)
            if masks.shape != (n, height, width):
                raise ValueError(f"masks must have shape N×H×W = {(n, height, width)}; got shape {masks.shape}")
            self.masks = masks if masks.dtype == np.bool_ else masks > 0

    @classmethod
    def empty(
        cls,
        orig_shape: Sequence[int],
        class_names: Sequence[str],
        image_path: Optional[Union[str, Path]] = None,
        with_masks: bool = True,
    ) -> "Results":
        """Results with zero instances (masks 0×H×W, or None with ``with_masks=False``)."""
        height, width = (int(v) for v in orig_shape)
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            labels=np.zeros((0,), np.int64),
            masks=np.zeros((0, height, width), np.bool_) if with_masks else None,
            class_names=list(class_names),
            orig_shape=(height, width),
            image_path=image_path,
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def names(self) -> list[str]:
        """Class name of each instance."""
        return [self.class_names[label] for label in self.labels.tolist()]

    def summary(self) -> dict[str, int]:
        """Instance count per class present, in class-index order."""
        counts = np.bincount(self.labels, minlength=len(self.class_names)) if len(self) else []
        return {self.class_names[i]: int(c) for i, c in enumerate(counts) if c > 0}

    def to_coco(
        self,
        image_id: int,
        category_ids: Optional[Union[Sequence[int], Mapping[int, int]]] = None,
    ) -> list[dict]:
        """Instances in the COCO results format (``COCO.loadRes`` / ``COCOeval`` input).

        Each dict has ``image_id``, ``category_id``, ``bbox`` (xywh floats), ``score`` and, when masks are
        present, ``segmentation`` as uncompressed-string RLE (``counts`` is a ``str``, JSON-serialisable).

        Args:
            category_ids: COCO category id per class index (a sequence indexed by label, or a mapping).
                Default: the label itself — pass your annotation file's ids (often 1-based) for evaluation.
        """
        from pycocotools import mask as mask_utils  # imported lazily: only needed for export

        records = []
        for i in range(len(self)):
            label = int(self.labels[i])
            if category_ids is None:
                category_id = label
            else:
                try:
                    category_id = int(category_ids[label])
                except (KeyError, IndexError):
                    raise ValueError(
                        f"category_ids has no entry for label {label} ({self.class_names[label]})"
                    ) from None
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i])
            record = {
                "image_id": int(image_id),
                "category_id": category_id,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(self.scores[i]),
            }
            if self.masks is not None:
                # One mask at a time: a Fortran copy of all N masks would double peak memory.
                rle = mask_utils.encode(np.asfortranarray(self.masks[i].astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                record["segmentation"] = rle
            records.append(record)
        return records

    def plot(
        self,
        image: ImageSource,
        alpha: float = 0.5,
        show_boxes: bool = True,
        show_labels: bool = True,
    ) -> np.ndarray:
        """Draw masks (blended with ``alpha``), boxes and "name score" labels → H×W×3 uint8 RGB copy."""
        canvas = load_image(image).copy()
        if canvas.shape[:2] != self.orig_shape:
            raise ValueError(f"image has size {canvas.shape[:2]} but the results were made for {self.orig_shape}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1]; got {alpha}")
        if self.masks is not None:
            for mask, label in zip(self.masks, self.labels.tolist()):
                color = np.array(class_color(label), dtype=np.float32)
                # Blend only the masked pixels: no full-image float copy per instance.
                blended = canvas[mask].astype(np.float32) * (1.0 - alpha) + color * alpha
                canvas[mask] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        if not len(self) or not (show_boxes or show_labels):
            return canvas

        pil = Image.fromarray(canvas)
        draw = ImageDraw.Draw(pil)
        height, width = self.orig_shape
        line = max(1, round(max(height, width) / 400))
        font = ImageFont.load_default(size=max(10, round(max(height, width) / 60)))
        for box, label, score in zip(self.boxes.tolist(), self.labels.tolist(), self.scores.tolist()):
            color = class_color(label)
            x1, y1, x2, y2 = box
            if show_boxes:
                draw.rectangle([x1, y1, x2, y2], outline=color, width=line)
            if show_labels:
                text = f"{self.class_names[label]} {score:.2f}"
                left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
                text_w, text_h = right - left, bottom - top
                tx = min(max(x1, 0), max(width - text_w - 2, 0))
                ty = y1 - text_h - 2 if y1 - text_h - 2 >= 0 else y1  # above the box, or inside if no room
                draw.rectangle([tx, ty, tx + text_w + 2, ty + text_h + 2], fill=color)
                draw.text((tx + 1 - left, ty + 1 - top), text, fill=(255, 255, 255), font=font)
        return np.asarray(pil)

    def save(self, path: Union[str, Path], image: ImageSource, **plot_kwargs) -> Path:
        """Write :meth:`plot` output to ``path`` (format from the suffix; PNG recommended); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.plot(image, **plot_kwargs)).save(path)
        return path
