"""``powersam predict``: sources, prompts, outputs (overlays, COCO results, summary), videos, failures, ONNX path."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from powersam.checkpoint import save_checkpoint
from powersam.cli.predict import add_predict_arguments, run_predict
from powersam.deploy.predict import collect_sources, parse_boxes, parse_points
from powersam.deploy.video import VideoReader, VideoWriter
from powersam.models.zoo import build_model
from powersam.predictor import SamPredictor

SIZES = {"a.png": (48, 64), "b.jpg": (64, 40), "c.png": (50, 50)}  # name → (H, W)
DETECT = ["--model", "powersam_s", "--img-size", "64", "--conf", "0", "--max-det", "3", "--no-progress"]


def predict(argv: list[str]) -> int:
    parser = add_predict_arguments(argparse.ArgumentParser())
    return run_predict(parser.parse_args(argv))


def noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for seed, (name, (h, w)) in enumerate(SIZES.items()):
        Image.fromarray(noise(h, w, seed)).save(folder / name)
    return folder


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_folder_with_a_corrupt_file(image_dir, tmp_path, capsys):
    (image_dir / "broken.png").write_bytes(b"not a png at all")
    (image_dir / "notes.txt").write_text("skipped: not an image")
    out = tmp_path / "out"
    assert predict([str(image_dir), "--out", str(out), *DETECT]) == 1

    captured = capsys.readouterr()
    assert "broken.png" in captured.err
    for name, (h, w) in SIZES.items():
        overlay = out / f"{name.rsplit('.', 1)[0]}.png"
        assert np.asarray(Image.open(overlay)).shape == (h, w, 3)
    assert not (out / "broken.png").exists()

    summary = read_json(out / "summary.json")
    assert [f["file"] for f in summary["failures"]] == ["broken.png"]
    assert "cannot read image" in summary["failures"][0]["error"]
    assert summary["images_processed"] == 3 and summary["mode"] == "detect"

    records = read_json(out / "results.json")
    assert 0 < len(records) <= 9 and summary["instances"] == len(records)
    assert sum(summary["counts"].values()) == len(records)
    # Sorted order a.png, b.jpg, broken.png, c.png: the failed file keeps its id 3.
    ids = {"a.png": 1, "b.jpg": 2, "c.png": 4}
    for record in records:
        assert record["image_id"] == ids[record["file_name"]]
        assert summary["categories"][record["category_id"] - 1]["name"] == record["category_name"]
        h, w = SIZES[record["file_name"]]
        assert record["segmentation"]["size"] == [h, w] and isinstance(record["segmentation"]["counts"], str)
        assert mask_utils.decode(record["segmentation"]).shape == (h, w)
        assert 0.0 <= record["score"] <= 1.0 and len(record["bbox"]) == 4

    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "file_name": n, "height": SIZES[n][0], "width": SIZES[n][1]} for n, i in ids.items()],
        "annotations": [],
        "categories": summary["categories"],
    }
    gt.createIndex()
    loaded = gt.loadRes(records)
    assert len(loaded.getAnnIds()) == len(records)
    # The table lists every class found, and the throughput line closes the report.
    assert "total" in captured.out and "images/s" in captured.out and "ms/image" in captured.out


def test_video_is_streamed_frame_by_frame(tmp_path):
    video = tmp_path / "clip.mp4"
    with VideoWriter(video, fps=10) as writer:
        for i in range(6):
            writer.write(noise(48, 64, i))
    out = tmp_path / "out"
    assert predict([str(video), "--out", str(out), "--save-masks", *DETECT]) == 0

    with VideoReader(out / "clip_overlay.mp4") as reader:
        frames = [frame for _, frame in reader]
    assert len(frames) == 6 and frames[0].shape == (48, 64, 3)
    records = read_json(out / "results.json")
    summary = read_json(out / "summary.json")
    assert summary["images_processed"] == 6 and summary["outputs"][0]["frames"] == 6
    assert {r["frame"] for r in records} == set(range(6))
    assert {r["image_id"] for r in records} == set(range(1, 7))  # one image id per frame
    assert all(r["file_name"] == str(video) for r in records)  # an explicit file: as given
    for frame in range(6):  # instance maps agree with the per-frame records
        index_map = np.asarray(Image.open(out / "masks" / "clip" / f"{frame:06d}.png"))
        assert index_map.shape == (48, 64)
        assert index_map.max() <= sum(r["frame"] == frame for r in records)

    out2 = tmp_path / "strided"
    assert predict([str(video), "--out", str(out2), "--stride", "2", "--max-frames", "2", *DETECT]) == 0
    assert {r["frame"] for r in read_json(out2 / "results.json")} == {0, 2}
    with VideoReader(out2 / "clip_overlay.mp4") as reader:
        assert sum(1 for _ in reader) == 2


def test_unreadable_video_is_a_per_file_failure(image_dir, tmp_path):
    (image_dir / "bad.mp4").write_bytes(b"\x00" * 64)
    out = tmp_path / "out"
    assert predict([str(image_dir), "--out", str(out), "--no-overlay", *DETECT]) == 1
    summary = read_json(out / "summary.json")
    assert [f["file"] for f in summary["failures"]] == ["bad.mp4"]
    assert summary["images_processed"] == 3
    assert not list(out.glob("*.png"))  # --no-overlay


def test_box_and_point_prompts_with_plain_sam(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(image_dir / "a.png"), "--out", str(out), "--model", "sam_vit_t", "--img-size", "64", "--no-progress"]
    assert predict([*args, "--boxes", "2,3,30,40; 10,10,200,47"]) == 0
    records = read_json(out / "results.json")
    assert [r["category_name"] for r in records] == ["object", "object"]
    assert records[0]["bbox"] == [2.0, 3.0, 28.0, 37.0]
    assert records[1]["bbox"] == [10.0, 10.0, 54.0, 37.0]  # clipped to the 64×48 image
    assert all(mask_utils.decode(r["segmentation"]).shape == (48, 64) for r in records)
    assert read_json(out / "summary.json")["mode"] == "prompt"

    assert predict([*args, "--points", "20,20;5,5,0"]) == 0  # the clicks form one prompt
    assert len(read_json(out / "results.json")) == 1

    capsys.readouterr()
    assert predict(args) == 1  # a plain SAM model needs prompts
    assert "--boxes" in capsys.readouterr().err


def test_boxes_replace_detection_of_an_integrated_model(image_dir, tmp_path):
    out = tmp_path / "out"
    assert predict([str(image_dir / "c.png"), "--out", str(out), *DETECT, "--boxes", "0,0,20,20"]) == 0
    records = read_json(out / "results.json")
    assert len(records) == 1 and records[0]["bbox"] == [0.0, 0.0, 20.0, 20.0]
    assert read_json(out / "summary.json")["mode"] == "prompt"


def test_zoom_crops_around_each_box(image_dir, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.fromarray(noise(200, 300, 7)).save(big)
    out = tmp_path / "out"
    assert predict([str(big), "--out", str(out), *DETECT, "--boxes", "10,10,30,40;200,120,260,180", "--zoom",
                    "2"]) == 0
    records = read_json(out / "results.json")
    assert [r["bbox"] for r in records] == [[10.0, 10.0, 20.0, 30.0], [200.0, 120.0, 60.0, 60.0]]
    from powersam.inference.zoom import zoom_window

    for record, box in zip(records, [(10, 10, 30, 40), (200, 120, 260, 180)]):
        x0, y0, x1, y1 = zoom_window(box, (200, 300), 2.0)  # both under half the image: cropped
        mask = mask_utils.decode(record["segmentation"]).astype(bool)
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert not (mask & ~inside).any()  # nothing beyond the box's crop
    capsys.readouterr()
    assert predict([str(big), "--out", str(tmp_path / "o2"), *DETECT, "--points", "5,5", "--zoom", "3"]) == 1
    assert "--boxes" in capsys.readouterr().err
    # detection: each detected box's mask decoded on its crop
    assert predict([str(big), "--out", str(tmp_path / "o4"), *DETECT, "--zoom", "2"]) == 0
    detected = read_json(tmp_path / "o4" / "results.json")
    assert detected and read_json(tmp_path / "o4" / "summary.json")["mode"] == "detect"
    assert predict([str(big), "--out", str(tmp_path / "o3"), *DETECT, "--boxes", "1,1,9,9", "--zoom", "0.5"]) == 1
    assert "--zoom" in capsys.readouterr().err


class FakeOnnxPowerSAM:
    """Stands in for ``powersam.runtime.OnnxPowerSAM`` (same interface) until the runtime exists."""

    def __init__(self, model):
        self.model, self.class_names = model, list(model.class_names)
        self.calls = 0

    def predict(self, image, conf=None, iou=None, max_det=None, classes=None):
        self.calls += 1
        return self.model.predict(image, conf=conf, iou=iou, max_det=max_det, classes=classes)


class FakeOnnxSamPredictor:
    """Stands in for ``powersam.runtime.OnnxSamPredictor``: ``set_image`` and ``predict_batch``."""

    def __init__(self, model):
        self.predictor = SamPredictor(model)
        self.set_image, self.predict_batch = self.predictor.set_image, self.predictor.predict_batch


def fake_runtime(monkeypatch, tmp_path, model):
    """Install a fake ``powersam.runtime`` whose ``load`` returns ``model``; returns (onnx path, loaded paths)."""
    loaded = []
    runtime = types.ModuleType("powersam.runtime")
    runtime.load = lambda path, providers=None: loaded.append(path) or model
    monkeypatch.setitem(sys.modules, "powersam.runtime", runtime)
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"")
    return onnx_file, loaded


def test_onnx_path_matches_the_pytorch_path(image_dir, tmp_path, monkeypatch):
    torch.manual_seed(0)
    fake = FakeOnnxPowerSAM(build_model("powersam_s", img_size=64))
    onnx_file, loaded = fake_runtime(monkeypatch, tmp_path, fake)

    common = ["--conf", "0", "--max-det", "3", "--no-progress", "--classes", "W,CM,QF,TA,L"]
    assert predict([str(image_dir), "--out", str(tmp_path / "onnx"), "--model", str(onnx_file), *common]) == 0
    assert loaded == [onnx_file] and fake.calls == 3
    torch.manual_seed(0)  # the same random weights as the fake's model
    torch_args = ["--model", "powersam_s", "--img-size", "64"]
    assert predict([str(image_dir), "--out", str(tmp_path / "torch"), *torch_args, *common]) == 0
    onnx_records = read_json(tmp_path / "onnx" / "results.json")
    assert onnx_records and onnx_records == read_json(tmp_path / "torch" / "results.json")
    assert {r["category_name"] for r in onnx_records} <= {"W", "CM", "QF", "TA", "L"}

    # --img-size / --checkpoint are built into an ONNX file.
    assert predict([str(image_dir), "--out", str(tmp_path / "x"), "--model", str(onnx_file), "--img-size", "64"]) == 1


@pytest.fixture(scope="module")
def exported_powersam(tmp_path_factory):
    """A 64-px powersam_s saved both as a checkpoint and as an integrated ONNX graph."""
    pytest.importorskip("onnxruntime")
    onnx_export = pytest.importorskip("powersam.deploy.onnx_export")
    torch.manual_seed(0)
    model = build_model("powersam_s", img_size=64)
    head = model.box_generator.bbox_head
    for conv in [*head.multi_level_conv_cls, *head.multi_level_conv_obj]:
        # At init every score is ~0.25 ± 1e-4, so float noise could reorder ties; spread the scores apart.
        torch.nn.init.normal_(conv.weight, std=300.0)
        torch.nn.init.zeros_(conv.bias)
    folder = tmp_path_factory.mktemp("exported")
    save_checkpoint(folder / "ps.pt", model.state_dict(), "powersam_s", model_config={"img_size": 64},
                    class_names=list(model.class_names))
    onnx_export.export_onnx(model, folder / "ps.onnx")
    return folder


def test_real_onnx_graph_gives_the_pytorch_instances(image_dir, tmp_path, exported_powersam):
    common = [str(image_dir), "--conf", "0.25", "--max-det", "3", "--no-progress", "--no-overlay"]
    assert predict([*common, "--out", str(tmp_path / "onnx"), "--model", str(exported_powersam / "ps.onnx")]) == 0
    assert predict([*common, "--out", str(tmp_path / "torch"), "--checkpoint", str(exported_powersam / "ps.pt")]) == 0
    onnx_records = read_json(tmp_path / "onnx" / "results.json")
    torch_records = read_json(tmp_path / "torch" / "results.json")
    assert len(onnx_records) == len(torch_records) == 9
    for a, b in zip(onnx_records, torch_records):
        for key in ("file_name", "image_id", "category_id", "category_name"):
            assert a[key] == b[key]
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.05)
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert mask_utils.iou([a["segmentation"]], [b["segmentation"]], [0])[0, 0] > 0.98
    assert read_json(tmp_path / "onnx" / "summary.json")["model"].endswith("ps.onnx")


def test_onnx_interactive_predictor_takes_prompts(image_dir, tmp_path, monkeypatch):
    onnx_file, _ = fake_runtime(monkeypatch, tmp_path, FakeOnnxSamPredictor(build_model("sam_vit_t", img_size=64)))
    out = tmp_path / "out"
    args = [str(image_dir / "a.png"), "--out", str(out), "--model", str(onnx_file), "--no-progress"]
    assert predict([*args, "--boxes", "2,3,30,40"]) == 0
    assert len(read_json(out / "results.json")) == 1
    assert predict(args) == 1  # no detector, no prompts


class FailingOnThirdCall(FakeOnnxPowerSAM):
    def predict(self, image, **kwargs):
        if self.calls == 2:
            self.calls += 1
            raise RuntimeError("simulated inference failure")
        return super().predict(image, **kwargs)


def test_a_failed_video_frame_keeps_its_place(tmp_path, monkeypatch):
    onnx_file, _ = fake_runtime(monkeypatch, tmp_path, FailingOnThirdCall(build_model("powersam_s", img_size=64)))
    video = tmp_path / "clip.avi"
    with VideoWriter(video, fps=10) as writer:
        for i in range(4):
            writer.write(noise(32, 48, i))
    out = tmp_path / "out"
    assert predict([str(video), "--out", str(out), "--model", str(onnx_file), "--conf", "0", "--no-progress"]) == 1
    summary = read_json(out / "summary.json")
    failure = {"file": str(video), "frame": 2, "error": "RuntimeError: simulated inference failure"}
    assert summary["failures"] == [failure]
    assert summary["images_processed"] == 3
    assert {r["frame"] for r in read_json(out / "results.json")} == {0, 1, 3}
    with VideoReader(out / "clip_overlay.mp4") as reader:
        assert sum(1 for _ in reader) == 4  # the failed frame is written unannotated


class InterruptedOnSecondCall(FakeOnnxPowerSAM):
    def predict(self, image, **kwargs):
        if self.calls == 1:
            raise KeyboardInterrupt
        return super().predict(image, **kwargs)


def test_interrupted_run_leaves_valid_outputs(image_dir, tmp_path, monkeypatch):
    onnx_file, _ = fake_runtime(monkeypatch, tmp_path, InterruptedOnSecondCall(build_model("powersam_s", img_size=64)))
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):  # powersam.cli turns it into exit code 130
        predict([str(image_dir), "--out", str(out), "--model", str(onnx_file), "--conf", "0", "--max-det", "2",
                 "--no-progress"])
    assert {r["file_name"] for r in read_json(out / "results.json")} == {"a.png"}
    summary = read_json(out / "summary.json")
    assert summary["interrupted"] is True and summary["images_processed"] == 1


def test_module_imports_without_torch():
    # The ONNX path runs on edge devices without torch: importing the command must not pull it in.
    code = "import sys, powersam.deploy.predict; sys.exit('torch' in sys.modules or 'cv2' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_empty_sources_exit_1_with_a_message(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict([str(empty), "--out", str(tmp_path / "out"), *DETECT]) == 1
    assert "no images or videos in folder" in capsys.readouterr().err
    assert predict([str(tmp_path / "*.jpg"), "--out", str(tmp_path / "out"), *DETECT]) == 1
    assert "no images or videos match" in capsys.readouterr().err
    assert predict([str(tmp_path / "missing.png"), "--out", str(tmp_path / "out"), *DETECT]) == 1
    assert "missing.png" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing starts before the sources are known


def test_explicit_unsupported_file_and_glob(image_dir, tmp_path):
    notes = image_dir / "notes.txt"
    notes.write_text("hello")
    out = tmp_path / "out"
    assert predict([str(image_dir / "*.png"), str(notes), "--out", str(out), "--no-overlay", *DETECT]) == 1
    summary = read_json(out / "summary.json")
    assert summary["images_processed"] == 2  # a.png, c.png
    assert summary["failures"][0]["file"].endswith("notes.txt")
    assert "unsupported file type '.txt'" in summary["failures"][0]["error"]


def test_argument_errors(image_dir, tmp_path, capsys):
    src, out = str(image_dir), str(tmp_path / "out")
    assert predict([src, "--out", out, *DETECT, "--classes", "nope"]) == 1
    assert "unknown class name" in capsys.readouterr().err
    assert predict([src, "--out", out, *DETECT, "--classes", "W", "--boxes", "0,0,5,5"]) == 1
    assert "--classes" in capsys.readouterr().err
    assert predict([src, "--out", src, *DETECT]) == 1  # overlays would overwrite the inputs
    assert "overwrite" in capsys.readouterr().err
    assert predict([src, "--out", out, *DETECT, "--conf", "1.5"]) == 1
    assert predict([src, "--out", out, *DETECT, "--stride", "0"]) == 1


def test_prompt_parsing():
    np.testing.assert_array_equal(parse_boxes("1,2,3,4;5, 6, 7.5, 8;"), [[1, 2, 3, 4], [5, 6, 7.5, 8]])
    coords, labels = parse_points("1,2;3,4,0")
    np.testing.assert_array_equal(coords, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(labels, [1, 0])
    for bad in ("", "1,2,3", "3,0,1,5", "a,b,c,d", "1,2,nan,4"):
        with pytest.raises(ValueError):
            parse_boxes(bad)
    for bad in ("", "1", "1,2,2", "1,2,3,4"):
        with pytest.raises(ValueError):
            parse_points(bad)


def test_collect_sources_recursive_and_name_clashes(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / "root" / sub).mkdir(parents=True)
        Image.fromarray(noise(8, 8, 0)).save(tmp_path / "root" / sub / "same.png")
    with pytest.raises(ValueError, match="--recursive"):
        collect_sources([tmp_path / "root"])
    sources = collect_sources([tmp_path / "root", tmp_path / "root" / "x" / "same.png"], recursive=True)
    assert [s.file_name for s in sources] == ["x/same.png", "y/same.png"]  # the file named twice is kept once
    assert [s.stem for s in sources] == ["same", "same_2"]


def test_video_reader_rejects_non_videos(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00" * 32)
    with pytest.raises(ValueError, match="cannot open video"):
        VideoReader(fake)
    with pytest.raises(ValueError, match="stride"):
        VideoReader(fake, stride=0)
    writer = VideoWriter(tmp_path / "v.mp4", fps=5)
    writer.write(noise(16, 16, 0))
    with pytest.raises(ValueError, match="differs"):
        writer.write(noise(8, 16, 0))
    writer.close()
    assert cv2.VideoCapture(str(tmp_path / "v.mp4")).isOpened()
