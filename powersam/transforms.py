"""SAM geometry: resize-longest-side, prompt mapping, input normalisation and mask post-processing.

Frames used throughout PowerSAM:

* **original** — pixels of the image as loaded, size ``original_size = (H, W)``;
* **input** — the image resized so its long side is ``img_size`` (1024 for SAM/PowerSAM), size
  ``input_size = (h, w)`` with ``max(h, w) == img_size``; it sits in the top-left corner of the
  zero-padded ``img_size × img_size`` model input;
* **low-res** — the decoder's mask logits, ``img_size / 4`` square (256×256 at 1024), covering the padded input.

The resize matches segment-anything exactly: sizes are rounded half-up (``int(x + 0.5)``) and images are
resized by Pillow's bilinear filter (which anti-aliases when shrinking), as torchvision does for PIL images.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Size = tuple[int, int]
DeviceLike = Union[torch.device, str, None]


class ResizeLongestSide:
    """Resize images and map prompts so that the long side becomes ``target_length`` (aspect ratio kept)."""

    def __init__(self, target_length: int) -> None:
        if int(target_length) <= 0:
            raise ValueError(f"target_length must be a positive integer; got {target_length}")
        self.target_length = int(target_length)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> Size:
        """Return ``(newh, neww)`` with the long side equal to ``long_side_length``, rounded half-up."""
        if oldh <= 0 or oldw <= 0:
            raise ValueError(f"image size must be positive; got (h, w) = ({oldh}, {oldw})")
        scale = long_side_length * 1.0 / max(oldh, oldw)
        # at least one pixel: a 3×5000 strip at S=256 would otherwise round its short side to 0
        return max(1, int(oldh * scale + 0.5)), max(1, int(oldw * scale + 0.5))

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize an H×W×3 (or H×W) ``uint8`` array with Pillow bilinear → h×w×3 ``uint8``."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                "apply_image expects an H×W×C uint8 numpy array; got "
                f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
            )
        newh, neww = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        resized = Image.fromarray(np.ascontiguousarray(image)).resize((neww, newh), Image.BILINEAR)
        return np.array(resized)  # a writable copy (np.asarray of a PIL image is read-only)

    def apply_coords(self, coords: np.ndarray, original_size: Sequence[int]) -> np.ndarray:
        """Map ``...×2`` (x, y) points from the original frame to the input frame (returns float64)."""
        scale_y, scale_x = self.axis_scales(original_size)
        coords = np.array(coords, dtype=np.float64)  # always a copy
        coords[..., 0] *= scale_x
        coords[..., 1] *= scale_y
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: Sequence[int]) -> np.ndarray:
        """Map B×4 xyxy boxes from the original frame to the input frame (returns float64 B×4)."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """Resize a B×C×H×W float tensor with antialiased bilinear interpolation (close to, not equal to,
        :meth:`apply_image`; the PowerSAM training datasets use this one)."""
        newh, neww = self.get_preprocess_shape(image.shape[-2], image.shape[-1], self.target_length)
        return F.interpolate(image, (newh, neww), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: Sequence[int]) -> torch.Tensor:
        """Torch version of :meth:`apply_coords` (returns a float32 copy on the same device)."""
        scale_y, scale_x = self.axis_scales(original_size)
        coords = coords.to(torch.float32, copy=True)
        coords[..., 0] *= scale_x
        coords[..., 1] *= scale_y
        return coords

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: Sequence[int]) -> torch.Tensor:
        """Torch version of :meth:`apply_boxes` (B×4 → float32 B×4)."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def scale(self, original_size: Sequence[int]) -> float:
        """Nominal resize factor ``target_length / max(H, W)``.

        The exact per-axis factors differ slightly because the output size is rounded (see
        :meth:`axis_scales`); :meth:`apply_coords` / :meth:`apply_boxes` use those."""
        old_h, old_w = int(original_size[0]), int(original_size[1])
        if old_h <= 0 or old_w <= 0:
            raise ValueError(f"image size must be positive; got (h, w) = ({old_h}, {old_w})")
        return self.target_length / max(old_h, old_w)

    def axis_scales(self, original_size: Sequence[int]) -> tuple[float, float]:
        """Exact ``(new_h / H, new_w / W)`` factors of the rounded resize (what prompts are mapped with)."""
        old_h, old_w = int(original_size[0]), int(original_size[1])
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        return new_h / old_h, new_w / old_w


def _as_channel_tensor(values: Union[torch.Tensor, Sequence[float]], device: DeviceLike) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32, device=device).reshape(-1, 1, 1)


def image_to_input_tensor(image: np.ndarray, img_size: int, device: DeviceLike = None) -> torch.Tensor:
    """Resize an H×W×3 ``uint8`` RGB image to the input frame → float tensor 1×3×h×w in 0–255."""
    resized = ResizeLongestSide(img_size).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized), device=device)
    return tensor.permute(2, 0, 1).unsqueeze(0).contiguous().to(torch.float32)


def normalize_and_pad(
    image: torch.Tensor,
    img_size: int,
    pixel_mean: Union[torch.Tensor, Sequence[float]],
    pixel_std: Union[torch.Tensor, Sequence[float]],
) -> torch.Tensor:
    """Normalise a B×3×h×w 0–255 tensor per channel and zero-pad it bottom/right to B×3×S×S (S = img_size).

    The padding is zero *after* normalisation, as in SAM (not the detector's grey 114)."""
    h, w = image.shape[-2:]
    if h > img_size or w > img_size:
        raise ValueError(f"image of size {h}×{w} is larger than img_size {img_size}; resize it first")
    mean = _as_channel_tensor(pixel_mean, image.device)
    std = _as_channel_tensor(pixel_std, image.device)
    image = (image - mean) / std
    return F.pad(image, (0, img_size - w, 0, img_size - h))


def preprocess_image(
    image: np.ndarray,
    img_size: int,
    pixel_mean: Union[torch.Tensor, Sequence[float]],
    pixel_std: Union[torch.Tensor, Sequence[float]],
    device: DeviceLike = None,
) -> tuple[torch.Tensor, Size]:
    """Full SAM preprocessing of an H×W×3 ``uint8`` RGB image.

    Returns:
        ``(tensor 1×3×S×S float32 normalised and zero-padded, input_size (h, w))``.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            "preprocess_image expects an H×W×3 uint8 RGB array (use powersam.io.load_image); got "
            f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        )
    resized = image_to_input_tensor(image, img_size, device)
    input_size = (int(resized.shape[-2]), int(resized.shape[-1]))
    return normalize_and_pad(resized, img_size, pixel_mean, pixel_std), input_size


def _check_logits(low_res_logits: torch.Tensor) -> None:
    if not isinstance(low_res_logits, torch.Tensor) or low_res_logits.ndim != 4:
        raise ValueError(
            "low_res_logits must be a 4-D tensor N×M×h×w; got "
            f"{type(low_res_logits).__name__} of shape {tuple(getattr(low_res_logits, 'shape', ()))}"
        )


def _upsample_chunk(
    logits: torch.Tensor, input_size: Sequence[int], original_size: Sequence[int], img_size: int,
    resize_mode: Optional[str] = None,
) -> torch.Tensor:
    original = (int(original_size[0]), int(original_size[1]))
    if resize_mode == "squash":  # SAM 2's predictor: nothing padded, one bilinear step to the original size
        return F.interpolate(logits.float(), original, mode="bilinear", align_corners=False)
    # Upsample to the padded input square first so the crop removes exactly the padded area, then go to
    # the original size; two bilinear steps, like segment-anything, so results match it bit for bit.
    logits = F.interpolate(logits.float(), (img_size, img_size), mode="bilinear", align_corners=False)
    logits = logits[..., : int(input_size[0]), : int(input_size[1])]
    return F.interpolate(logits, original, mode="bilinear", align_corners=False)


def postprocess_masks(
    low_res_logits: torch.Tensor,
    input_size: Sequence[int],
    original_size: Sequence[int],
    img_size: int,
    chunk_size: Optional[int] = None,
    resize_mode: Optional[str] = None,
) -> torch.Tensor:
    """Upsample N×M×h×w low-res logits to float logits N×M×H×W in the original frame (``resize_mode="squash"``:
    SAM 2's single resize of a squashed input).

    ``chunk_size`` processes that many prompts (first dimension) at a time, which bounds the
    ``img_size²`` intermediate; the N×M×H×W float32 output itself is always allocated — use
    :func:`masks_to_original` when only binary masks are needed.
    """
    _check_logits(low_res_logits)
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive or None; got {chunk_size}")
    n = low_res_logits.shape[0]
    if chunk_size is None or n <= chunk_size:
        return _upsample_chunk(low_res_logits, input_size, original_size, img_size, resize_mode)
    shape = (n, low_res_logits.shape[1], int(original_size[0]), int(original_size[1]))
    out = low_res_logits.new_empty(shape, dtype=torch.float32)
    for start in range(0, n, chunk_size):
        out[start : start + chunk_size] = _upsample_chunk(
            low_res_logits[start : start + chunk_size], input_size, original_size, img_size, resize_mode
        )
    return out


def upsample_chunk_size(
    num_masks: int,
    input_size: Sequence[int],
    original_size: Sequence[int],
    img_size: int,
    budget_bytes: int = 256 * 2**20,
) -> int:
    """Largest number of prompts whose float32 upsampling intermediates (see :func:`masks_to_original`)
    fit in ``budget_bytes`` (at least 1)."""
    per_prompt = num_masks * (img_size * img_size + int(input_size[0]) * int(input_size[1])
                              + int(original_size[0]) * int(original_size[1])) * 4
    return max(1, budget_bytes // max(per_prompt, 1))


def masks_to_original(
    low_res_logits: torch.Tensor,
    input_size: Sequence[int],
    original_size: Sequence[int],
    img_size: int,
    threshold: float = 0.0,
    return_logits: bool = False,
    chunk_size: int = 16,
    output_device: DeviceLike = None,
    out: Optional[torch.Tensor] = None,
    resize_mode: Optional[str] = None,
) -> torch.Tensor:
    """Upsample N×M×h×w low-res logits to the original frame a chunk of prompts at a time.

    Returns ``logits > threshold`` as a bool tensor N×M×H×W (or float32 logits if ``return_logits``),
    allocated on ``output_device`` (default: the device of ``low_res_logits``), or written into ``out``
    (e.g. ``torch.from_numpy`` of a preallocated array) when given. Writing each chunk into the output —
    on the CPU even while the logits live on a GPU — bounds peak memory to

        output:     N·M·H·W bytes (bool) — or ×4 with return_logits
        transient:  chunk_size·M·(S² + h·w + H·W)·4 bytes of float32 (S = img_size, (h, w) = input_size)
                    + chunk_size·M·H·W bytes for the thresholded chunk

    e.g. 100 boxes on a 6000×4000 image with chunk 16: 2.4 GB of bool output + ≈2 GB transient, instead
    of ≈10 GB for 100 float masks at once. (Measured on CPU: 30 boxes on 4000×3000 through
    ``SamPredictor.predict_batch``, which uses a 256 MB budget, raised peak RSS by ≈0.73 GB for 0.34 GB of
    output.) :func:`upsample_chunk_size` picks a chunk for a memory budget.
    """
    _check_logits(low_res_logits)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}")
    n, m = low_res_logits.shape[:2]
    shape = (n, m, int(original_size[0]), int(original_size[1]))
    dtype = torch.float32 if return_logits else torch.bool
    if out is None:
        device = low_res_logits.device if output_device is None else torch.device(output_device)
        out = torch.empty(shape, dtype=dtype, device=device)
    elif tuple(out.shape) != shape or out.dtype != dtype:
        raise ValueError(f"out must be a {dtype} tensor of shape {shape}; got {out.dtype} {tuple(out.shape)}")
    for start in range(0, n, chunk_size):
        logits = _upsample_chunk(low_res_logits[start : start + chunk_size], input_size, original_size, img_size,
                                 resize_mode)
        out[start : start + chunk_size] = (logits if return_logits else logits > threshold).to(out.device)
    return out
