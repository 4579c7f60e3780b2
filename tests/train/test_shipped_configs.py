"""Every config under configs/ loads strictly into the dataclass of the command its header names (an unknown or
mistyped key, e.g. a field renamed in code but not in the yaml, fails here instead of at a user's first run)."""
from pathlib import Path

import pytest

from powersam.prune.distill import PruneConfig
from powersam.train.bbpg import BBPGConfig
from powersam.train.config import load_config
from powersam.train.distill_decoder import DecoderDistillConfig
from powersam.train.distill_encoder import EncoderDistillConfig
from powersam.train.pipeline import PipelineConfig
from powersam.train.pretrain import SynthStudentConfig, SynthTeacherConfig
from powersam.train.pretrain_detector import SynthDetectorConfig
from powersam.train.teacher import TeacherConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CLASS_OF = {
    "paper/prune_vit_b.yaml": PruneConfig,
    "paper/stage1_encoder.yaml": EncoderDistillConfig,
    "paper/stage2_decoder.yaml": DecoderDistillConfig,
    "paper/stage3_bbpg.yaml": BBPGConfig,
    "paper/teacher_finetune.yaml": TeacherConfig,
    "pretrain/synth_detector.yaml": SynthDetectorConfig,
    "pretrain/synth_student.yaml": SynthStudentConfig,
    "pretrain/synth_teacher.yaml": SynthTeacherConfig,
    "real/insulators.yaml": PipelineConfig,
}


def test_every_shipped_config_is_listed():
    assert sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")) == sorted(CLASS_OF)


@pytest.mark.parametrize("name", sorted(CLASS_OF))
def test_shipped_config_loads(name):
    cfg = load_config(CONFIGS / name, CLASS_OF[name])
    assert isinstance(cfg, CLASS_OF[name])


def test_real_data_config_adapts_the_shipped_teacher_decoder():
    cfg = load_config(CONFIGS / "real/insulators.yaml", PipelineConfig)
    assert str(cfg.teacher.checkpoint) == "synth" and cfg.teacher.finetune == "decoder"
    assert cfg.img_size == 384 and cfg.eval.zoom == 4.0
