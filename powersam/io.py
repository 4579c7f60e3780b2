"""Image loading with explicit, documented conversions to H×W×3 uint8 RGB.

Every model entry point in PowerSAM takes what :func:`load_image` accepts, so the conversion rules live
in one place:

* **Paths** (``str`` / ``pathlib.Path``) are decoded with Pillow and the EXIF orientation tag is applied
  (``ImageOps.exif_transpose``), so a phone photo is segmented the way it is displayed. Multi-frame files
  (GIF, TIFF) give their first frame.
* **PIL images** are used as they are: the caller owns their orientation (call ``exif_transpose``
  yourself if you opened the file).
* **NumPy arrays** are assumed to be **RGB** (channel order cannot be detected; pass ``image_format="BGR"``
  to :class:`powersam.predictor.SamPredictor` for OpenCV arrays) and may be H×W, H×W×1, H×W×3 or H×W×4.

Conversions:

* grayscale (H×W, H×W×1, Pillow ``L``/``1``) → the value repeated in R, G and B;
* alpha (RGBA, LA, palette with transparency) → the alpha channel is **dropped**, not composited. This is
  what ``PIL.Image.convert("RGB")`` and ``cv2.imread`` do, so pixels match what annotation tools and
  training pipelines saw; compositing would invent a background colour;
* 16-bit (``uint16`` arrays, Pillow ``I;16*`` modes and ``I`` — the mode older Pillow gives 16-bit PNGs)
  → 8-bit by scaling the **full** 0–65535 range, ``round(v / 257)``. A per-image min–max stretch would make
  the same scene map to different pixel values depending on its content; full-range scaling keeps the
  sensor's intensity scale. (12-bit data stored in 16 bits therefore looks dark — rescale it yourself.)
* float arrays (and Pillow ``F``) must lie in [0, 1] and become ``round(v * 255)``; floats outside that range
  are rejected rather than guessed (a 0–255 float image whose maximum happens to be ≤ 1 would be misread);
* bool arrays → 0 / 255; other integer dtypes must already hold 0–255 values.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = Union[str, Path, Image.Image, np.ndarray]

#: File suffixes (lower case) that :func:`list_images` treats as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

_SIXTEEN_BIT_PIL_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def load_image(source: ImageSource) -> np.ndarray:
    """Load ``source`` as an H×W×3 ``uint8`` RGB array (see the module docstring for the rules).

    An array input that is already H×W×3 uint8 is returned without a copy (as a C-contiguous view).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file cannot be decoded (or its header claims more pixels than Pillow's decompression-bomb
            limit), the array is empty, has the wrong number of dimensions or
            channels, or holds values outside the range its dtype implies.
        TypeError: ``source`` is of an unsupported type or dtype.
    """
    if isinstance(source, (str, Path)):
        return _load_file(Path(source))
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, what="PIL image")
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, what="image array")
    raise TypeError(
        "load_image expects a path (str or pathlib.Path), a PIL.Image.Image or a numpy.ndarray; "
        f"got {type(source).__module__}.{type(source).__name__}"
    )


def list_images(folder_or_glob: Union[str, Path], recursive: bool = False) -> list[Path]:
    """Return the image files named by a folder, a glob pattern or a single file, sorted by path.

    A folder lists the files directly inside it (all levels below with ``recursive=True``) whose suffix is
    in :data:`IMAGE_EXTENSIONS` (case-insensitive). A pattern containing ``*``, ``?`` or ``[`` (and not
    naming an existing path) is expanded with :func:`glob.glob` (``**`` works with ``recursive=True``) and
    filtered the same way. A single file is returned as given, whatever its suffix.

    Raises:
        FileNotFoundError: a folder or file path that does not exist.
    """
    text = str(folder_or_glob)
    if not Path(text).exists() and any(char in text for char in "*?["):
        candidates = [Path(p) for p in glob.glob(text, recursive=recursive)]
    else:
        path = Path(text)
        if path.is_file():
            return [path]
        if not path.is_dir():
            raise FileNotFoundError(f"no such image folder or file: '{path}'")
        candidates = list(path.rglob("*") if recursive else path.iterdir())
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _load_file(path: Path) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"image file not found: '{path}'")
    if path.is_dir():
        raise ValueError(f"expected an image file, got a directory: '{path}'")
    try:
        with Image.open(path) as image:
            image.load()  # decode now so that truncated files fail here, inside the try
            image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as err:  # the header claims more pixels than Pillow will decode
        raise ValueError(f"cannot read image file '{path}': its header claims too many pixels to decode safely "
                         f"({err})") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image file '{path}': {err}") from err
    return _pil_to_rgb(image, what=f"image file '{path}'")


def _pil_to_rgb(image: Image.Image, what: str) -> np.ndarray:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{what} is empty (size {image.width}×{image.height})")
    if image.mode in _SIXTEEN_BIT_PIL_MODES:
        values = np.asarray(image).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(
                f"{what} in Pillow mode '{image.mode}' holds values in [{values.min()}, {values.max()}]; "
                "only 16-bit data (0–65535) is supported for integer modes"
            )
        return _array_to_rgb(values.astype(np.uint16), what=what)
    if image.mode == "F":
        return _array_to_rgb(np.asarray(image), what=what)
    if image.mode != "RGB":
        # Going through RGBA first keeps palette transparency from triggering Pillow's warning;
        # RGBA → RGB then drops the alpha channel, like every other alpha source here.
        if image.mode == "P" or "A" in image.mode:
            image = image.convert("RGBA")
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _array_to_rgb(array: np.ndarray, what: str) -> np.ndarray:
    if array.size == 0:
        raise ValueError(f"{what} is empty (shape {array.shape})")
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        hint = ""
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            hint = " (it looks channels-first; transpose it to H×W×C)"
        raise ValueError(
            f"{what} must have shape H×W, H×W×1, H×W×3 or H×W×4; got shape {array.shape}{hint}"
        )
    array = _to_uint8(array, what)
    channels = array.shape[2]
    if channels == 1:
        array = np.repeat(array, 3, axis=2)
    elif channels == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    dtype = array.dtype
    if dtype == np.uint8:
        return array
    if dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if dtype == np.uint16:
        # round(v / 257) in integer arithmetic: 0 → 0, 65535 → 255.
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"{what} of dtype {dtype} has values in [{low}, {high}]; integer images other than "
                "uint16 must hold 0–255 values (pass 16-bit data as uint16)"
            )
        return array.astype(np.uint8)
    if np.issubdtype(dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{what} of dtype {dtype} contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{what} of dtype {dtype} has values in [{low:g}, {high:g}]; float images must lie in "
                "[0, 1] (convert 0–255 floats with .astype(numpy.uint8))"
            )
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    raise TypeError(f"{what} has unsupported dtype {dtype}; use uint8, uint16, bool or float in [0, 1]")
