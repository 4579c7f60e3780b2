"""Interactive SAM on ONNX Runtime: :class:`OnnxSamPredictor`, NumPy twin of :class:`powersam.predictor.SamPredictor`.

Same prompts (original-image pixels), same outputs, same validation. Prompts reach the decoder graph the way SAM's
ONNX export expects them: a box becomes two points labelled 2 and 3, and when there is no box a padding point
(label −1) is appended to clicks, exactly the tokens the PyTorch prompt encoder builds. SAM 2 pairs (metadata
``prompt_order="sam2"``, ``resize_mode="squash"``) get SAM 2's tokens (box corners first, a padding point always),
its squashed S×S input, its high-resolution features, and its single-mask fallback to the most stable multimask
output.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from ..inference.direct_upsample import threshold_low_res_into
from ..inference.prompts import PromptPipeline
from ..inference.timing import StageTimer
from .metadata import HIGH_RES_NAMES
from .preprocess import _resize, preprocess_image, upsample_masks
from .session import GraphSession

__all__ = ["OnnxSamPredictor"]

Size = tuple[int, int]
BOX_CORNER_LABELS = (2.0, 3.0)
PADDING_LABEL = -1.0
# Upsampling intermediates per chunk (as SamPredictor's 256 MB budget).
UPSAMPLE_BUDGET_BYTES = 256 * 2**20


class OnnxSamPredictor(PromptPipeline):
    """Cache one image embedding (encoder graph) and decode masks for any prompts (decoder graph).

    Attributes (read-only): ``is_image_set``, ``original_size``, ``input_size``, ``features`` (1×256×e×e
    embedding), ``multiscale_features`` (RepViT stage maps when the encoder exports them).

    ``set_image``, ``predict`` and ``predict_batch`` are :class:`~powersam.inference.prompts.PromptPipeline`'s, the
    implementation the PyTorch :class:`~powersam.predictor.SamPredictor` shares; this class runs the graphs.
    """

    _IMAGE_STATE_ATTRS = (*PromptPipeline._IMAGE_STATE_ATTRS, "_high_res")  # SAM 2's stride-4/8 features

    def __init__(self, encoder: GraphSession, decoder: GraphSession) -> None:
        for role, session in (("encoder", encoder), ("decoder", decoder)):
            if not hasattr(session, "metadata"):  # a GraphSession or a TensorRT engine session
                raise TypeError(f"the {role} must be a loaded graph session (GraphSession), got {type(session).__name__}; to open files use "
                                "powersam.runtime.load([encoder.onnx, decoder.onnx]) or powersam.load(...)")
        if encoder.metadata.graph != "encoder" or decoder.metadata.graph != "decoder":
            raise ValueError(
                f"expected an encoder and a decoder graph, got {encoder.metadata.graph} and {decoder.metadata.graph}"
            )
        if encoder.metadata.img_size != decoder.metadata.img_size:
            raise ValueError(
                f"encoder ({encoder.metadata.img_size}) and decoder ({decoder.metadata.img_size}) img_size differ"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.metadata = encoder.metadata
        self.img_size = encoder.metadata.img_size
        self.mask_threshold = float(decoder.metadata.mask_threshold)
        self.mask_tokens = list(decoder.metadata.mask_tokens or [])
        self.num_mask_tokens = int(decoder.metadata.num_mask_tokens or len(self.mask_tokens))
        self._mask_size = 4 * int(decoder.metadata.embedding_size or self.img_size // 16)
        self.resize_mode = encoder.metadata.resize_mode or "longest_side"
        self.prompt_order = decoder.metadata.prompt_order or "sam"
        self._needs_high_res = all(name in decoder.input_names for name in HIGH_RES_NAMES)
        self._high_res: tuple[np.ndarray, ...] = ()
        self._warned_clipping = False
        self.reset_image()

    # ------------------------------------------------------------------ image state
    def _encode(self, rgb: np.ndarray, timer: StageTimer) -> None:
        """Backend hook of :meth:`set_image`: preprocess an RGB uint8 image (``timer("preprocess")``) and run the
        encoder graph once (``timer("encoder")``)."""
        with timer("preprocess"):
            x, input_size = preprocess_image(rgb, self.img_size, self.metadata.pixel_mean, self.metadata.pixel_std,
                                             self.resize_mode)
        with timer("encoder"):
            out = self.encoder.run({"image": x})
        stages = tuple(out[name] for name in ("stage1", "stage2", "stage3") if name in out)
        high_res = tuple(out[name] for name in HIGH_RES_NAMES if name in out) or None
        self.set_image_embedding(out["image_embeddings"], rgb.shape[:2], input_size, high_res_features=high_res)
        self._multiscale_features = (*stages, out["image_embeddings"]) if stages else None

    def set_image_embedding(
        self, embedding: np.ndarray, original_size: Sequence[int], input_size: Sequence[int],
        high_res_features: Optional[Sequence[np.ndarray]] = None,
    ) -> None:
        """Use a precomputed 1×C×e×e (or C×e×e) embedding, e.g. the integrated graph's ``image_embeddings``; a SAM 2
        decoder also needs the encoder's ``high_res_features`` (``high_res_feats_0``, ``high_res_feats_1``)."""
        if self._needs_high_res and (high_res_features is None or len(high_res_features) != len(HIGH_RES_NAMES)):
            raise ValueError("this SAM 2 decoder needs the encoder's high_res_features (high_res_feats_0, "
                             "high_res_feats_1) with the embedding")
        embedding = np.asarray(embedding, dtype=np.float32)
        if embedding.ndim == 3:
            embedding = embedding[None]
        grid = self._mask_size // 4
        if embedding.ndim != 4 or embedding.shape[0] != 1 or embedding.shape[2:] != (grid, grid):
            raise ValueError(f"embedding must have shape 1×C×{grid}×{grid}; got shape {embedding.shape}")
        original_size = self._check_size("original_size", original_size)
        input_size = self._check_size("input_size", input_size)
        if max(input_size) > self.img_size:
            raise ValueError(f"input_size {input_size} exceeds the model's img_size {self.img_size}")
        self.reset_image()
        self._embedding = np.ascontiguousarray(embedding)
        if self._needs_high_res:
            self._high_res = tuple(np.ascontiguousarray(f, dtype=np.float32) for f in high_res_features)
        self._original_size, self._input_size = original_size, input_size

    def get_image_embedding(self) -> np.ndarray:
        self._require_image()
        return self._embedding

    # ------------------------------------------------------------------ prediction
    # predict() and predict_batch() are PromptPipeline's (shared with the PyTorch SamPredictor); the hooks below are
    # the graph half.
    def _decode_prompts(
        self,
        boxes: Optional[np.ndarray],
        point_coords: Optional[np.ndarray],
        point_labels: Optional[np.ndarray],
        mask_input: Optional[np.ndarray],
        multimask_output: Union[bool, int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Input-frame prompts (B×4, B×K×2 + B×K, B×1×s×s; any None) → (low-res logits B×C×s×s, scores B×C)."""
        n = next((len(a) for a in (boxes, point_coords, mask_input) if a is not None), 1)
        coords, labels = self._point_prompts(n, boxes, point_coords, point_labels)
        return self._decode(coords, labels, mask_input, multimask_output)

    def _upsample_into(self, low_res: np.ndarray, out: np.ndarray, return_logits: bool) -> None:
        if not return_logits:  # bool masks straight into `out`, as SamPredictor does: no second N×C×H×W array + copy
            square = None if self.resize_mode == "squash" else self.img_size
            threshold_low_res_into(np.asarray(low_res, dtype=np.float32), self._input_size, self._original_size,
                                   square, float(self.mask_threshold), out)
            return
        out[...] = self._upsample(low_res, return_logits)

    def _num_outputs(self, multimask_output: Union[bool, int]) -> int:
        return len(self._select_tokens(multimask_output))

    def low_res_numpy(self, low_res: np.ndarray) -> tuple[np.ndarray, Optional[int]]:
        """K×1×s×s logits → (K×s×s float32, S; None for SAM 2's squashed input), upsampled by ``predict_compact``
        in one composed pass (:mod:`powersam.inference.direct_upsample`)."""
        return np.asarray(low_res, dtype=np.float32)[:, 0], None if self.resize_mode == "squash" else self.img_size

    def input_logits(self, low_res: np.ndarray, input_size: Sequence[int]) -> np.ndarray:
        """K×1×s×s logits → K×h×w float32 logits, the first of :func:`~powersam.runtime.preprocess.upsample_masks`'
        two steps (to the padded S×S input, padding cropped; squashed SAM 2 input: the low-res logits themselves),
        used by ``predict_compact``."""
        stack = np.asarray(low_res, dtype=np.float32)[:, 0]
        if self.resize_mode == "squash":
            return stack
        return _resize(stack, (self.img_size, self.img_size))[:, : int(input_size[0]), : int(input_size[1])]

    def _mask_input_size(self) -> int:
        return self._mask_size

    # ------------------------------------------------------------------ helpers
    def _point_prompts(
        self,
        n: int,
        boxes: Optional[np.ndarray],
        point_coords: Optional[np.ndarray],
        point_labels: Optional[np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Input-frame prompts as labelled points: N×K×2 float32 coords, N×K float32 labels."""
        coords, labels = [], []
        clicks = [] if point_coords is None else [(point_coords, point_labels.astype(np.float64))]
        corners = [] if boxes is None else [(boxes.reshape(n, 2, 2),
                                             np.broadcast_to(np.array(BOX_CORNER_LABELS), (n, 2)))]
        # SAM: clicks, then the box corners, and a padding point only without a box. SAM 2: the corners first,
        # then the clicks, and the padding point whenever there are any points (the corners are points there).
        sam2 = self.prompt_order == "sam2"
        for part_coords, part_labels in (corners + clicks if sam2 else clicks + corners):
            coords.append(part_coords)
            labels.append(part_labels)
        if coords and (sam2 or boxes is None):
            coords.append(np.zeros((n, 1, 2)))
            labels.append(np.full((n, 1), PADDING_LABEL))
        if not coords:
            return np.zeros((n, 0, 2), dtype=np.float32), np.zeros((n, 0), dtype=np.float32)
        return (
            np.concatenate(coords, axis=1).astype(np.float32),
            np.concatenate(labels, axis=1).astype(np.float32),
        )

    def _decode(
        self,
        coords: np.ndarray,
        labels: np.ndarray,
        mask_input: Optional[np.ndarray],
        multimask_output: Union[bool, int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decoder graph on input-frame prompts → (low-res logits B×C×s×s, scores B×C) for the selected tokens."""
        positions = self._select_tokens(multimask_output)
        stable_fallback = positions == [self.mask_tokens.index(0)] and self._stability is not None
        if stable_fallback:  # SAM 2: decide between token 0 and the multimask outputs from all of them
            positions = [self.mask_tokens.index(t) for t in range(self.num_mask_tokens)]
        s = self._mask_size
        feeds = {
            "image_embeddings": self._embedding,
            "point_coords": np.ascontiguousarray(coords, dtype=np.float32),
            "point_labels": np.ascontiguousarray(labels, dtype=np.float32),
            "mask_input": (
                np.zeros((1, 1, s, s), dtype=np.float32) if mask_input is None
                else np.ascontiguousarray(mask_input, dtype=np.float32)
            ),
            "has_mask_input": np.array([0.0 if mask_input is None else 1.0], dtype=np.float32),
            **dict(zip(HIGH_RES_NAMES, self._high_res)),
        }
        out = self.decoder.run(feeds)
        masks, scores = out["masks"][:, positions], out["iou_predictions"][:, positions]
        return self._most_stable(masks, scores) if stable_fallback else (masks, scores)

    @property
    def _stability(self) -> Optional[tuple[float, float]]:
        meta = self.decoder.metadata
        if meta.stability_delta is None or meta.stability_thresh is None:
            return None
        if any(t not in self.mask_tokens for t in range(self.num_mask_tokens)):
            return None  # the graph returns token 0 only: nothing to fall back to (the exporter refuses this)
        return float(meta.stability_delta), float(meta.stability_thresh)

    def _most_stable(self, masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SAM 2's single-mask rule on all tokens B×T: token 0 where its mask is stable (IoU of logits > δ and
        > −δ at least the threshold), else the multimask token with the highest predicted IoU → B×1 each."""
        delta, thresh = self._stability
        flat = masks[:, 0].reshape(len(masks), -1)
        inner, outer = (flat > delta).sum(-1), (flat > -delta).sum(-1)
        stability = np.where(outer > 0, inner / np.maximum(outer, 1), 1.0)
        chosen = np.where(stability >= thresh, 0, scores[:, 1:].argmax(-1) + 1)
        rows = np.arange(len(masks))
        return masks[rows, chosen][:, None], scores[rows, chosen][:, None]

    def _select_tokens(self, multimask_output: Union[bool, int]) -> list[int]:
        """Positions, in the decoder's outputs, of the mask tokens ``multimask_output`` asks for."""
        total = self.num_mask_tokens
        if isinstance(multimask_output, (bool, np.bool_)):
            wanted = list(range(1, total)) if multimask_output else [0]
        elif isinstance(multimask_output, (int, np.integer)) and int(multimask_output) in (1, total - 1, total):
            count = int(multimask_output)
            wanted = [0] if count == 1 else list(range(1, total)) if count == total - 1 else list(range(total))
        else:
            raise ValueError(
                f"multimask_output must be a bool or one of 1, {total - 1}, {total}; got {multimask_output!r}"
            )
        missing = [t for t in wanted if t not in self.mask_tokens]
        if missing:
            raise ValueError(
                f"this decoder graph returns mask tokens {self.mask_tokens} only, not {wanted} "
                f"(multimask_output={multimask_output!r}); re-export it with multimask_output=None for all tokens"
            )
        return [self.mask_tokens.index(t) for t in wanted]

    def _upsample(self, low_res: np.ndarray, return_logits: bool) -> np.ndarray:
        (h, w), (ih, iw), size = self._original_size, self._input_size, self.img_size
        per_prompt = low_res.shape[1] * (size * size + ih * iw + h * w) * 4
        chunk = max(1, UPSAMPLE_BUDGET_BYTES // max(per_prompt, 1))
        threshold = None if return_logits else self.mask_threshold
        return upsample_masks(low_res, self._input_size, self._original_size, size, threshold, chunk,
                              self.resize_mode)

