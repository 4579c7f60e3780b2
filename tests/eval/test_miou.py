"""Interactive mIoU evaluation: the IoU helper, the click protocol (with fake predictors), a random model, the CLI."""
from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pytest
import torch

from powersam.data.coco import CocoInstances, Sample
from powersam.data.synth import generate_dataset
from powersam.cli.eval import add_miou_arguments, run_miou
from powersam.eval.miou import evaluate_miou, format_miou_report, miou_from_masks, step_keys
from powersam.models.zoo import build_model

torch.set_num_threads(1)

ALL_KEYS = ["box", "box+1", "box+2", "point", "point+1", "point+2"]


# ---------------------------------------------------------------------------------------------- helpers
def _rect(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[rows, cols] = True
    return mask


def _sample(masks: np.ndarray, image_id: int = 1, labels=None) -> Sample:
    n, h, w = masks.shape
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return Sample(
        image=np.full((h, w, 3), image_id, dtype=np.uint8), image_id=image_id, file_name=f"{image_id}.png",
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.zeros(n, np.int64) if labels is None else np.asarray(labels, np.int64),
        masks=masks, annotation_ids=np.arange(n), ignore_boxes=np.zeros((0, 4), np.float32), ignore_mask=None,
        orig_size=(h, w),
    )


class ListDataset(list):
    class_names = ["thing", "other"]


class ScriptedPredictor:
    """Records every predict_batch call and answers with masks from ``answer(call_index, n)``."""

    def __init__(self, answer, low_res_size: int = 8) -> None:
        self.answer, self.calls, self.images = answer, [], 0
        self.low_res_size = low_res_size

    def set_image(self, image) -> None:
        self.images += 1

    def predict_batch(self, boxes=None, point_coords=None, point_labels=None, mask_input=None,
                      multimask_output=False, return_logits=False, chunk_size=64):
        self.calls.append({
            "boxes": None if boxes is None else np.array(boxes),
            "coords": None if point_coords is None else np.array(point_coords),
            "labels": None if point_labels is None else np.array(point_labels),
            "mask_input": None if mask_input is None else np.array(mask_input),
        })
        masks = self.answer(len(self.calls) - 1)
        n = masks.shape[0]
        low_res = np.full((n, 1, self.low_res_size, self.low_res_size), float(len(self.calls)), np.float32)
        return masks[:, None], np.ones((n, 1), np.float32), low_res


class OraclePredictor(ScriptedPredictor):
    """Returns the GT masks of the image that was set (looked up by the image's pixel values)."""

    def __init__(self, samples) -> None:
        super().__init__(lambda call: self.current)
        self.by_image = {s.image.tobytes(): s.masks for s in samples}

    def set_image(self, image) -> None:
        self.current = self.by_image[np.asarray(image).tobytes()]


# ---------------------------------------------------------------------------------------------- IoU helper
def test_miou_from_masks_known_values():
    h, w = 8, 10
    gt = np.stack([_rect(h, w, slice(0, 4), slice(0, 4))] * 4 + [np.zeros((h, w), bool)])
    pred = np.stack([
        gt[0],                                    # perfect → 1
        np.zeros((h, w), bool),                   # empty prediction → 0
        _rect(h, w, slice(0, 4), slice(0, 2)),    # half of the GT inside it → 8 / 16
        _rect(h, w, slice(0, 4), slice(2, 6)),    # shifted by half → 8 / 24
        np.zeros((h, w), bool),                   # both empty → NaN (skipped by the means)
    ])
    iou = miou_from_masks(pred, gt)
    np.testing.assert_allclose(iou[:4], [1.0, 0.0, 0.5, 1 / 3])
    assert np.isnan(iou[4])
    assert miou_from_masks(np.zeros((0, h, w), bool), np.zeros((0, h, w), bool)).shape == (0,)


def test_miou_from_masks_rejects_bad_inputs():
    with pytest.raises(ValueError, match="N×H×W"):
        miou_from_masks(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5), bool))
    with pytest.raises(ValueError, match="N×H×W"):
        miou_from_masks(np.zeros((4, 4), bool), np.zeros((4, 4), bool))
    with pytest.raises(TypeError, match="threshold"):
        miou_from_masks(np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4), bool))


def test_step_keys():
    assert step_keys(("box", "point"), 2) == ALL_KEYS
    assert step_keys(("point",), 0) == ["point"]


# ---------------------------------------------------------------------------------------------- click protocol
def test_refinement_clicks_land_on_errors_with_the_right_label():
    h, w = 24, 32
    gt = _rect(h, w, slice(4, 20), slice(4, 28))
    missed = gt & ~_rect(h, w, slice(4, 20), slice(4, 16))           # right half missing → FN
    spurious = _rect(h, w, slice(0, 24), slice(0, 32)) & ~gt          # a frame around the GT → FP
    answers = [gt & ~missed, gt | spurious, gt]
    predictor = ScriptedPredictor(lambda call: answers[call][None])
    result = evaluate_miou(predictor, ListDataset([_sample(gt[None])]), prompts=("box",), progress=False)

    calls = predictor.calls
    assert len(calls) == 3 and predictor.images == 1
    for call in calls:  # the box prompt is kept at every step, no mask feedback by default
        np.testing.assert_array_equal(call["boxes"], [[4, 4, 28, 20]])
        assert call["mask_input"] is None
    assert calls[0]["coords"] is None
    assert calls[1]["coords"].shape == (1, 1, 2) and calls[2]["coords"].shape == (1, 2, 2)
    np.testing.assert_array_equal(calls[2]["coords"][:, 0], calls[1]["coords"][:, 0])  # clicks accumulate
    np.testing.assert_array_equal(calls[2]["labels"], [[1, 0]])
    (x1, y1), (x2, y2) = calls[2]["coords"][0]
    assert missed[int(y1), int(x1)], "the positive click must be on a missed GT pixel"
    assert spurious[int(y2), int(x2)], "the negative click must be on a wrongly predicted pixel"
    assert result["miou"]["box+2"] == pytest.approx(100.0)
    assert result["miou"]["box"] == pytest.approx(100 * (gt.sum() - missed.sum()) / gt.sum())
    assert result["miou"]["box+1"] == pytest.approx(100 * gt.sum() / (gt | spurious).sum())


def test_perfect_prediction_gets_padding_click_and_mask_feedback_is_optional():
    h, w = 16, 16
    gt = _rect(h, w, slice(3, 12), slice(5, 11))
    predictor = ScriptedPredictor(lambda call: gt[None])
    evaluate_miou(predictor, ListDataset([_sample(gt[None])]), prompts=("point",), refine_iters=1,
                  use_mask_input=True, progress=False)
    first, second = predictor.calls
    assert first["boxes"] is None and first["labels"].tolist() == [[1]]
    x, y = first["coords"][0, 0]
    assert gt[int(y), int(x)], "the initial point must lie inside the GT mask"
    assert second["labels"].tolist() == [[1, -1]]  # nothing to correct: a padding click
    np.testing.assert_array_equal(second["mask_input"], np.full((1, 1, 8, 8), 1.0))  # the previous call's logits


def test_oracle_scores_100_and_a_failing_image_is_reported(tmp_path):
    h, w = 20, 24
    good = _sample(np.stack([_rect(h, w, slice(2, 9), slice(2, 20)), _rect(h, w, slice(10, 18), slice(5, 9))]),
                   image_id=1, labels=[0, 1])

    class Broken:
        image_id = 2

        def __getattr__(self, name):
            raise OSError("image file is truncated")

    dataset = ListDataset([good, Broken()])
    result = evaluate_miou(OraclePredictor([good]), dataset, progress=False)
    assert result["miou"] == {k: pytest.approx(100.0) for k in ALL_KEYS}
    assert result["per_class"] == {"thing": {k: pytest.approx(100.0) for k in ALL_KEYS},
                                   "other": {k: pytest.approx(100.0) for k in ALL_KEYS}}
    assert result["num_instances"] == 2 and result["num_images"] == 1
    assert [f["image_id"] for f in result["failed_images"]] == [1]  # the dataset index: ListDataset has no ids
    assert "truncated" in result["failed_images"][0]["error"]
    assert "100.0" in format_miou_report(result)


def test_option_validation():
    dataset = ListDataset([_sample(_rect(8, 8, slice(1, 5), slice(1, 5))[None])])
    predictor = ScriptedPredictor(lambda call: np.zeros((1, 8, 8), bool))
    for kwargs in ({"prompts": ("mask",)}, {"prompts": ()}, {"refine_iters": -1}, {"point_from": "box"},
                   {"click_mode": "largest"}, {"click_mode": "mask-center"}, {"max_images": 0}, {"seed": -3}):
        with pytest.raises(ValueError):
            evaluate_miou(predictor, dataset, progress=False, **kwargs)

    class BoxesOnly(ListDataset):
        has_masks = False

    with pytest.raises(ValueError, match="masks"):
        evaluate_miou(predictor, BoxesOnly(dataset), progress=False)
    with pytest.raises(RuntimeError, match="all 1 images failed"):
        evaluate_miou(ScriptedPredictor(lambda call: np.zeros((1, 8, 9), bool)), dataset, progress=False)


# ---------------------------------------------------------------------------------------------- real model
@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synth") / "ds", 3, seed=0, image_size=(96, 128))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("edgesam", img_size=64)


def test_random_model_on_synthetic_data(synth_root, tiny_model):
    dataset = CocoInstances(synth_root)
    total = sum(dataset.image_info(i)["num_instances"] for i in range(len(dataset)))
    kwargs = dict(point_from="random", click_mode="random", seed=3, progress=False)
    tiny_model.train()
    first = evaluate_miou(tiny_model, dataset, **kwargs)
    assert tiny_model.training, "the model's training flag must be restored"
    tiny_model.eval()
    second = evaluate_miou(tiny_model, dataset, **kwargs)
    assert first == second, "the same seed must give the same result"
    other_seed = evaluate_miou(tiny_model, dataset, **{**kwargs, "seed": 4})
    assert other_seed["miou"]["point"] != first["miou"]["point"], "random points must depend on the seed"
    assert other_seed["miou"]["box"] == first["miou"]["box"], "the box step involves no randomness"
    assert list(first["miou"]) == ALL_KEYS
    assert all(0.0 <= v <= 100.0 for v in first["miou"].values())
    assert first["num_instances"] == total and first["num_images"] == 3 and first["failed_images"] == []
    assert set(first["per_class"]) <= set(dataset.class_names)
    assert sum(first["class_counts"].values()) == total == sum(first["size_counts"].values())
    assert set(first["per_size"]) == {"small", "medium", "large"}

    limited = evaluate_miou(tiny_model, dataset, prompts="box", refine_iters=0, max_images=2,
                            max_instances_per_image=2, progress=False)
    assert list(limited["miou"]) == ["box"] and limited["num_images"] == 2 and limited["num_instances"] == 4


def test_zoom_decodes_boxes_on_crops(synth_root, tiny_model):
    """zoom=C evaluates each box on a crop around it: a window that covers the whole image gives exactly the
    plain result; a tight one changes the box scores and leaves point prompts (whole image) as they were."""
    dataset = CocoInstances(synth_root)
    kwargs = dict(refine_iters=1, seed=2, progress=False)
    plain = evaluate_miou(tiny_model, dataset, **kwargs)
    whole = evaluate_miou(tiny_model, dataset, zoom=1000.0, **kwargs)
    assert whole["miou"] == plain["miou"] and whole["settings"]["zoom"] == 1000.0
    tight = evaluate_miou(tiny_model, dataset, zoom=1.5, **kwargs)
    assert tight["miou"]["box"] != plain["miou"]["box"]
    assert tight["miou"]["point"] == plain["miou"]["point"]
    with pytest.raises(ValueError, match="context"):
        evaluate_miou(tiny_model, dataset, zoom=0.5, **kwargs)
    assert run_miou(_parse(["--model", "edgesam", "--data", str(synth_root), "--split", "all", "--img-size", "64",
                            "--no-progress", "--zoom", "0.5"])) == 1


def test_corrupt_image_is_reported_and_the_rest_evaluated(tmp_path, tiny_model):
    root = generate_dataset(tmp_path / "ds", 3, seed=1, image_size=(96, 128))
    (root / "images" / "000002.png").write_bytes(b"not a png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CocoInstances warns about the undecodable file
        dataset = CocoInstances(root)
        result = evaluate_miou(tiny_model, dataset, refine_iters=1, progress=False)
    counts = {dataset.image_info(i)["image_id"]: dataset.image_info(i)["num_instances"] for i in range(3)}
    assert [f["image_id"] for f in result["failed_images"]] == [2]
    assert "cannot be decoded" in result["failed_images"][0]["error"]
    assert result["num_images"] == 2 and result["num_instances"] == counts[1] + counts[3]


# ---------------------------------------------------------------------------------------------- CLI
def _parse(argv):
    return add_miou_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_cli_writes_json(synth_root, tiny_model, tmp_path, capsys):
    from powersam.checkpoint import save_checkpoint

    out = tmp_path / "miou.json"
    argv = ["--data", str(synth_root), "--split", "all", "--img-size", "64", "--device", "cpu", "--no-progress"]
    assert run_miou(_parse(["--model", "edgesam", *argv, "--max-images", "2", "--json", str(out)])) == 0
    report = json.loads(out.read_text())
    assert set(report["miou"]) == set(ALL_KEYS) and report["num_images"] == 2
    assert isinstance(report["per_class"], dict) and report["num_instances"] > 0
    assert "box+2" in capsys.readouterr().out

    # A checkpoint written by this project is enough on its own: it records the model name and input size.
    ckpt = save_checkpoint(tmp_path / "m.pt", tiny_model.state_dict(), "edgesam", {"img_size": 64})
    out2 = tmp_path / "ckpt.json"
    args = _parse(["--checkpoint", str(ckpt), "--data", str(synth_root), "--split", "all", "--prompts", "point",
                   "--refine", "1", "--device", "cpu", "--no-progress", "--json", str(out2)])
    assert run_miou(args) == 0
    assert list(json.loads(out2.read_text())["miou"]) == ["point", "point+1"]


def test_cli_errors_exit_1(tmp_path, capsys):
    assert run_miou(_parse(["--model", "edgesam", "--data", str(tmp_path / "missing"), "--no-progress"])) == 1
    assert "does not exist" in capsys.readouterr().err
    assert run_miou(_parse(["--data", str(tmp_path)])) == 1
    assert "--model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- several models
TWO = ["--model", "edgesam,powersam_s"]


def _quick(synth_root, *extra):
    return ["--data", str(synth_root), "--split", "all", "--img-size", "64", "--device", "cpu", "--no-progress",
            "--max-images", "1", "--refine", "1", *extra]


def test_cli_several_models_write_both_json_layouts(synth_root, tmp_path, capsys):
    from powersam.bench.suite import load_miou_results

    out, per_model = tmp_path / "all.json", tmp_path / "per"
    args = _parse([*TWO, *_quick(synth_root, "--point-from", "mask-center", "--json", str(out), "--out", str(per_model))])
    assert run_miou(args) == 0
    stdout = capsys.readouterr().out
    # One comparison table: a row per model, a column per prompt mode and step.
    header = next(line for line in stdout.splitlines() if line.startswith("model"))
    assert header.split()[:5] == ["model", "Box", "Box+1", "Point", "Point+1"]
    assert any(line.startswith("edgesam ") for line in stdout.splitlines())
    assert any(line.startswith("powersam_s ") for line in stdout.splitlines())

    combined = json.loads(out.read_text())
    assert list(combined) == ["models"] and list(combined["models"]) == ["edgesam", "powersam_s"]
    for name, entry in combined["models"].items():
        # Each entry is exactly what `--json` writes for that model alone.
        assert entry["model"] == name and entry["checkpoint"] is None and entry["split"] == "all"
        assert list(entry["miou"]) == ["box", "box+1", "point", "point+1"] and entry["num_images"] == 1
        assert entry["settings"]["point_from"] == "mask-center"
        assert json.loads((per_model / f"{name}_miou.json").read_text()) == entry
    # `powersam bench --miou-json` takes the per-model files and the combined one.
    files = sorted(str(f) for f in per_model.glob("*_miou.json"))
    assert load_miou_results(files) == combined["models"] == load_miou_results([str(out)])
    assert list(load_miou_results([f"powersam_s={out}"])) == ["powersam_s"]

    # The same model alone gives the single-model layout (random weights differ: they are drawn in build order).
    single = tmp_path / "single.json"
    args = _parse(["--model", "powersam_s", *_quick(synth_root, "--point-from", "mask-center", "--json", str(single))])
    assert run_miou(args) == 0
    alone, together = json.loads(single.read_text()), combined["models"]["powersam_s"]
    assert list(alone) == list(together) and alone["settings"] == together["settings"]
    assert alone["num_instances"] == together["num_instances"]


def test_cli_a_bad_checkpoint_fails_its_model_only(synth_root, tiny_model, tmp_path, capsys):
    from powersam.checkpoint import save_checkpoint

    good = save_checkpoint(tmp_path / "edgesam.pt", tiny_model.state_dict(), "edgesam", {"img_size": 64})
    wrong = save_checkpoint(tmp_path / "wrong.pt", tiny_model.state_dict(), "edgesam", {"img_size": 64})
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    out = tmp_path / "all.json"
    args = _parse(["--model", "powersam_s,edgesam,sam_vit_t", "--checkpoint", f"powersam_s={wrong}",
                   "--checkpoint", f"edgesam={good}", "--checkpoint", f"sam_vit_t={garbage}",
                   *_quick(synth_root, "--prompts", "box", "--json", str(out), "--out", str(tmp_path / "per"))])
    assert run_miou(args) == 1
    captured = capsys.readouterr()
    assert "powersam_s: ValueError" in captured.err and "not 'powersam_s'" in captured.err
    assert "sam_vit_t: " in captured.err and "2 of 3 models failed: powersam_s, sam_vit_t" in captured.err
    assert "powersam_s    failed: ValueError" in captured.out  # the failed rows stay in the table
    saved = json.loads(out.read_text())
    assert list(saved["models"]) == ["edgesam"] and saved["models"]["edgesam"]["checkpoint"] == str(good)
    assert set(saved["failed"]) == {"powersam_s", "sam_vit_t"}
    assert [f.name for f in (tmp_path / "per").iterdir()] == ["edgesam_miou.json"]


@pytest.mark.parametrize("argv, message", [
    (["--model", "edgesam,powersam_s", "--checkpoint", "x.pt"], "NAME=PATH"),
    (["--model", "table1", "--checkpoint", "powersam_s_decoupled=x.pt"],
     "'powersam_s_decoupled', which is not among the models evaluated: sam_vit_b, sam_vit_h, sam2_hiera_l"),
    (["--model", "table1", "--checkpoint", "edgesam=missing.pt"], "--checkpoint edgesam: missing.pt does not exist"),
    (["--model", "table1,sam3"], "unknown model 'sam3'; known groups: table1, table2"),
    (["--model", "edgesam", "--checkpoint", "powersam_s=x.pt"], "the model evaluated is 'edgesam'"),
    (["--model", "edgesam", "--checkpoint", "a.pt", "--checkpoint", "b.pt"], "one model takes one --checkpoint"),
])
def test_cli_model_list_errors_come_before_reading_data(tmp_path, capsys, argv, message):
    assert run_miou(_parse([*argv, "--data", str(tmp_path / "no_such_data"), "--no-progress"])) == 1
    err = capsys.readouterr().err
    assert message in err and "no_such_data" not in err


# ---------------------------------------------------------------------------------------------- nothing silent
def _edit_annotations(root, edit):
    path = root / "annotations.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_background_images_are_evaluated_not_failed(tmp_path, tiny_model):
    root = generate_dataset(tmp_path / "ds", 3, seed=2, image_size=(96, 128))
    _edit_annotations(root, lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 2]))
    result = evaluate_miou(tiny_model, CocoInstances(root), prompts="box", refine_iters=0, progress=False)
    assert result["failed_images"] == [] and result["num_images"] == 3 and result["num_instances"] > 0


def test_cli_evaluates_every_image_by_default_and_says_so(synth_root, capsys):
    assert run_miou(_parse(["--model", "edgesam", "--data", str(synth_root), "--img-size", "64", "--prompts", "box",
                            "--refine", "0", "--no-progress"])) == 0
    out = capsys.readouterr().out
    assert "evaluating all 3 images" in out
    assert run_miou(_parse(["--model", "edgesam", "--data", str(synth_root), "--img-size", "64", "--prompts", "box",
                            "--refine", "0", "--no-progress", "--split", "val"])) in (0, 1)
    assert "the 'val' split only" in capsys.readouterr().out


def test_cli_evaluates_the_val_file_of_a_split_folder(synth_root, tmp_path, capsys):
    from powersam.data.split import write_split

    write_split(synth_root, tmp_path / "split", val_fraction=0.4)  # per-split files, as `powersam data split` writes
    assert run_miou(_parse(["--model", "edgesam", "--data", str(tmp_path / "split"), "--img-size", "64",
                            "--prompts", "box", "--refine", "0", "--no-progress", "--split", "val"])) in (0, 1)
    out = capsys.readouterr().out
    assert "the 'val' file" in out and "val.json: 1 images" in out


def test_cli_fails_when_nothing_was_evaluated(tmp_path, capsys):
    root = generate_dataset(tmp_path / "ds", 2, seed=0, image_size=(96, 128))
    for image in (root / "images").iterdir():
        image.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = run_miou(_parse(["--model", "edgesam", "--data", str(root), "--img-size", "64", "--no-progress"]))
    assert code == 1
    assert "error" in capsys.readouterr().err


def test_wrong_width_height_in_the_json_is_an_error_naming_the_fields(tmp_path, capsys):
    root = generate_dataset(tmp_path / "ds", 2, seed=0, image_size=(96, 128))
    _edit_annotations(root, lambda d: d["images"][0].update(width=200, height=96))  # not a resize: 128 wide
    code = run_miou(_parse(["--model", "edgesam", "--data", str(root), "--img-size", "64", "--prompts", "box",
                            "--refine", "0", "--no-progress"]))
    captured = capsys.readouterr()
    assert code == 1
    assert "width=200, height=96" in captured.out and "1 image(s) failed" in captured.err


def test_det_fails_on_a_dataset_without_annotations(tmp_path, capsys):
    from powersam.cli.eval import add_det_arguments, run_det

    root = generate_dataset(tmp_path / "ds", 2, seed=0, image_size=(96, 128))
    _edit_annotations(root, lambda d: d.update(annotations=[]))
    args = add_det_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", "powersam_s", "--data", str(root), "--img-size", "64", "--no-progress"])
    assert run_det(args) == 1
    assert "nothing was evaluated: 0 annotations" in capsys.readouterr().err
