"""On-disk cache of teacher image embeddings (spec §5.1), read by stage 1 and stage 2 without a teacher encoder.

Layout of a cache folder:

* ``embeddings.f16`` — a raw float16 array of shape (N, 256, S/16, S/16), C order, one row per image in dataset
  order (``embeddings.f32`` for float32 caches); read through ``numpy.memmap``, never loaded whole;
* ``done.u8`` — N bytes, 1 where the row has been written (the completion record; each rank writes its own
  bytes, so ranks fill disjoint shards of one cache without locking);
* ``index.json`` — image id → row, array shape and dtype, the teacher (model name, checkpoint path and a
  fingerprint of its image-encoder weights), ``img_size``, and the number of completed rows when last built.

Writing order makes a crash cost at most the batch in flight: the rows are written and flushed first, then
their ``done`` bytes. A resumed build skips rows marked done. ``index.json`` is replaced atomically.
Opening a cache made by another teacher, at another ``img_size`` or for other images raises ``ValueError``.
Under DDP (torchrun) every rank encodes rows ``rank::world_size`` of the same cache folder (one machine or a
shared filesystem with coherent memory maps).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..checkpoint import atomic_write
from . import distributed as pdist
from .sam_data import EMBED_STRIDE, SamTrainDataset, check_img_size, collate_sam_batch

logger = logging.getLogger("powersam.train")

CACHE_FORMAT = "powersam.embedding_cache"
CACHE_VERSION = 1
INDEX_NAME = "index.json"
DONE_NAME = "done.u8"
_DATA_NAMES = {"float16": "embeddings.f16", "float32": "embeddings.f32"}
_NP_DTYPES = {"float16": np.float16, "float32": np.float32}


def encoder_fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex) of the image encoder's state dict (names, dtypes, shapes and bytes, in name order).

    Embeddings depend only on the encoder, so a teacher whose decoder was fine-tuned keeps its fingerprint."""
    encoder = getattr(model, "image_encoder", model)
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _dtype_name(dtype: Union[torch.dtype, str]) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DATA_NAMES:
        raise ValueError(f"cache dtype must be float16 or float32; got {dtype!r}")
    return name


class EmbeddingCache:
    """Read access to a cache folder; ``cache[image_id]`` → 256×h×w tensor (the stored dtype).

    Use :meth:`open`. The memory maps are opened lazily per process, so the object can be sent to DataLoader
    workers (it pickles without the data).
    """

    def __init__(self, root: Path, index: dict) -> None:
        self.root = Path(root)
        self.index = index
        self.rows: dict[int, int] = {int(i): r for r, i in enumerate(index["image_ids"])}
        self.embed_shape: tuple[int, ...] = tuple(index["embed_shape"])
        self.dtype_name: str = index["dtype"]
        self._data: Optional[np.memmap] = None
        self._done: Optional[np.memmap] = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls, root: Union[str, Path], teacher_fingerprint: Optional[str] = None, img_size: Optional[int] = None,
    ) -> "EmbeddingCache":
        """Open the cache in ``root``; with ``teacher_fingerprint`` / ``img_size`` given, raise ``ValueError``
        unless the cache was made by that teacher encoder at that input size."""
        root = Path(root)
        index_path = root / INDEX_NAME
        if not index_path.is_file():
            raise FileNotFoundError(f"no embedding cache in {root} ({INDEX_NAME} is missing); build it with "
                                    "`powersam train cache`")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("format") != CACHE_FORMAT:
            raise ValueError(f"{index_path} is not a PowerSAM embedding cache (format={index.get('format')!r})")
        if int(index.get("version", 0)) > CACHE_VERSION:
            raise ValueError(f"{index_path} was written by a newer PowerSAM (version {index['version']})")
        cache = cls(root, index)
        cache.check_compatible(teacher_fingerprint, img_size)
        return cache

    def check_compatible(self, teacher_fingerprint: Optional[str] = None, img_size: Optional[int] = None) -> None:
        """Raise ``ValueError`` naming what differs between this cache and the requested teacher / input size."""
        teacher = self.index.get("teacher", {})
        if teacher_fingerprint is not None and teacher.get("fingerprint") != teacher_fingerprint:
            raise ValueError(
                f"the embedding cache in {self.root} was made with teacher {teacher.get('model_name')!r} "
                f"(checkpoint {teacher.get('checkpoint')}, encoder fingerprint {str(teacher.get('fingerprint'))[:12]}…), "
                f"not the requested teacher (fingerprint {teacher_fingerprint[:12]}…); rebuild it or point to the "
                "matching cache"
            )
        if img_size is not None and int(self.index["img_size"]) != int(img_size):
            raise ValueError(
                f"the embedding cache in {self.root} was made at img_size {self.index['img_size']}, "
                f"but img_size {img_size} was requested"
            )

    # ------------------------------------------------------------------ reading
    def _maps(self) -> tuple[np.memmap, np.memmap]:
        if self._data is None:
            count = len(self.rows)
            self._data = np.memmap(self.root / _DATA_NAMES[self.dtype_name], dtype=_NP_DTYPES[self.dtype_name],
                                   mode="r", shape=(count, *self.embed_shape))
            self._done = np.memmap(self.root / DONE_NAME, dtype=np.uint8, mode="r", shape=(count,))
        return self._data, self._done

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_data"] = state["_done"] = None
        return state

    @property
    def image_ids(self) -> list[int]:
        return [int(i) for i in self.index["image_ids"]]

    @property
    def img_size(self) -> int:
        return int(self.index["img_size"])

    @property
    def teacher(self) -> dict:
        return dict(self.index.get("teacher", {}))

    @property
    def num_completed(self) -> int:
        return int(np.count_nonzero(self._maps()[1]))

    @property
    def is_complete(self) -> bool:
        return self.num_completed == len(self.rows)

    def missing_image_ids(self) -> list[int]:
        done = self._maps()[1]
        return [i for i, r in self.rows.items() if not done[r]]

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, image_id: object) -> bool:
        row = self.rows.get(int(image_id)) if isinstance(image_id, (int, np.integer)) else None
        return row is not None and bool(self._maps()[1][row])

    def get(self, image_id: int) -> torch.Tensor:
        """The 256×h×w embedding of ``image_id`` (a copy; KeyError if absent or not yet written)."""
        row = self.rows.get(int(image_id))
        data, done = self._maps()
        if row is None:
            raise KeyError(f"image id {image_id} is not in the embedding cache {self.root}")
        if not done[row]:
            raise KeyError(f"image id {image_id} has no embedding yet in {self.root} (the build did not finish; "
                           "re-run it to resume)")
        return torch.from_numpy(np.array(data[row]))

    __getitem__ = get

    def __repr__(self) -> str:
        return (f"EmbeddingCache('{self.root}', images={len(self)}, shape={self.embed_shape}, "
                f"dtype={self.dtype_name}, teacher={self.teacher.get('model_name')!r}, img_size={self.img_size})")


# ---------------------------------------------------------------------------------------------- building


def _write_index(root: Path, index: dict) -> None:
    text = json.dumps(index, indent=1).encode("utf-8")
    atomic_write(root / INDEX_NAME, lambda handle: handle.write(text))


def _create(root: Path, index: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    count = len(index["image_ids"])
    shape = (count, *index["embed_shape"])
    # Files are created at full size (sparse where the filesystem allows) before the index points at them.
    np.memmap(root / _DATA_NAMES[index["dtype"]], dtype=_NP_DTYPES[index["dtype"]], mode="w+", shape=shape).flush()
    np.memmap(root / DONE_NAME, dtype=np.uint8, mode="w+", shape=(count,)).flush()
    _write_index(root, index)


def _check_same_images(existing: dict, image_ids: list[int], root: Path) -> None:
    if [int(i) for i in existing["image_ids"]] != image_ids:
        raise ValueError(
            f"the embedding cache in {root} was built for other images ({len(existing['image_ids'])} ids, this "
            f"dataset has {len(image_ids)}); use another out_dir or resume=False to overwrite it"
        )


def build_embedding_cache(
    teacher: Union[nn.Module, str, Path],
    dataset: Any,
    out_dir: Union[str, Path],
    img_size: Optional[int] = None,
    batch_size: int = 8,
    dtype: Union[torch.dtype, str] = torch.float16,
    resume: bool = True,
    *,
    teacher_name: Optional[str] = None,
    device: Optional[Union[str, torch.device]] = None,
    num_workers: int = 0,
    amp: Optional[bool] = None,
    progress: bool = True,
) -> EmbeddingCache:
    """Encode every image of ``dataset`` with the teacher's image encoder and store the embeddings.

    Args:
        teacher: a SAM-call-compatible model, or a checkpoint (PowerSAM format, or an official file together with
            ``teacher_name``), loaded with :func:`powersam.train.teacher.load_teacher`.
        dataset: a :class:`~powersam.data.coco.CocoInstances` (masks are not needed: open it with
            ``load_masks=False``); row order = dataset order.
        out_dir: the cache folder.
        img_size: encoder input size; must equal the teacher's (default: the teacher's).
        batch_size: images per encoder call.
        dtype: float16 (default, as the reference) or float32.
        resume: continue a cache in ``out_dir`` (it must match teacher, img_size, images and dtype); ``False``
            starts it over.
        device: default CUDA (this rank's GPU) when available.
        amp: autocast the teacher in float16; default on CUDA only (the reference ran its teacher under AMP).
    Returns:
        the opened :class:`EmbeddingCache`.
    """
    from .teacher import load_teacher

    if isinstance(teacher, (str, Path)):
        teacher = load_teacher(teacher_name, teacher, img_size=img_size)
    if not isinstance(teacher, nn.Module) or not hasattr(teacher, "image_encoder"):
        raise TypeError(f"teacher must be a SAM-like nn.Module with an image_encoder or a checkpoint path; got {type(teacher).__name__}")
    teacher_size = int(getattr(teacher, "img_size", teacher.image_encoder.img_size))
    img_size = check_img_size(teacher_size if img_size is None else img_size)
    if img_size != teacher_size:
        raise ValueError(f"img_size {img_size} differs from the teacher's input size {teacher_size}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    dtype_name = _dtype_name(dtype)
    info = pdist.get_dist_info(torch.device(device) if device is not None else None)
    device = info.device
    amp = device.type == "cuda" if amp is None else amp
    root = Path(out_dir)

    image_ids = [int(i) for i in dataset.image_ids]
    if not image_ids:
        raise ValueError("the dataset has no images to encode")
    grid = img_size // EMBED_STRIDE
    fingerprint = encoder_fingerprint(teacher)
    index = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "teacher": {
            "model_name": getattr(teacher, "model_name", teacher_name),
            "checkpoint": getattr(teacher, "checkpoint_path", None),
            "fingerprint": fingerprint,
        },
        "img_size": img_size,
        "embed_shape": [int(getattr(getattr(teacher, "prompt_encoder", None), "embed_dim", 256)), grid, grid],
        "dtype": dtype_name,
        "image_ids": image_ids,
        "num_completed": 0,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if info.is_main:
        if (root / INDEX_NAME).is_file() and resume:
            existing = EmbeddingCache.open(root, teacher_fingerprint=fingerprint, img_size=img_size)
            _check_same_images(existing.index, image_ids, root)
            if existing.dtype_name != dtype_name:
                raise ValueError(f"the embedding cache in {root} stores {existing.dtype_name}, not {dtype_name}")
            logger.info("resuming the embedding cache in %s: %d of %d rows done", root, existing.num_completed, len(existing))
        else:
            if (root / INDEX_NAME).is_file():
                logger.warning("overwriting the embedding cache in %s", root)
            _create(root, index)
    pdist.barrier()

    cache = EmbeddingCache.open(root, teacher_fingerprint=fingerprint, img_size=img_size)
    done = np.memmap(root / DONE_NAME, dtype=np.uint8, mode="r+", shape=(len(image_ids),))
    data = np.memmap(root / _DATA_NAMES[dtype_name], dtype=_NP_DTYPES[dtype_name], mode="r+",
                     shape=(len(image_ids), *cache.embed_shape))
    todo = [row for row in range(info.rank, len(image_ids), info.world_size) if not done[row]]
    if todo:
        _encode_rows(teacher, dataset, img_size, todo, data, done, batch_size, device, amp, num_workers,
                     progress and info.is_main)
    del data, done
    pdist.barrier()
    cache = EmbeddingCache.open(root, teacher_fingerprint=fingerprint, img_size=img_size)
    if info.is_main:
        cache.index["num_completed"] = cache.num_completed
        _write_index(root, cache.index)
        if not cache.is_complete:  # only when another rank failed
            logger.warning("embedding cache %s: %d of %d rows are missing", root, len(cache) - cache.num_completed, len(cache))
    return cache


def _encode_rows(
    teacher: nn.Module, dataset: Any, img_size: int, rows: list[int], data: np.memmap, done: np.memmap,
    batch_size: int, device: torch.device, amp: bool, num_workers: int, progress: bool,
) -> None:
    from tqdm.auto import tqdm

    images = SamTrainDataset(dataset, img_size, with_instances=False)
    loader = DataLoader(Subset(images, rows), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_sam_batch)
    encoder = teacher.image_encoder.to(device)
    was_training = encoder.training
    encoder.eval()
    position = 0
    bar = tqdm(total=len(rows), desc="teacher embeddings", unit="img", disable=not progress, leave=False)
    try:
        for batch in loader:
            batch_rows = rows[position : position + len(batch["image"])]
            position += len(batch_rows)
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                embeddings = encoder(batch["image"].to(device))
            data[batch_rows] = embeddings.float().cpu().numpy().astype(data.dtype)
            data.flush()  # rows first, then their done flags: a crash can only lose unflagged rows
            done[batch_rows] = 1
            done.flush()
            bar.update(len(batch_rows))
    finally:
        bar.close()
        encoder.train(was_training)


def ensure_embedding_cache(teacher: nn.Module, dataset: Any, cache_dir: Path, img_size: int, batch_size: int,
                           num_workers: int, rebuild_stale: bool = False) -> EmbeddingCache:
    """Open the teacher-embedding cache for ``dataset``, building (or finishing) it when needed.

    A cache made by another teacher or at another input size is an error naming both, unless ``rebuild_stale``
    (the pipeline's own default cache folder, e.g. a demo re-run after the shipped teacher changed): then it is
    deleted and rebuilt, with a warning. A folder the user named is never deleted."""
    fingerprint = encoder_fingerprint(teacher)
    complete = False
    if (cache_dir / "index.json").is_file():
        try:
            cache = EmbeddingCache.open(cache_dir, teacher_fingerprint=fingerprint, img_size=img_size)
        except ValueError as stale:
            if not rebuild_stale:
                raise
            logger.warning("%s; it is this stage's own cache, so it is rebuilt", stale)
            if pdist.is_main():
                shutil.rmtree(cache_dir)
            pdist.barrier()
        else:
            complete = all(i in cache for i in dataset.image_ids)
    # Every rank must take the same branch: the build is collective under DDP.
    flag = torch.tensor([0.0 if complete else 1.0], device=pdist.get_dist_info().device)
    complete = not bool(pdist.all_reduce_max(flag)[0])
    if complete:
        return cache
    logger.info("building the teacher-embedding cache in %s", cache_dir)
    return build_embedding_cache(teacher, dataset, cache_dir, img_size=img_size, batch_size=batch_size,
                                 resume=True, num_workers=num_workers)


def default_cache_dir(teacher_checkpoint: Union[str, Path], cfg: Any) -> Path:
    """Where stages 1 and 2 (and ``powersam train cache``) look for the cache when none is named: next to the
    teacher checkpoint, one folder per split / input size / image subset, so both stages share it."""
    from ..weights import is_shipped_name

    suffix = "" if getattr(cfg, "max_images", None) is None else f"_first{cfg.max_images}"
    zoom = getattr(cfg, "zoom_context", None)
    if zoom is not None:  # the images plus their zoom-in crops: other ids, another cache
        suffix += f"_zoom{float(zoom[0]):g}-{float(zoom[1]):g}"
    split = cfg.split if cfg.split is not None else "all"
    # a shipped teacher ("synth") lives inside the package: cache in the stage's output folder instead
    folder = Path(cfg.output_dir) if is_shipped_name(teacher_checkpoint) else Path(teacher_checkpoint).parent
    return folder / f"embeddings_{split}_{cfg.img_size}{suffix}"


@dataclass
class EmbedCacheConfig:
    """``powersam train cache`` settings (the dataset fields mean what they mean in the stage configs)."""

    data: Optional[Path] = None
    images_dir: Optional[Path] = None
    split: Optional[str] = "train"
    val_fraction: float = 0.2
    split_seed: int = 0
    max_images: Optional[int] = None
    zoom_context: Optional[tuple[float, float]] = None  # the stages' zoom-in crops (powersam.data.zoom_crops)
    img_size: int = 1024
    teacher_checkpoint: Optional[Path] = None  # stage-0 output (or an official SAM file with teacher_model)
    teacher_model: Optional[str] = None
    cache_dir: Optional[Path] = None  # default: next to the teacher checkpoint (see default_cache_dir)
    batch_size: int = 8
    dtype: str = "float16"
    num_workers: int = 0
    device: Optional[str] = None
