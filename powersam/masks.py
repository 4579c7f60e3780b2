"""Compact instance masks: N binary masks of one H×W image as run lengths, never N full-resolution planes.

:class:`CompactMasks` stores each mask as COCO's uncompressed run-length encoding (column-major runs, starting
with a run of zeros: exactly what ``pycocotools.mask.encode`` produces) plus the mask's tight bounding box. A
smooth mask costs a few runs per image column whatever its area, so 100 masks of a 12000×12000 photo take a few MB
instead of 14 GB of ``bool``. Everything a consumer needs works one mask at a time on the mask's box
(:meth:`CompactMasks.crop`): drawing, instance maps, COCO RLE strings (:meth:`CompactMasks.coco_rle`), areas.
:meth:`CompactMasks.to_dense` builds the N×H×W ``bool`` array, the expensive path.

NumPy only (the torch-free runtime uses it); ``pycocotools`` is imported for the COCO string form only.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence, Union

import numpy as np

__all__ = ["CompactMasks", "rle_counts_from_string"]

# Columns encoded per step: bounds the transient of encoding a crop to ~2 bytes × height × this (+ the edges).
_ENCODE_COLUMNS = 1024


def rle_counts_from_string(text: Union[str, bytes]) -> np.ndarray:
    """COCO compressed RLE ``counts`` string → uncompressed counts (uint32), the inverse of ``rleToString``."""
    data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    counts: list[int] = []
    p, n = 0, len(data)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return np.asarray(counts, dtype=np.int64).astype(np.uint32)


class CompactMasks:
    """N binary masks of an H×W image, each as column-major run lengths with its tight box.

    Build one with :meth:`from_dense` (an N×H×W array), :meth:`from_coco` (RLE dicts) or, mask by mask,
    :meth:`append_crop` (a ``bool`` crop and its offset: what the detect pipeline writes, so no full-resolution
    plane is ever allocated). Indexing with an int gives that mask as H×W ``bool``; with a slice, a list or an index
    array, another :class:`CompactMasks`.
    """

    def __init__(self, image_shape: Sequence[int]) -> None:
        height, width = (int(v) for v in image_shape)
        if height < 0 or width < 0:
            raise ValueError(f"image shape must be non-negative; got {(height, width)}")
        self.image_shape: tuple[int, int] = (height, width)
        self._counts: list[np.ndarray] = []
        self._boxes: list[tuple[int, int, int, int]] = []  # (y0, x0, y1, x1), end exclusive; (0, 0, 0, 0) if empty

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(cls, masks: np.ndarray) -> "CompactMasks":
        """N×H×W array (nonzero = inside) → :class:`CompactMasks`."""
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"masks must have shape N×H×W; got shape {masks.shape}")
        out = cls(masks.shape[1:])
        for mask in masks:
            out.append_crop(mask if mask.dtype == np.bool_ else mask != 0, 0, 0)
        return out

    @classmethod
    def from_coco(cls, rles: Sequence[dict], image_shape: Sequence[int]) -> "CompactMasks":
        """COCO RLE dicts (``size`` [H, W], ``counts`` a compressed string/bytes or a list) → :class:`CompactMasks`."""
        out = cls(image_shape)
        for i, rle in enumerate(rles):
            if [int(v) for v in rle["size"]] != list(out.image_shape):
                raise ValueError(f"RLE {i} has size {list(rle['size'])}, not the image's {list(out.image_shape)}")
            counts = rle["counts"]
            counts = (rle_counts_from_string(counts) if isinstance(counts, (str, bytes))
                      else np.asarray(counts, dtype=np.int64))
            out.append_counts(counts)
        return out

    def append_counts(self, counts: np.ndarray) -> None:
        """Add one mask given as uncompressed COCO counts (zeros first, column-major)."""
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        height, width = self.image_shape
        if (counts < 0).any() or int(counts.sum()) != height * width:
            raise ValueError(f"RLE counts must be non-negative and sum to H·W = {height * width}")
        ends = np.cumsum(counts)
        starts, stops = ends[0::2][: len(counts) // 2], ends[1::2]
        keep = stops > starts
        starts, stops = starts[keep], stops[keep]
        self._counts.append(_counts_from_runs(starts, stops, height * width))
        if starts.size == 0:
            self._boxes.append((0, 0, 0, 0))
            return
        first_col, last_col = int(starts[0]) // height, int(stops[-1] - 1) // height
        if np.any(starts // height != (stops - 1) // height):
            y0, y1 = 0, height  # a run crosses a column: it covers the bottom and the top row
        else:
            y0, y1 = int((starts % height).min()), int(((stops - 1) % height).max()) + 1
        self._boxes.append((y0, first_col, y1, last_col + 1))

    def append_crop(self, crop: np.ndarray, y0: int, x0: int) -> None:
        """Add one mask that is zero outside ``crop`` (a ``bool`` array placed at row ``y0``, column ``x0``)."""
        height, width = self.image_shape
        crop = np.asarray(crop, dtype=np.bool_)
        if crop.ndim != 2 or y0 < 0 or x0 < 0 or y0 + crop.shape[0] > height or x0 + crop.shape[1] > width:
            raise ValueError(f"a crop of shape {crop.shape} at ({y0}, {x0}) does not fit a {height}×{width} image")
        starts, stops, box = _crop_runs(crop, y0, x0, height)
        if box is None:
            self._counts.append(np.asarray([height * width], dtype=np.uint32))
            self._boxes.append((0, 0, 0, 0))
            return
        self._counts.append(_counts_from_runs(starts, stops, height * width))
        self._boxes.append(box)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self._counts)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, H, W), the shape of :meth:`to_dense`."""
        return (len(self), *self.image_shape)

    @property
    def nbytes(self) -> int:
        """Bytes held by the run lengths."""
        return sum(c.nbytes for c in self._counts)

    def __repr__(self) -> str:
        return f"CompactMasks(n={len(self)}, image_shape={self.image_shape}, nbytes={self.nbytes})"

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.mask(int(index))
        picked = np.arange(len(self))[index]
        out = CompactMasks(self.image_shape)
        for i in np.atleast_1d(picked).tolist():
            out._counts.append(self._counts[i])
            out._boxes.append(self._boxes[i])
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.mask(i)

    def counts(self, i: int) -> np.ndarray:
        """Uncompressed COCO counts of mask ``i`` (uint32, zeros first, column-major)."""
        return self._counts[self._index(i)]

    def box(self, i: int) -> tuple[int, int, int, int]:
        """Tight box of mask ``i`` as (y0, x0, y1, x1), ends exclusive; (0, 0, 0, 0) for an empty mask."""
        return self._boxes[self._index(i)]

    def empty(self) -> np.ndarray:
        """Which masks hold no pixel at all (bool, N), from the boxes: no decoding."""
        return np.asarray([y1 == y0 for y0, _, y1, _ in self._boxes], dtype=np.bool_)

    def areas(self) -> np.ndarray:
        """Pixels inside each mask (int64, N)."""
        return np.asarray([int(c[1::2].sum(dtype=np.int64)) for c in self._counts], dtype=np.int64)

    def crop(self, i: int) -> tuple[int, int, np.ndarray]:
        """Mask ``i`` on its tight box: ``(y0, x0, bool array (y1-y0)×(x1-x0))`` (0×0 for an empty mask)."""
        i = self._index(i)
        y0, x0, y1, x1 = self._boxes[i]
        hc, wc = y1 - y0, x1 - x0
        if hc == 0:
            return 0, 0, np.zeros((0, 0), dtype=np.bool_)
        height = self.image_shape[0]
        ends = np.cumsum(self._counts[i], dtype=np.int64)
        starts, stops = ends[0::2][: len(ends) // 2], ends[1::2]

        def local(p: np.ndarray) -> np.ndarray:  # image column-major index → crop column-major index
            return (p // height - x0) * hc + (p % height - y0)

        edges = np.zeros(hc * wc + 1, dtype=np.int8)
        edges[local(starts)] += 1
        edges[local(stops - 1) + 1] -= 1
        flat = np.cumsum(edges[:-1], dtype=np.int8).view(np.bool_)
        return y0, x0, np.ascontiguousarray(flat.reshape(wc, hc).T)

    def mask(self, i: int) -> np.ndarray:
        """Mask ``i`` as H×W ``bool`` (one full-resolution plane)."""
        out = np.zeros(self.image_shape, dtype=np.bool_)
        y0, x0, crop = self.crop(i)
        out[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return out

    def to_dense(self, out: Optional[np.ndarray] = None) -> np.ndarray:
        """All masks as N×H×W ``bool``: N full-resolution planes, the expensive path."""
        if out is None:
            out = np.zeros(self.shape, dtype=np.bool_)
        elif out.shape != self.shape or out.dtype != np.bool_:
            raise ValueError(f"out must be bool of shape {self.shape}; got {out.dtype} {out.shape}")
        else:
            out[...] = False
        for i in range(len(self)):
            y0, x0, crop = self.crop(i)
            out[i, y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return out

    def coco_rle(self, i: int) -> dict:
        """Mask ``i`` as COCO compressed RLE ``{"size": [H, W], "counts": str}`` (what ``pycocotools.mask.encode``
        of the dense mask gives, with ``counts`` decoded to ``str``)."""
        from pycocotools import mask as mask_utils  # lazily: only the COCO string form needs it

        height, width = self.image_shape
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": self.counts(i).tolist()}, height, width)
        counts = rle["counts"]
        return {"size": [height, width], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}

    def _index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"mask index {i} out of range for {n} masks")
        return i % n


def _counts_from_runs(starts: np.ndarray, stops: np.ndarray, total: int) -> np.ndarray:
    """Runs of ones [start, stop) in column-major order → COCO counts; runs that touch are merged."""
    starts, stops = np.asarray(starts, dtype=np.int64), np.asarray(stops, dtype=np.int64)
    if starts.size:
        joined = starts[1:] == stops[:-1]  # a run continuing from one column's bottom into the next one's top
        if joined.any():
            starts = np.concatenate([starts[:1], starts[1:][~joined]])
            stops = np.concatenate([stops[:-1][~joined], stops[-1:]])
    edges = np.empty(2 * starts.size + 2, dtype=np.int64)
    edges[0], edges[-1] = 0, total
    edges[1:-1:2], edges[2:-1:2] = starts, stops
    counts = np.diff(edges)
    if counts.size > 1 and counts[-1] == 0:  # ends inside a run of ones: COCO has no trailing zero count
        counts = counts[:-1]
    return counts.astype(np.uint32)


def _crop_runs(crop: np.ndarray, y0: int, x0: int, height: int
               ) -> tuple[np.ndarray, np.ndarray, Optional[tuple[int, int, int, int]]]:
    """Runs of ones of an h×w ``bool`` crop placed at (y0, x0) in an image ``height`` rows tall → ``(starts, stops,
    box)``: int64 column-major image indices [start, stop), in order, not yet merged across columns, and the tight
    box (y0, x0, y1, x1) of the ones (None: the crop is empty).

    Why this shape: a crop of ``k`` columns is copied column by column into one flat buffer ``[0 | col 0 | 0 | col 1
    | 0 | …]`` (one False after every column, one before the first), so a single ``!=`` of the buffer against itself
    shifted by one and one 1-D ``flatnonzero`` find every edge, and the edges alternate start, stop. The 2-D
    ``nonzero`` of an int8 ``diff`` this replaces cost ~10× more on a noisy full-frame mask, and the tight box comes
    from the edges instead of two ``any`` passes. A Fortran-ordered crop (what the upsampling writes) is copied
    contiguously, any other is transposed in the same copy."""
    h, w = crop.shape
    starts, stops = [], []
    r0, r1, c0, c1 = h, 0, w, 0
    for c in range(0, w, _ENCODE_COLUMNS):
        k = min(_ENCODE_COLUMNS, w - c)
        buffer = np.zeros(k * (h + 1) + 1, dtype=np.bool_)
        buffer[1:].reshape(k, h + 1)[:, :h] = crop[:, c : c + k].T  # one image column per row, then its False
        edge = np.flatnonzero(buffer[1:] != buffer[:-1])  # index into the k×(h+1) block of the first changed cell
        if edge.size == 0:
            continue
        col, row = np.divmod(edge, h + 1)
        r0, r1 = min(r0, int(row[0::2].min())), max(r1, int(row[1::2].max()))
        c0, c1 = min(c0, c + int(col[0])), c + int(col[-1]) + 1
        index = (x0 + c + col) * height + y0 + row
        starts.append(index[0::2])
        stops.append(index[1::2])
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), None
    return np.concatenate(starts), np.concatenate(stops), (y0 + r0, x0 + c0, y0 + r1, x0 + c1)
