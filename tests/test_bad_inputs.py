"""Bad input gets a clear error or warning naming the problem, never a traceback from deep inside or a silent
wrong result (issue 13). Random-weight 64-px models: what is checked is the handling, not the masks."""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import pytest
import torch

from powersam import SamPredictor
from powersam.models.zoo import build_model


@pytest.fixture(scope="module", params=["torch", "onnx"])
def predictor(request):
    if request.param == "onnx":  # OnnxSamPredictor of the corpus's export (below)
        return request.getfixturevalue("models")["onnx"].predictor
    torch.manual_seed(0)
    return SamPredictor(build_model("edgesam", img_size=64))


def noise(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(3, 5000), (5000, 3), (1, 700)])
def test_thin_strips_are_segmented(predictor, shape):
    # at S=64 a 3×5000 strip's short side rounds to 0 pixels: it used to fail with "height and width must be > 0"
    predictor.set_image(noise(*shape))
    masks, scores, _ = predictor.predict(box=np.array([0, 0, shape[1], shape[0]]), multimask_output=False)
    assert masks.shape == (1, *shape) and np.isfinite(scores).all()


def test_points_outside_the_image_are_warned_about_once(predictor):
    predictor.set_image(noise(40, 60))
    predictor._warned_points = False
    with pytest.warns(UserWarning, match=r"1 point\(s\) lie outside the 60×40 image"):
        predictor.predict(point_coords=np.array([[30, 20], [75, 10]]), point_labels=np.array([1, 1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor.predict(point_coords=np.array([[75, 10]]), point_labels=np.array([1]))  # once per predictor
        predictor.predict(point_coords=np.array([[900, 900]]), point_labels=np.array([-1]))  # padding: no position


@pytest.mark.parametrize("value", [-1, 0, 2, 5, 1.5, "yes"])
def test_bad_multimask_output_is_named(predictor, value):
    predictor.set_image(noise(40, 60))
    with pytest.raises(ValueError, match="multimask_output"):
        predictor.predict(box=np.array([5, 5, 30, 30]), multimask_output=value)
    with pytest.raises(ValueError, match="multimask_output"):
        predictor.predict_batch(boxes=np.array([[5, 5, 30, 30]]), multimask_output=value)


def test_cuda_on_a_machine_without_it_is_explained(monkeypatch):
    from powersam.utils.device import torch_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="use --device cpu"):
        torch_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        torch_device("gpu0")
    assert torch_device(None).type == "cpu"


def test_predict_cli_refuses_sizes_it_cannot_honour(tmp_path, capsys):
    from powersam.checkpoint import save_checkpoint
    from powersam.cli.predict import add_predict_arguments, run_predict

    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(noise(40, 60)).save(image)
    model = build_model("edgesam", img_size=64)
    ckpt = save_checkpoint(tmp_path / "m.pt", model.state_dict(), "edgesam", model_config={"img_size": 64})
    parser = add_predict_arguments(argparse.ArgumentParser())
    for extra, message in ((["--img-size", "37"], "multiple of 16"), (["--device", "cuda:7"], "device")):
        if extra[0] == "--device" and torch.cuda.device_count() > 7:
            continue
        args = parser.parse_args([str(image), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"),
                                  "--boxes", "5,5,30,30", *extra])
        assert run_predict(args) == 1
        assert message in capsys.readouterr().err
    # A convolutional model trained at 64 runs at an asked 128 (build_model honours it; it used to keep 64 silently).
    args = parser.parse_args([str(image), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"),
                              "--boxes", "5,5,30,30", "--img-size", "128"])
    assert run_predict(args) == 0


# ------------------------------------------------------------------------------------------------ bad-input corpus
# One table per entry point. Each case is generated at test time and asserts its class: an exception of the named
# type whose message names the problem, a warning naming it, or a correct result (odd but valid images).
import io  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
import zlib  # noqa: E402

from PIL import Image  # noqa: E402

import powersam  # noqa: E402
from powersam.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from powersam.cli import main as cli_main  # noqa: E402
from powersam.data.coco import CocoInstances  # noqa: E402
from powersam.inference.detect import ImageTooSmall  # noqa: E402
from powersam.runtime import GraphIntegrityError  # noqa: E402

CLASSES = ["a", "b"]
BACKENDS = ["torch", "onnx"]  # the corpus model in PyTorch and its ONNX export (fixture models)


def encoded(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def png_bomb():
    """A 1×1 PNG whose header (valid CRC) claims 30000×30000 pixels."""
    png = encoded(noise(1, 1), "PNG")
    header = b"IHDR" + (30000).to_bytes(4, "big") * 2 + png[24:29]
    return png[:12] + header + zlib.crc32(header).to_bytes(4, "big") + png[33:]


BAD_IMAGES = {  # file name → (bytes, what the error says)
    "empty.jpg": (lambda: b"", "cannot identify"),
    "truncated.jpg": (lambda: encoded(noise(40, 60), "JPEG")[:400], "truncated"),
    "truncated.png": (lambda: encoded(noise(40, 60), "PNG")[:3000], "truncated"),
    "text.jpg": (lambda: b"not an image, just text\n", "cannot identify"),
    "bomb.png": (png_bomb, "too many pixels"),
    "one_pixel.png": (lambda: encoded(noise(1, 1), "PNG"), "1×1 pixels"),
}
ODD_IMAGES = {  # converted, must work: 16-bit grey, CMYK, palette
    "sixteen.png": lambda: Image.fromarray(noise(40, 60)[..., 0].astype(np.uint16) * 257),
    "cmyk.jpg": lambda: Image.fromarray(noise(40, 60)).convert("CMYK"),
    "palette.png": lambda: Image.fromarray(noise(40, 60)).convert("P"),
}
GOOD_COCO = {
    "images": [{"id": i, "file_name": f"{i}.png", "width": 60, "height": 40} for i in (1, 2)],
    "annotations": [{"id": i, "image_id": i, "category_id": i, "bbox": [5, 5, 20, 15], "area": 150, "iscrowd": 0,
                     "segmentation": [[5, 5, 25, 5, 15, 20]]} for i in (1, 2)],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
}


def coco_edit(path, value):
    """An edit of GOOD_COCO: set the item at ``path`` (keys/indices) to ``value`` (``...``: delete it)."""
    def edit(data):
        *parents, last = path
        for key in parents:
            data = data[key]
        if value is ...:
            del data[last]
        else:
            data[last] = value
    return edit


# Structural problems: nothing can be evaluated → ValueError naming the problem.
COCO_ERRORS = {
    "no_images_key": (coco_edit(["images"], ...), "needs 'images'"),
    "images_not_a_list": (coco_edit(["images"], {"1": "1.png"}), "'images' must be a list"),
}
# Record problems: the record is skipped (or kept) with a warning naming the reason.
COCO_WARNINGS = {
    "image_without_file_name": (coco_edit(["images", 0, "file_name"], ...), "invalid_image_record"),
    "image_id_of_wrong_type": (coco_edit(["images", 0, "id"], "one"), "invalid_image_record"),
    "duplicate_image_ids": (coco_edit(["images", 1, "id"], 1), "duplicate_image_id"),
    "duplicate_annotation_ids": (coco_edit(["annotations", 1, "id"], 1), "duplicate_annotation_id"),
    "annotation_id_as_text": (coco_edit(["annotations", 0, "id"], "a1"), "invalid_annotation_id"),  # was silent
    "annotation_without_id": (coco_edit(["annotations", 0, "id"], ...), "missing_annotation_id"),
    "annotation_of_a_missing_image": (coco_edit(["annotations", 0, "image_id"], 99), "unknown_image_id"),
    "bbox_with_negative_size": (coco_edit(["annotations", 0, "bbox"], [5, 5, -20, 15]), "invalid_bbox"),
    "bbox_of_wrong_type": (coco_edit(["annotations", 0, "bbox"], "5 5 20 15"), "invalid_bbox"),
    "annotation_without_bbox": (coco_edit(["annotations", 0, "bbox"], ...), "invalid_bbox"),
    "unknown_category": (coco_edit(["annotations", 0, "category_id"], 7), "unknown_category"),
    "list_category_id": (coco_edit(["annotations", 0, "category_id"], [1]), "unknown_category"),  # was: unhashable
    "list_image_id": (coco_edit(["annotations", 0, "image_id"], [1]), "unknown_image_id"),
    "missing_image_file": (coco_edit(["images", 0, "file_name"], "gone.png"), "missing_image_file"),
    "width_as_text": (coco_edit(["images", 0, "width"], "60"), "invalid_image_size"),  # read as 60, warned
    "height_true": (coco_edit(["images", 1, "height"], True), "invalid_image_size"),  # was used as 1 px
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The bad files, a 64-px detecting model (PyTorch) and its checkpoint, an EdgeSAM checkpoint, COCO variants."""
    root = tmp_path_factory.mktemp("corpus")
    for name, (make, _) in BAD_IMAGES.items():
        (root / name).write_bytes(make())
    for name, make in ODD_IMAGES.items():
        make().save(root / name)
    (root / "images").mkdir()
    for i in (1, 2):
        Image.fromarray(noise(40, 60, seed=i)).save(root / "images" / f"{i}.png")
    for name, (edit, _) in {**COCO_ERRORS, **COCO_WARNINGS}.items():
        data = json.loads(json.dumps(GOOD_COCO))
        edit(data)
        (root / f"{name}.json").write_text(json.dumps(data))
    (root / "no_annotations.json").write_text(json.dumps({**GOOD_COCO, "annotations": []}))
    Image.fromarray(noise(8, 12, seed=3)).save(root / "images" / "3.png")  # under predict's min_side of 16 px
    tiny = json.loads(json.dumps(GOOD_COCO))
    tiny["images"].append({"id": 3, "file_name": "3.png", "width": 12, "height": 8})
    tiny["annotations"].append({**tiny["annotations"][0], "id": 3, "image_id": 3, "bbox": [2, 2, 6, 4],
                                "segmentation": [[2, 2, 8, 2, 5, 6]]})
    (root / "tiny_image.json").write_text(json.dumps(tiny))
    torch.manual_seed(0)
    module = build_model("powersam_s", img_size=64, class_names=CLASSES)
    save_checkpoint(root / "model.pt", module.state_dict(), "powersam_s", model_config={"img_size": 64},
                    class_names=CLASSES)
    edge = build_model("edgesam", img_size=64)
    save_checkpoint(root / "edgesam.pt", edge.state_dict(), "edgesam", model_config={"img_size": 64})
    (root / "empty.pt").write_bytes(b"")
    (root / "text.pt").write_text("weights? no\n")
    (root / "unknown_key.yaml").write_text("epochs: 1\nlearning_rate_typo: 0.1\n")
    (root / "wrong_type.yaml").write_text("epochs: many\n")
    return root, powersam.load(module)


@pytest.fixture(scope="module")
def models(corpus):
    """The corpus model on each backend: PyTorch, and its ONNX export (exported once, ~6 s) on ONNX Runtime."""
    root, model = corpus
    model.export("onnx", root / "onnx", max_det=5)
    (root / "empty.onnx").write_bytes(b"")
    (root / "text.onnx").write_text("graph? no\n")
    (root / "truncated.onnx").write_bytes((root / "onnx" / "model.onnx").read_bytes()[:5000])
    (root / "encoder.onnx").write_bytes((root / "onnx" / "encoder.onnx").read_bytes())  # its decoder not beside it
    return {"torch": model, "onnx": powersam.load(root / "onnx", threads=1)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_predict_refuses_bad_images_by_name(corpus, models, name, backend):
    root, model = corpus[0], models[backend]
    with pytest.raises(ValueError, match=BAD_IMAGES[name][1]) as caught:
        model.predict(root / name)
    assert name in str(caught.value) or isinstance(caught.value, ImageTooSmall)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ODD_IMAGES))
def test_odd_image_modes_are_converted(corpus, models, name, backend):
    root, model = corpus[0], models[backend]
    result = model.predict(root / name, conf=0.0, max_det=3)
    assert result.orig_shape == (40, 60) and result.masks.shape == (len(result), 40, 60)


SEGMENT_CASES = {
    "nan_box": (dict(boxes=[[np.nan, 0, 5, 5]]), "boxes contains NaN"),
    "inf_box": (dict(boxes=[[0, 0, np.inf, 5]]), "boxes contains NaN or infinite"),
    "inverted_box": (dict(boxes=[[30, 30, 10, 10]]), "zero width or height"),
    "box_outside_the_image": (dict(boxes=[[-50, -50, -10, -10]]), "zero width or height"),
    "box_of_three_numbers": (dict(boxes=[[0, 0, 5]]), r"boxes must have shape N×4.*\(1, 3\)"),
    "box_of_five_numbers": (dict(boxes=[0, 0, 5, 5, 5]), r"boxes must have shape N×4.*\(5,\)"),
    "nan_point": (dict(points=[[np.nan, 3]], labels=[1]), "point_coords contains NaN"),
    "point_of_three_numbers": (dict(points=[[1, 2, 3]], labels=[1]), "point_coords must have shape"),
    "label_2": (dict(points=[[1, 2]], labels=[2]), r"point_labels must be in \{-1, 0, 1\}"),
    "label_0.5": (dict(points=[[1, 2]], labels=[0.5]), r"point_labels must be in \{-1, 0, 1\}"),
    "label_text": (dict(points=[[1, 2]], labels=["yes"]), r"point_labels must be in \{-1, 0, 1\}"),
    "labels_count": (dict(points=[[1, 2]], labels=[1, 1]), "point_labels must have shape"),
    "points_without_labels": (dict(points=[[1, 2]]), "points and labels must be given together"),
    "mask_of_wrong_shape": (dict(mask=np.zeros((1, 3, 3))), "mask_input must have shape"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(SEGMENT_CASES))
def test_segment_refuses_bad_prompts_by_name(models, name, backend):
    model = models[backend]
    kwargs, says = SEGMENT_CASES[name]
    with pytest.raises(ValueError, match=says):
        model.segment(noise(40, 60), **kwargs)


LOAD_CASES = {
    "unknown_model_name": (lambda root: dict(source="powersam_xxl"), FileNotFoundError, "neither a file nor a zoo"),
    "missing_checkpoint": (lambda root: dict(source=root / "gone.pt"), FileNotFoundError,
                           "checkpoint file not found: '.*gone.pt'"),
    "checkpoint_of_another_model": (lambda root: dict(source=root / "edgesam.pt", name="powersam_s"), ValueError,
                                    "written for model 'edgesam', not 'powersam_s'"),
    "empty_checkpoint": (lambda root: dict(source=root / "empty.pt"), CheckpointError, r"empty \(0 bytes\)"),
    "text_as_checkpoint": (lambda root: dict(source=root / "text.pt", name="powersam_s"), CheckpointError,
                           "not a readable PyTorch checkpoint"),
    "folder_without_a_model": (lambda root: dict(source=root / "images"), FileNotFoundError, "images holds no model"),
    # exports (ONNX Runtime)
    "missing_onnx": (lambda root: dict(source=root / "gone.onnx"), FileNotFoundError, "not found: '.*gone.onnx'"),
    "empty_onnx": (lambda root: dict(source=root / "empty.onnx"), GraphIntegrityError, r"empty \(0 bytes\)"),
    "text_as_onnx": (lambda root: dict(source=root / "text.onnx"), GraphIntegrityError, "cannot load it"),
    "truncated_onnx": (lambda root: dict(source=root / "truncated.onnx"), GraphIntegrityError, "truncated"),
    "encoder_without_decoder": (lambda root: dict(source=root / "encoder.onnx"), FileNotFoundError,
                                "its partner .*decoder.onnx is missing"),
    "build_options_for_an_export": (lambda root: dict(source=root / "onnx", img_size=128), ValueError,
                                    r"\['img_size'\] apply to PyTorch models"),
    "provider_not_installed": (lambda root: dict(source=root / "onnx", providers="openvino"), ValueError,
                               "^execution provider 'openvino'.* is not available in this onnxruntime build"),
}


@pytest.mark.parametrize("name", list(LOAD_CASES))
def test_load_refuses_bad_models_by_name(corpus, models, name):
    root, _ = corpus
    kwargs, error, says = LOAD_CASES[name]
    with pytest.raises(error, match=says):
        powersam.load(**kwargs(root))


@pytest.mark.parametrize("name", list(COCO_ERRORS))
def test_val_refuses_broken_coco_files(corpus, name):
    root, model = corpus
    with pytest.raises(ValueError, match=COCO_ERRORS[name][1]):
        model.val(root / f"{name}.json", split=None)


@pytest.mark.parametrize("name", list(COCO_WARNINGS))
def test_bad_coco_records_are_named_in_a_warning(corpus, name):
    root, _ = corpus
    with pytest.warns(UserWarning, match=COCO_WARNINGS[name][1]):
        dataset = CocoInstances(root / f"{name}.json", split=None, load_masks=True)
    assert len(dataset) >= 1  # the good image is still there


@pytest.mark.parametrize("name", list(COCO_WARNINGS))
def test_data_check_reports_what_loading_warns_about(corpus, name):
    from powersam.data.check import check_dataset

    root, _ = corpus
    report = check_dataset(root / f"{name}.json", root / "images")
    assert report.issue(COCO_WARNINGS[name][1]) is not None, [i.code for i in report.issues]


def test_val_skips_bad_records_and_scores_the_rest(corpus):
    root, model = corpus
    with pytest.warns(UserWarning, match="invalid_bbox"):
        scores = model.val(root / "bbox_with_negative_size.json", split=None, prompts=("box",), refine_iters=0)
    assert scores["miou"]["num_instances"] == 1


def test_evaluation_scores_images_that_predict_refuses(corpus, capsys):
    # predict refuses images under 16 px (ImageTooSmall); an evaluation scores every image the dataset holds
    root, model = corpus
    scores = model.val(root / "tiny_image.json", split=None, prompts=("box",), refine_iters=0)
    assert scores["det"]["failed_images"] == [] and scores["det"]["num_images"] == 3
    assert scores["miou"]["num_images"] == 3
    argv = ["eval", "det", "--checkpoint", root / "model.pt", "--data", root / "tiny_image.json", "--no-progress"]
    assert cli_main([str(a) for a in argv]) == 0
    assert "over 3 images" in capsys.readouterr().out
    assert cli_main([str(a) for a in [*argv, "--min-side", "16"]]) == 1  # asked for: refused and reported
    out, err = capsys.readouterr()
    assert "3: ImageTooSmall: the image is 12×8 pixels" in out and "1 image(s) failed" in err


def cli(argv, capsys):
    code = cli_main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_predict_lists_every_bad_image_and_fails(corpus, models, tmp_path, capsys, backend):
    root, _ = corpus
    images = [root / name for name in [*BAD_IMAGES, *ODD_IMAGES]]
    weights = ["--checkpoint", root / "model.pt"] if backend == "torch" else ["--model", root / "onnx" / "model.onnx"]
    code, err = cli(["predict", *images, *weights, "--out", tmp_path / "out",
                     "--no-progress", "--no-overlay", "--conf", "0"], capsys)
    assert code == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    failures = {Path(f["file"]).name: f["error"] for f in summary["failures"]}
    assert set(failures) == set(BAD_IMAGES)  # the odd modes were converted and predicted
    for name, (_, says) in BAD_IMAGES.items():
        assert says in failures[name] and f"{name}: " in err
    assert "--min-side 0" in failures["one_pixel.png"]
    code, _ = cli(["predict", root / "one_pixel.png", *weights, "--out", tmp_path / "tiny",
                   "--no-progress", "--no-overlay", "--conf", "0", "--min-side", "0"], capsys)
    assert code == 0  # asked for explicitly


@pytest.mark.parametrize("extra, says", [
    (["--model", "onnx/model.onnx", "--img-size", "128"], "--img-size apply to PyTorch models"),
    (["--model", "onnx/model.onnx", "--device", "openvino"], "execution provider 'openvino'"),
    (["--model", "text.onnx"], "text.onnx: ONNX Runtime cannot load it"),
    (["--checkpoint", "onnx/model.onnx"], "model.onnx is an exported graph: pass it as --model"),
])
def test_cli_predict_on_an_export_names_what_it_cannot_do(corpus, models, tmp_path, capsys, extra, says):
    root, _ = corpus
    extra = [root / a if a.endswith(".onnx") else a for a in extra]
    code, err = cli(["predict", root / "cmyk.jpg", *extra, "--out", tmp_path, "--no-progress"], capsys)
    assert code == 1 and says in err and ("damaged" not in err or "text.onnx" in err)  # no provider ≠ damaged


@pytest.mark.parametrize("command, data, says", [
    ("miou", "no_images_key.json", "needs 'images'"),
    ("det", "images_not_a_list.json", "'images' must be a list"),
    ("miou", "no_annotations.json", "nothing was evaluated"),
])
def test_cli_eval_fails_on_unusable_coco_files(corpus, capsys, command, data, says):
    root, _ = corpus
    code, err = cli(["eval", command, "--checkpoint", root / "model.pt", "--data", root / data, "--no-progress"],
                    capsys)
    assert code == 1 and says in err


@pytest.mark.parametrize("config, says", [("unknown_key.yaml", "learning_rate_typo"),
                                          ("wrong_type.yaml", "epochs")])
def test_cli_train_refuses_bad_configs(corpus, capsys, config, says):
    root, _ = corpus
    code, err = cli(["train", "teacher", "--config", root / config], capsys)
    assert code == 1 and says in err and config in err
