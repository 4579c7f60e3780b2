"""Evaluation-side helpers of stage 3: box AP on the validation split during training, and precise BatchNorm
statistics for short runs."""
from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn

from .bbpg_data import BoxDetector

logger = logging.getLogger(__name__)

__all__ = ["BoxAPValidator", "recompute_bn_statistics"]


def recompute_bn_statistics(module: nn.Module, feature_batches: Iterable[Sequence[torch.Tensor]]) -> int:
    """Replace the BatchNorm running statistics of ``module`` by their plain average over ``feature_batches``
    (detectron2's "precise BN"); returns the number of batches used.

    Not in the reference recipe. It matters for short runs: with BN momentum 0.03 the running statistics lag the
    batch statistics for hundreds of iterations, by orders of magnitude when the backbone's features are far
    from unit scale (a random or briefly distilled RepViT), so eval-mode outputs collapse.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    was_training = module.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average = the plain mean over the batches
    module.train()
    count = 0
    try:
        with torch.no_grad():
            for features in feature_batches:
                module(features)
                count += 1
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        module.train(was_training)
    if count == 0:
        raise ValueError("recompute_bn_statistics got no batches")
    return count


class BoxAPValidator:
    """COCO box AP of the encoder + a given box generator on the validation split (rank 0); ``cfg`` is the
    :class:`~powersam.train.bbpg.BBPGConfig` (its ``eval_max_images`` and ``progress``)."""

    def __init__(self, cfg: Any, dataset: Any, encoder: nn.Module, class_names: list[str], model: nn.Module):
        self.cfg, self.dataset = cfg, dataset
        self.encoder, self.class_names, self.model = encoder, class_names, model
        if set(dataset.class_names) != set(class_names):
            logger.warning("class_names differ from the validation set's classes: validation is skipped")
            self.dataset = None

    def __call__(self, box_generator: nn.Module) -> dict[str, Optional[float]]:
        if self.dataset is None:
            return {}
        detector = BoxDetector(self.encoder, box_generator, self.class_names, int(self.model.img_size),
                               self.model.pixel_mean, self.model.pixel_std)
        from ..eval.detection import evaluate_detection

        result = evaluate_detection(detector, self.dataset, max_images=self.cfg.eval_max_images,
                                    progress=self.cfg.progress)
        scores = dict(result["bbox"])
        logger.info("validation: %s", ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if v is not None))
        return scores
