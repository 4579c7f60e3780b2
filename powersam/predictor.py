"""Interactive SAM predictor: encode an image once, then decode masks for any number of prompts.

Works with any SAM-call-compatible model: PowerSAM's own (``model.img_size``) and Meta's
``segment_anything`` ``Sam`` (``model.image_encoder.img_size``). Prompts are given in original-image pixels
(x, y); outputs are NumPy arrays in the original frame.

The predictor never changes the model's state: put the model in eval mode (``model.eval()``) yourself —
as with segment-anything's ``SamPredictor`` — a warning is issued once if it is still in training mode.
All model calls run under ``torch.inference_mode()``, so the cached embedding cannot be used for autograd.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from powersam.inference.direct_upsample import threshold_low_res_into
from powersam.inference.prompts import PromptPipeline, as_finite_float
from powersam.inference.timing import StageTimer
from powersam.transforms import (
    ResizeLongestSide,
    image_to_input_tensor,
    masks_to_original,
    normalize_and_pad,
    postprocess_masks,
    upsample_chunk_size,
)

Size = tuple[int, int]


def _model_img_size(model: torch.nn.Module) -> int:
    return int(getattr(model, "img_size", None) or model.image_encoder.img_size)


def _as_float_array(name: str, value: object) -> np.ndarray:
    return as_finite_float(name, value.detach().cpu() if isinstance(value, torch.Tensor) else value)


class SamPredictor(PromptPipeline):
    """Cache one image embedding and predict masks from point / box / mask prompts.

    Attributes (read-only properties): ``is_image_set``, ``original_size`` (H, W), ``input_size`` (h, w),
    ``features`` (the 1×C×e×e embedding, as in segment-anything), ``multiscale_features`` (the encoder's
    ``forward_multiscale`` tuple when it has one, else None).

    ``set_image``, ``predict`` and ``predict_batch`` are :class:`~powersam.inference.prompts.PromptPipeline`'s, the
    implementation the ONNX Runtime and TensorRT predictors share; this class runs the PyTorch modules.
    """

    _as_float = staticmethod(_as_float_array)  # also accepts tensors

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.img_size = _model_img_size(model)
        self.transform = ResizeLongestSide(self.img_size)
        self._warned_clipping = False
        self._warned_training = False
        self.reset_image()

    # ------------------------------------------------------------------ image state
    @property
    def device(self) -> torch.device:
        device = getattr(self.model, "device", None)
        if isinstance(device, torch.device):
            return device
        pixel_mean = getattr(self.model, "pixel_mean", None)
        if isinstance(pixel_mean, torch.Tensor):
            return pixel_mean.device
        return next(self.model.parameters()).device

    def _encode(self, rgb: np.ndarray, timer: StageTimer) -> None:
        """Backend hook of :meth:`set_image`: preprocess an RGB uint8 image (``timer("preprocess")``) and run the
        image encoder once (``timer("encoder")``)."""
        if getattr(self.model, "image_format", "RGB") == "BGR":
            rgb = np.ascontiguousarray(rgb[..., ::-1])
        self._warn_if_training()

        self.reset_image()
        with torch.inference_mode():
            with timer("preprocess"):
                if getattr(self.model, "resize_mode", "longest_side") == "squash":
                    # SAM 2's own preprocessing: the model squashes the full image to S×S itself, so prompts map
                    # per axis with S/W and S/H and nothing is cropped afterwards.
                    resized = torch.tensor(rgb, device=self.device).permute(2, 0, 1)[None].float()  # copies: rgb may be read-only
                    input_size = (self.img_size, self.img_size)
                else:
                    resized = image_to_input_tensor(rgb, self.img_size, self.device)
                    input_size = (int(resized.shape[-2]), int(resized.shape[-1]))
                if hasattr(self.model, "preprocess"):
                    model_input = self.model.preprocess(resized)
                else:
                    model_input = normalize_and_pad(resized, self.img_size, self.model.pixel_mean,
                                                    self.model.pixel_std)
            with timer("encoder"):
                encoder = self.model.image_encoder
                multiscale = None
                if hasattr(encoder, "forward_multiscale"):
                    multiscale = tuple(encoder.forward_multiscale(model_input))
                    embedding = multiscale[-1]
                else:
                    embedding = encoder(model_input)
        self.set_image_embedding(embedding, rgb.shape[:2], input_size, multiscale_features=multiscale)

    def set_image_embedding(
        self,
        embedding: torch.Tensor,
        original_size: Sequence[int],
        input_size: Sequence[int],
        multiscale_features: Optional[Sequence[torch.Tensor]] = None,
    ) -> None:
        """Use a precomputed embedding (1×C×e×e or C×e×e) instead of running the encoder.

        ``original_size`` is the (H, W) of the image the prompts refer to, ``input_size`` the (h, w) it had
        after resize-longest-side in the model input (before padding). Prompts are mapped with the ratio
        ``input_size / original_size``, so both must describe the same resize.
        """
        if not isinstance(embedding, torch.Tensor):
            raise TypeError(f"embedding must be a torch.Tensor; got {type(embedding).__name__}")
        if embedding.ndim == 3:
            embedding = embedding.unsqueeze(0)
        if embedding.ndim != 4 or embedding.shape[0] != 1:
            raise ValueError(f"embedding must have shape 1×C×h×w (or C×h×w); got shape {tuple(embedding.shape)}")
        expected_hw = getattr(self.model.prompt_encoder, "image_embedding_size", None)
        if expected_hw is not None and tuple(embedding.shape[-2:]) != tuple(expected_hw):
            raise ValueError(
                f"embedding spatial size must be {tuple(expected_hw)} for this model; got {tuple(embedding.shape[-2:])}"
            )
        original_size = self._check_size("original_size", original_size)
        input_size = self._check_size("input_size", input_size)
        if max(input_size) > self.img_size:
            raise ValueError(f"input_size {input_size} exceeds the model's img_size {self.img_size}")
        self.reset_image()
        self._embedding = embedding.to(self.device)
        self._multiscale_features = tuple(multiscale_features) if multiscale_features is not None else None
        self._original_size = original_size
        self._input_size = input_size

    def get_image_embedding(self) -> torch.Tensor:
        """Return the cached 1×C×e×e embedding (C=256, e=64 for SAM at 1024)."""
        self._require_image()
        return self._embedding

    # ------------------------------------------------------------------ prediction
    # predict() and predict_batch() are PromptPipeline's (shared with the ONNX Runtime predictor); the hooks below
    # are the PyTorch half.
    def _decode_prompts(
        self,
        boxes: Optional[np.ndarray],
        point_coords: Optional[np.ndarray],
        point_labels: Optional[np.ndarray],
        mask_input: Optional[np.ndarray],
        multimask_output: Union[bool, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Input-frame NumPy prompts (B×4, B×K×2 + B×K, B×1×s×s; any None) → (low-res logits B×C×s×s, iou B×C)."""
        device = self.device
        box_t = coords_t = labels_t = mask_t = None
        if boxes is not None:
            box_t = torch.as_tensor(boxes, dtype=torch.float32, device=device)
        if point_coords is not None:
            coords_t = torch.as_tensor(point_coords, dtype=torch.float32, device=device)
            labels_t = torch.as_tensor(point_labels, dtype=torch.int, device=device)
        if mask_input is not None:
            mask_t = torch.as_tensor(mask_input, dtype=torch.float32, device=device)
        with torch.inference_mode():
            return self._decode(coords_t, labels_t, box_t, mask_t, multimask_output)

    def _upsample_into(self, low_res: torch.Tensor, out: np.ndarray, return_logits: bool) -> None:
        """Write B×C×H×W masks for B×C×s×s logits into the NumPy array ``out``: bool masks in one composed pass per
        mask, only where it can be set (:mod:`powersam.inference.direct_upsample`: the two-step resize to float
        rounding); float logits by the two-step resize (chunked: 256 MB budget)."""
        if not return_logits:
            square = None if self._resize_mode() == "squash" else self.img_size
            logits = low_res.detach().float().cpu().numpy()
            threshold_low_res_into(logits, self._input_size, self._original_size, square, self._mask_threshold(), out)
            return
        chunk = upsample_chunk_size(low_res.shape[1], self._input_size, self._original_size, self.img_size)
        with torch.inference_mode():
            masks_to_original(
                low_res, self._input_size, self._original_size, self.img_size,
                threshold=self._mask_threshold(), return_logits=return_logits,
                chunk_size=chunk, out=torch.from_numpy(out), resize_mode=self._resize_mode(),
            )

    @staticmethod
    def _to_numpy(array: torch.Tensor) -> np.ndarray:
        return array.float().cpu().numpy()

    @property
    def mask_threshold(self) -> float:
        """Logit above which a pixel is inside the mask (the model's ``mask_threshold``, 0 by default)."""
        return self._mask_threshold()

    def low_res_numpy(self, low_res: torch.Tensor) -> tuple[np.ndarray, Optional[int]]:
        """K×1×s×s logits → (K×s×s float32 NumPy, S; None for SAM 2's squashed input), upsampled by
        ``predict_compact`` in one composed pass (:mod:`powersam.inference.direct_upsample`)."""
        square = None if self._resize_mode() == "squash" else self.img_size
        return low_res[:, 0].detach().float().cpu().numpy(), square

    def input_logits(self, low_res: torch.Tensor, input_size: Sequence[int]) -> np.ndarray:
        """K×1×s×s logits → K×h×w float32 NumPy logits, the first of the two bilinear steps of
        :func:`~powersam.transforms.masks_to_original` (to the padded S×S input on the model's device, padding
        cropped; SAM 2's squashed input: the low-res logits themselves, resized once). The second step, per mask
        and only where it can be set, is :func:`powersam.inference.upsample.upsample_to_original`."""
        with torch.inference_mode():
            logits = low_res.float()
            if self._resize_mode() != "squash":
                logits = F.interpolate(logits, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
                logits = logits[..., : int(input_size[0]), : int(input_size[1])]
            return logits[:, 0].cpu().numpy()

    def predict_torch(
        self,
        point_coords: Optional[torch.Tensor],
        point_labels: Optional[torch.Tensor],
        boxes: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
        multimask_output: Union[bool, int] = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """segment-anything's ``predict_torch``: prompts are tensors already in the **input frame**.

        Args:
            point_coords: B×K×2, point_labels: B×K, boxes: B×4, mask_input: B×1×s×s (any may be None).

        Returns:
            ``(masks B×C×H×W bool or float logits, iou_predictions B×C, low_res_logits B×C×s×s)`` as tensors
            on the model device. The full-size masks are computed at once; use :meth:`predict_batch` for many
            prompts on large images.
        """
        self._require_image()
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        batch = {
            name: value.shape[0]
            for name, value in (("point_coords", point_coords), ("boxes", boxes), ("mask_input", mask_input))
            if value is not None
        }
        if len(set(batch.values())) > 1:
            raise ValueError(f"prompt batch sizes disagree: {batch}")
        with torch.inference_mode():
            low_res, iou = self._decode(point_coords, point_labels, boxes, mask_input, multimask_output)
            masks = postprocess_masks(low_res, self._input_size, self._original_size, self.img_size,
                                      resize_mode=self._resize_mode())
            if not return_logits:
                masks = masks > self._mask_threshold()
        return masks, iou, low_res

    # ------------------------------------------------------------------ helpers
    def _resize_mode(self) -> Optional[str]:
        """``"squash"`` for SAM 2's own preprocessing (masks resized straight back, as Meta's predictor does)."""
        return getattr(self.model, "resize_mode", None)

    def _decode(
        self,
        point_coords: Optional[torch.Tensor],
        point_labels: Optional[torch.Tensor],
        boxes: Optional[torch.Tensor],
        mask_input: Optional[torch.Tensor],
        multimask_output: Union[bool, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder on input-frame prompts → (low-res logits B×C×s×s, iou B×C)."""
        self._warn_if_training()
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return self.model.mask_decoder(
            image_embeddings=self._embedding,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def _mask_input_size(self) -> int:
        size = getattr(self.model.prompt_encoder, "mask_input_size", None)
        if size is not None:
            return int(size[0])
        embedding_hw = getattr(self.model.prompt_encoder, "image_embedding_size", None)
        return 4 * int(embedding_hw[0]) if embedding_hw is not None else self.img_size // 4

    def _num_outputs(self, multimask_output: Union[bool, int]) -> int:
        if isinstance(multimask_output, (bool, np.bool_)):
            return int(getattr(self.model.mask_decoder, "num_multimask_outputs", 3)) if multimask_output else 1
        # EdgeSAM/PowerSAM decoders also take a mask count (1, 3 or 4); the decoder validates it.
        return int(multimask_output)

    def _mask_threshold(self) -> float:
        return float(getattr(self.model, "mask_threshold", 0.0))

    def _warn_if_training(self) -> None:
        if self.model.training and not self._warned_training:
            self._warned_training = True
            warnings.warn(
                "the model is in training mode; call model.eval() before predicting "
                "(SamPredictor does not change the model's state)",
                UserWarning,
                stacklevel=3,
            )
