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


@pytest.fixture(scope="module")
def predictor():
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
    for extra, message in ((["--img-size", "37"], "multiple of 16"), (["--img-size", "128"], "img_size 64"),
                           (["--device", "cuda:7"], "device")):
        if extra[0] == "--device" and torch.cuda.device_count() > 7:
            continue
        args = parser.parse_args([str(image), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"),
                                  "--boxes", "5,5,30,30", *extra])
        assert run_predict(args) == 1
        assert message in capsys.readouterr().err
