"""Issue 13's soak: `powersam predict` on a folder of 200 mixed good and bad images in one process.

Every good image gets a result, every bad one is listed by name with its error (exit 1), and the process's resident
memory after the 200 is within a bound of what it was after the first 20 (nothing accumulates per image)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from powersam.checkpoint import save_checkpoint
from powersam.cli import main as cli_main
from powersam.models.zoo import build_model

GOOD, BAD = 180, 20
RSS_GROWTH_BOUND_MIB = 64


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def bad_bytes(index: int) -> bytes:
    """Four kinds of unreadable image file, in turn: empty, text, a truncated PNG, a PNG header alone."""
    png = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(png, format="PNG")
    return [b"", b"not an image\n", png.getvalue()[:60], png.getvalue()[:8]][index % 4]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("soak")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    bad = []
    for i in range(GOOD + BAD):
        name = f"{i:03d}.png"
        if i % ((GOOD + BAD) // BAD) == 5:  # spread through the folder, not bunched at the end
            (images / name).write_bytes(bad_bytes(i))
            bad.append(name)
        else:
            height, width = (int(v) for v in rng.integers(32, 400, size=2))  # masks at these sizes
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(images / name)
    torch.manual_seed(0)
    model = build_model("powersam_s", img_size=64, class_names=["a", "b"])
    save_checkpoint(root / "model.pt", model.state_dict(), "powersam_s", model_config={"img_size": 64},
                    class_names=["a", "b"])
    return images, root / "model.pt", bad


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="RSS read from /proc (Linux)")
def test_predict_on_200_mixed_images_lists_the_bad_and_keeps_memory_flat(folder, tmp_path, capsys):
    images, checkpoint, bad = folder
    assert len(bad) == BAD
    args = ["--checkpoint", str(checkpoint), "--no-progress", "--no-overlay", "--conf", "0.05"]
    first = sorted(images.iterdir())[:20]
    cli_main(["predict", *map(str, first), *args, "--out", str(tmp_path / "first")])
    after_first = rss_mib()
    code = cli_main(["predict", str(images), *args, "--out", str(tmp_path / "all")])
    after_all = rss_mib()
    err = capsys.readouterr().err
    assert code == 1  # bad images make the run fail, after every good one was predicted
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    failures = {Path(f["file"]).name for f in summary["failures"]}
    assert failures == set(bad)
    assert all(f"{name}: " in err for name in bad)
    assert summary["images_processed"] == GOOD
    json.loads((tmp_path / "all" / "results.json").read_text())  # valid COCO results despite the failures
    assert after_all - after_first < RSS_GROWTH_BOUND_MIB, (after_first, after_all)
