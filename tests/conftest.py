"""Shared test configuration: CPU-friendly defaults and the optional real-data location."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))  # for reference_impls

# CI has two cores; intra-op threading on tiny tensors mostly adds overhead and noise.
torch.set_num_threads(int(os.environ.get("POWERSAM_TEST_THREADS", "1")))

SHARED_DATA = Path(os.environ.get("POWERSAM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with the real COCO datasets; tests that need it skip on a fresh clone without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


# A tiny end-to-end pipeline run: synthetic data, 128-px models, one short epoch per stage, the shipped teacher
# (at 64 px the scenes' equipment is a few pixels and even the shipped teacher scores ~0, so no floor could hold).
TINY_PIPELINE = [
    "img_size=128",
    "synth.num_images=20",
    "synth.height=128",
    "synth.width=160",
    "synth.max_objects=3",
    "teacher.epochs=1",
    "teacher.batch_size=4",
    "stage1.epochs=1",
    "stage1.batch_size=4",
    "stage2.epochs=1",
    "stage2.batch_size=4",
    "stage3.epochs=1",
    "stage3.batch_size=4",
    "stage3.warmup_epochs=0",
    "stage3.no_aug_epochs=0",
    "eval.max_images=4",
    "eval.overlays=1",
    "eval.export_onnx=false",
]


@pytest.fixture(scope="session")
def tiny_pipeline_overrides() -> list[str]:
    """The tiny run's ``--set`` overrides (a fixture: ``from conftest import`` finds whichever conftest comes first)."""
    return list(TINY_PIPELINE)


@pytest.fixture(scope="session")
def tiny_pipeline_run(tmp_path_factory):
    """``(run folder, config, metrics)`` of the tiny pipeline run; ``folder / "powersam_s.pt"`` is a trained model."""
    from powersam.train.config import apply_overrides
    from powersam.train.pipeline import demo_config, run_pipeline

    out = tmp_path_factory.mktemp("pipeline")
    cfg = apply_overrides(demo_config(out), TINY_PIPELINE)
    return out, cfg, run_pipeline(cfg)
