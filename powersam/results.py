"""Detection + segmentation results for one image: export to COCO, summarise, draw."""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from powersam.io import ImageSource, load_image
from powersam.masks import CompactMasks


def class_color(label: int) -> tuple[int, int, int]:
    """Deterministic, well-separated RGB colour for a class index (golden-ratio hue steps)."""
    hue = (0.1 + int(label) * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(red * 255 + 0.5), int(green * 255 + 0.5), int(blue * 255 + 0.5)


MaskData = Union[np.ndarray, CompactMasks]


class Results:
    """Instances found in one image, all in original-image pixels.

    Attributes:
        boxes: N×4 float32 xyxy.
        scores: N float32.
        labels: N int64 class indices into ``class_names``.
        masks: N×H×W bool, or None for box-only results. Results made by ``predict`` hold their masks compactly
            (:class:`~powersam.masks.CompactMasks`: run lengths, see :attr:`compact_masks`); reading ``masks``
            then builds the N×H×W array once and keeps it — the expensive path (100 masks of a 12000×12000
            photo are 14 GB). Prefer :meth:`mask` (one H×W plane), :meth:`mask_crop` (one mask on its box),
            :meth:`mask_areas`, :meth:`to_coco`, :meth:`plot`, and :attr:`has_masks` to test for masks: none of
            them builds all planes. ``masks`` also accepts a :class:`~powersam.masks.CompactMasks`.
        class_names: name of each class index.
        orig_shape: (H, W) of the image.
        image_path: where the image came from, if known.
        speed: milliseconds per pipeline stage (``preprocess``, ``encoder``, …, ``postprocess``) of the call that
            made these results, in the order the stages ran; empty when they were built by hand.
    """

    def __init__(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
        masks: Optional[MaskData],
        class_names: Sequence[str],
        orig_shape: Sequence[int],
        image_path: Optional[Union[str, Path]] = None,
        speed: Optional[dict[str, float]] = None,
    ) -> None:
        self.boxes = boxes
        self.scores = scores
        self.labels = labels
        self.class_names = class_names
        self.orig_shape = orig_shape
        self.image_path = image_path
        self.speed = {} if speed is None else speed
        self._dense: Optional[np.ndarray] = None
        self._compact: Optional[CompactMasks] = None
        self._check()
        self.masks = masks

    def _check(self) -> None:
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

    # ------------------------------------------------------------------ masks
    @property
    def masks(self) -> Optional[np.ndarray]:
        """N×H×W bool (None for box-only results). With compact masks this builds all N planes on first use and
        keeps them: the expensive path (see the class doc for the per-mask alternatives)."""
        if self._dense is None and self._compact is not None:
            self._dense = self._compact.to_dense()
        return self._dense

    @masks.setter
    def masks(self, masks: Optional[MaskData]) -> None:
        n, (height, width) = len(self.boxes), self.orig_shape
        self._dense = self._compact = None
        if masks is None:
            return
        if isinstance(masks, CompactMasks):
            if masks.shape != (n, height, width):
                raise ValueError(f"masks must have shape N×H×W = {(n, height, width)}; got shape {masks.shape}")
            self._compact = masks
            return
        masks = np.asarray(masks)
        if masks.shape != (n, height, width):
            raise ValueError(f"masks must have shape N×H×W = {(n, height, width)}; got shape {masks.shape}")
        self._dense = masks if masks.dtype == np.bool_ else masks > 0

    @property
    def has_masks(self) -> bool:
        """Whether there are masks (``masks is not None`` without building them)."""
        return self._dense is not None or self._compact is not None

    @property
    def compact_masks(self) -> Optional[CompactMasks]:
        """The masks as :class:`~powersam.masks.CompactMasks` (run lengths; encoded from the dense array, once, when
        the results were built with one); None for box-only results."""
        if self._compact is None and self._dense is not None:
            self._compact = CompactMasks.from_dense(self._dense)
        return self._compact

    def mask(self, i: int) -> np.ndarray:
        """Mask of instance ``i`` as H×W bool (one plane; the dense array's row when it exists)."""
        self._require_masks()
        return self._dense[i] if self._dense is not None else self._compact.mask(i)

    def mask_crop(self, i: int) -> tuple[int, int, np.ndarray]:
        """Mask of instance ``i`` on a box that holds all of it: ``(y0, x0, bool array)``, zero outside (a view of
        the dense array, the full plane at (0, 0), when the results hold one)."""
        self._require_masks()
        if self._dense is not None:
            return 0, 0, self._dense[i]
        return self._compact.crop(i)

    def mask_areas(self) -> np.ndarray:
        """Pixels in each mask (int64, N)."""
        self._require_masks()
        if self._dense is not None:
            return self._dense.sum(axis=(1, 2), dtype=np.int64)
        return self._compact.areas()

    @property
    def empty_masks(self) -> np.ndarray:
        """Which instances have a mask without a single pixel (bool, N; all False for box-only results). A detection
        can be confident and still segment nothing at the image's resolution (an object under a pixel, or a mask
        decoder that finds nothing in its box): count these before trusting mask statistics."""
        if self._compact is not None:
            return self._compact.empty()
        if self._dense is not None:
            return ~self._dense.any(axis=(1, 2))
        return np.zeros(len(self), dtype=np.bool_)

    def _require_masks(self) -> None:
        if not self.has_masks:
            raise ValueError("these results have no masks (box-only)")

    def __repr__(self) -> str:
        kind = "none" if not self.has_masks else "dense" if self._dense is not None else "compact"
        return (f"Results(n={len(self)}, orig_shape={self.orig_shape}, masks={kind}, classes={len(self.class_names)}, "
                f"image_path={self.image_path!r})")

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
        if self._dense is not None:
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
            if self._dense is not None:
                # One mask at a time: a Fortran copy of all N masks would double peak memory.
                rle = mask_utils.encode(np.asfortranarray(self._dense[i].astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                record["segmentation"] = rle
            elif self._compact is not None:  # straight from the run lengths: no full-resolution plane
                record["segmentation"] = self._compact.coco_rle(i)
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
        drawn = self._draw(image, alpha, show_boxes, show_labels)
        return drawn if isinstance(drawn, np.ndarray) else np.asarray(drawn)

    def _draw(self, image: ImageSource, alpha: float, show_boxes: bool, show_labels: bool
              ) -> Union[np.ndarray, Image.Image]:
        """:meth:`plot` as an array, or as the PIL image the boxes were drawn on (no extra full-size copy)."""
        canvas = load_image(image).copy()
        if canvas.shape[:2] != self.orig_shape:
            raise ValueError(f"image has size {canvas.shape[:2]} but the results were made for {self.orig_shape}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1]; got {alpha}")
        if self.has_masks:
            levels = np.arange(256, dtype=np.float32)[:, None]
            for i, label in enumerate(self.labels.tolist()):
                y0, x0, mask = self.mask_crop(i)  # one mask, on its box
                region = canvas[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
                color = np.array(class_color(label), dtype=np.float32)
                # The blend of every uint8 level (value · (1 − alpha) + colour · alpha, rounded) as a 256×3 lookup
                # table, applied to the masked pixels in strips of rows: no float copy of the image or the mask box.
                table = np.clip(levels * (1.0 - alpha) + color * alpha + 0.5, 0, 255).astype(np.uint8)
                step = max(1, (4 << 20) // max(1, region.shape[1]))
                for start in range(0, region.shape[0], step):
                    rows, inside = region[start : start + step], mask[start : start + step]
                    for c in range(3):
                        channel = rows[..., c]
                        np.copyto(channel, np.take(table[:, c], channel), where=inside)
        if not len(self) or not (show_boxes or show_labels):
            return canvas

        pil = Image.fromarray(canvas)
        del canvas  # the PIL image holds its own copy
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
        return pil

    def save(self, path: Union[str, Path], image: ImageSource, **plot_kwargs) -> Path:
        """Write :meth:`plot` output to ``path`` (format from the suffix; PNG recommended); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        drawn = self._draw(image, plot_kwargs.pop("alpha", 0.5), plot_kwargs.pop("show_boxes", True),
                           plot_kwargs.pop("show_labels", True), **plot_kwargs)
        (drawn if isinstance(drawn, Image.Image) else Image.fromarray(drawn)).save(path)
        return path
