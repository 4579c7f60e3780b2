"""Tests for the synthetic substation dataset generator (powersam.data.synth)."""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from powersam.data import synth, synth_scene
from powersam.cli.data import add_synth_arguments, run_synth
from powersam.data.synth import SYNTH_CLASSES, generate_dataset, render_scene
from powersam.data.synth_shapes import CLUTTER, DRAWERS, EMPTY, Sprite

# pycocotools' decoder trips numpy 2's __array__(copy=...) deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _read_dataset(root: Path) -> tuple[dict, dict[int, np.ndarray]]:
    coco = json.loads((root / "annotations.json").read_text())
    pixels = {im["id"]: np.asarray(Image.open(root / "images" / im["file_name"])) for im in coco["images"]}
    return coco, pixels


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 images at the default size, shared by the COCO validity and class coverage tests."""
    return generate_dataset(tmp_path_factory.mktemp("synth") / "set", 60, seed=7)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", 6, seed=3, image_size=(96, 128))
    b = generate_dataset(tmp_path / "b", 6, seed=3, image_size=(96, 128))
    c = generate_dataset(tmp_path / "c", 6, seed=4, image_size=(96, 128))
    assert (a / "annotations.json").read_bytes() == (b / "annotations.json").read_bytes()
    coco_a, pix_a = _read_dataset(a)
    _, pix_b = _read_dataset(b)
    coco_c, pix_c = _read_dataset(c)
    assert all(np.array_equal(pix_a[i], pix_b[i]) for i in pix_a)
    assert not any(np.array_equal(pix_a[i], pix_c[i]) for i in pix_a)
    assert coco_a["annotations"] != coco_c["annotations"]


def test_split_is_a_subfolder_with_its_own_images(tmp_path: Path) -> None:
    train = generate_dataset(tmp_path, 3, seed=0, image_size=64, split="train")
    val = generate_dataset(tmp_path, 3, seed=0, image_size=64, split="val")  # same out_dir: allowed per split
    assert train == tmp_path / "train" and val == tmp_path / "val"
    _, pix_t = _read_dataset(train)
    _, pix_v = _read_dataset(val)
    assert not any(np.array_equal(pix_t[i], pix_v[i]) for i in pix_t)


def test_image_i_does_not_depend_on_dataset_length(tmp_path: Path) -> None:
    short = generate_dataset(tmp_path / "short", 2, seed=5, image_size=(64, 80))
    long = generate_dataset(tmp_path / "long", 4, seed=5, image_size=(64, 80))
    assert (short / "images" / "000002.png").read_bytes() == (long / "images" / "000002.png").read_bytes()


def test_render_scene_deterministic_for_a_generator_seed() -> None:
    img1, masks1 = render_scene(np.random.default_rng(11), 80, 96)
    img2, masks2 = render_scene(np.random.default_rng(11), 80, 96)
    assert np.array_equal(img1, img2)
    assert [c for c, _ in masks1] == [c for c, _ in masks2]
    assert all(np.array_equal(m1, m2) for (_, m1), (_, m2) in zip(masks1, masks2))


def test_coco_annotations_are_valid_and_exact(default_set: Path) -> None:
    coco_api = COCO(str(default_set / "annotations.json"))
    coco, pixels = _read_dataset(default_set)
    cat_ids = {c["id"] for c in coco["categories"]}
    assert [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])] == SYNTH_CLASSES
    assert len(coco["images"]) == 60 and len(coco_api.getAnnIds()) == len(coco["annotations"])
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for im in coco["images"]:
        assert pixels[im["id"]].shape == (im["height"], im["width"], 3) == (384, 512, 3)
        anns = coco_api.loadAnns(coco_api.getAnnIds(imgIds=im["id"]))
        assert 2 <= len(anns) <= 8
        union = np.zeros((im["height"], im["width"]), np.int32)
        for ann in anns:
            assert ann["category_id"] in cat_ids and ann["iscrowd"] == 0
            assert isinstance(ann["segmentation"]["counts"], str)
            m = coco_api.annToMask(ann).astype(bool)
            assert m.sum() == ann["area"] >= 12
            ys, xs = np.nonzero(m)
            tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == [float(v) for v in tight]
            assert np.allclose(mask_utils.toBbox(ann["segmentation"]), ann["bbox"])
            union += m
        assert union.max() <= 1, f"instance masks overlap in image {im['id']}"


def test_every_class_appears_in_sixty_images(default_set: Path) -> None:
    coco = json.loads((default_set / "annotations.json").read_text())
    counts = np.bincount([a["category_id"] for a in coco["annotations"]], minlength=len(SYNTH_CLASSES) + 1)[1:]
    assert counts.min() >= 5, dict(zip(SYNTH_CLASSES, counts.tolist()))
    assert counts.max() <= 6 * counts.min(), dict(zip(SYNTH_CLASSES, counts.tolist()))


def test_masks_are_exactly_the_visible_pixels_of_each_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paint every (sprite, owner) in its own code colour on a flat background, without haze or camera effects:
    each mask must be exactly the pixels showing its code, clutter must stay unlabelled, and no pixel of a
    labelled-class owner may remain unlabelled (dropped instances are repainted away)."""
    background_rgb = np.array([3, 251, 7], np.uint8)
    calls = iter(range(1, 10_000))
    real_shade, real_make_layer = synth_scene.shade, synth_scene._make_layer

    def coded_shade(ids, tables, *args):
        _, owner = real_shade(ids, tables, *args)
        code = next(calls) * 8 + owner.astype(np.int64) + 2  # code % 8 == 1 marks clutter
        rgb = np.stack([code % 256, code // 256, np.full_like(code, 77)]).astype(np.float32)
        rgb[:, owner == EMPTY] = 0.0
        return rgb, owner

    monkeypatch.setattr(synth_scene, "shade", coded_shade)
    created = []

    def hazeless_layer(rng, scene, *args):
        layer = real_make_layer(rng, dataclasses.replace(scene, haze=0.0), *args)
        created.append(len(layer.classes))
        return layer

    monkeypatch.setattr(synth_scene, "_make_layer", hazeless_layer)
    monkeypatch.setattr(synth_scene, "_background", lambda rng, scene, overcast: np.broadcast_to(
        background_rgb.astype(np.float32).reshape(3, 1, 1), (3, scene.height, scene.width)).copy())
    monkeypatch.setattr(synth_scene, "_postprocess", lambda rng, image: image.astype(np.uint8).transpose(1, 2, 0))
    dropped = 0
    for seed in range(40):  # crowded small scenes, so that some instances get hidden and dropped
        created.clear()
        image, masks = render_scene(np.random.default_rng(seed), 96, 128, 5, 8)
        assert 5 <= len(masks) <= 8
        dropped += sum(created) - len(masks)
        painted = image[..., 2] == 77
        assert (image[~painted] == background_rgb).all()
        code = image[..., 0].astype(np.int64) + 256 * image[..., 1].astype(np.int64)
        labelled = np.zeros(painted.shape, bool)
        for _, m in masks:
            values = np.unique(code[m])
            assert values.size == 1 and values[0] % 8 != 1 and painted[m].all()
            assert np.array_equal(m, painted & (code == values[0]))
            labelled |= m
        assert np.array_equal(labelled, painted & (code % 8 != 1))
    assert dropped > 0, "the scenes should exercise dropping hidden instances"


@pytest.mark.parametrize("name", sorted(DRAWERS))
def test_each_drawer_labels_its_class_and_keeps_supports_unlabelled(name: str) -> None:
    sprite = Sprite()
    DRAWERS[name](sprite, np.random.default_rng(1), 20.0, 3)
    ids, _ = sprite.rasterize()
    owner = sprite.tables()["owner"][ids]
    assert sprite.owner_classes[0] == name
    assert set(sprite.owner_classes) <= set(SYNTH_CLASSES)
    assert (owner == 0).sum() > 20
    assert set(np.unique(owner)) <= {EMPTY, CLUTTER, *range(len(sprite.owner_classes))}
    if name in ("post_insulator", "surge_arrester", "instrument_transformer", "disconnector", "bushing"):
        assert (owner == CLUTTER).any(), "equipment on a support should have an unlabelled support"


def test_refuses_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_dataset(tmp_path, 1, image_size=48)
    assert not (tmp_path / "images").exists()
    generate_dataset(tmp_path, 2, image_size=48, overwrite=True)
    generate_dataset(tmp_path, 1, image_size=48, overwrite=True)  # replaces the old images
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["000001.png"]
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    file_path = tmp_path / "plain_file"
    file_path.write_text("x")
    with pytest.raises(NotADirectoryError):
        generate_dataset(file_path, 1, image_size=48)


def test_small_odd_and_square_sizes(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "odd", 5, seed=1, image_size=(97, 131))
    coco, pixels = _read_dataset(root)
    assert all(im["height"] == 97 and im["width"] == 131 for im in coco["images"])
    assert all(p.shape == (97, 131, 3) for p in pixels.values())
    assert all(a["segmentation"]["size"] == [97, 131] for a in coco["annotations"])
    root = generate_dataset(tmp_path / "square", 2, seed=1, image_size=40, min_objects=1, max_objects=2)
    coco, pixels = _read_dataset(root)
    assert all(p.shape == (40, 40, 3) for p in pixels.values())
    assert all(1 <= sum(a["image_id"] == im["id"] for a in coco["annotations"]) <= 2 for im in coco["images"])


def test_object_count_bounds_including_zero(tmp_path: Path) -> None:
    coco, _ = _read_dataset(generate_dataset(tmp_path / "exact", 4, image_size=(96, 128), min_objects=5,
                                             max_objects=5))
    assert np.bincount([a["image_id"] for a in coco["annotations"]])[1:].tolist() == [5, 5, 5, 5]
    coco, pixels = _read_dataset(generate_dataset(tmp_path / "none", 2, image_size=64, min_objects=0,
                                                  max_objects=0))
    assert coco["annotations"] == [] and len(pixels) == 2


@pytest.mark.parametrize("kwargs, error", [
    ({"image_size": (20, 64)}, ValueError),
    ({"image_size": (64, 64, 3)}, ValueError),
    ({"min_objects": 4, "max_objects": 2}, ValueError),
    ({"min_objects": -1}, ValueError),
    ({"split": "a/b"}, ValueError),
    ({"num_images": -1}, ValueError),
    ({"min_objects": 1.5}, TypeError),
])
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, error: type) -> None:
    args = {"num_images": 1, **kwargs}
    with pytest.raises(error):
        generate_dataset(tmp_path / "x", **args)


def test_png_writer_round_trips_exactly() -> None:
    image = np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(synth._png_bytes(image))))
    assert np.array_equal(decoded, image)


def test_cli_helpers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = add_synth_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--out", str(tmp_path / "cli"), "--num-images", "2", "--seed", "1",
                              "--image-size", "64", "80", "--max-objects", "3"])
    assert run_synth(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    coco = json.loads((tmp_path / "cli" / "annotations.json").read_text())
    assert [(im["height"], im["width"]) for im in coco["images"]] == [(64, 80), (64, 80)]
    assert run_synth(args) == 2  # non-empty folder without --overwrite
    assert "not empty" in capsys.readouterr().err
