"""``powersam predict``: segment images, folders, globs and videos; write overlays, COCO results and a summary.

Two modes, chosen by the arguments, and the same code for a PyTorch model and an ONNX file (only the model object
differs):

* **detect** (no prompts): an integrated or decoupled model (or an integrated ONNX file) finds the equipment itself;
  ``conf``, ``iou``, ``max_det`` and ``classes`` apply.
* **prompt** (``--boxes`` and/or ``--points``): the same prompts, in original-image pixels, are applied to every
  image. Each box gives one instance; the points form one prompt (several clicks on one object), or, with boxes,
  are added to every box's prompt. This is the only mode of a plain SAM model; with an integrated model, prompts
  *replace* detection (its detector does not run). Prompted instances have the class ``"object"``; their score is
  SAM's predicted IoU and their box the prompt box (clipped to the image) or, for points only, the mask's box.

Outputs (in ``out_dir``): an overlay ``<stem>.png`` per image and ``<stem>_overlay.mp4`` per video (the processed
frames, written as they come), ``results.json`` (COCO results, written record by record), ``summary.json`` (per-class
counts, failures, throughput) and, with ``save_masks``, ``masks/<stem>.png`` (``masks/<stem>/<frame>.png`` for
videos): an instance-index map, 0 = background, i = the i-th record of that image in ``results.json``.
Category ids are ``label + 1`` (COCO ids start at 1); ``summary.json`` lists them under ``categories``.

A file that cannot be read or processed is reported (stderr and ``summary.json`` ``failures``) and the run goes on.

The command is split along its seams: :mod:`.sources` (expanding files, folders, globs and videos into sources;
parsing prompts), :mod:`.segment` (loading a PyTorch or ONNX model and making the per-image segment function),
:mod:`.outputs` (the per-source loop that writes overlays, masks and ``results.json``, and the summary) and
:mod:`.run` (:func:`predict_sources`); the ``powersam predict`` arguments are :mod:`powersam.cli.predict`'s. Importing this package must not
import torch or OpenCV: the ONNX path runs on edge devices without them.
"""
from __future__ import annotations

from .outputs import format_summary
from .run import predict_sources
from .segment import PROMPT_CLASS_NAMES, SegmentFn, can_detect, is_onnx, load_model, make_segment_fn
from .sources import Source, collect_sources, parse_boxes, parse_points

__all__ = [
    "Source", "collect_sources", "format_summary", "load_model", "make_segment_fn", "parse_boxes", "parse_points",
    "predict_sources",
    # public in the module before it became a package; kept importable from here
    "PROMPT_CLASS_NAMES", "SegmentFn", "can_detect", "is_onnx",
]
