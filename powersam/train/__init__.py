"""Training, one function per stage: ``powersam.train.run(stage, config)`` or ``powersam.train.train_<stage>(config)``.

==============  ===================================================  ==========================================
stage           what                                                 config
==============  ===================================================  ==========================================
teacher         stage 0: fine-tune a SAM teacher or train one        :class:`~.teacher.TeacherConfig`
encoder         stage 1: distil the image embeddings into RepViT     :class:`~.distill_encoder.EncoderDistillConfig`
decoder         stage 2: distil the mask decoder                     :class:`~.distill_decoder.DecoderDistillConfig`
bbpg            stage 3: box-prompt generator on the frozen backbone :class:`~.bbpg.BBPGConfig`
pipeline        all stages, evaluation, export and report            :class:`~.pipeline.PipelineConfig`
synth-teacher   pretrain a teacher on procedural scenes              ``powersam.train.pretrain`` (where present)
==============  ===================================================  ==========================================

Function names: ``train_teacher``, ``train_encoder``, ``train_decoder``, ``train_bbpg``, ``run_pipeline``,
``pretrain_teacher`` (stage names as on the command line: ``run("synth-teacher", cfg)``). Not ``powersam.train.teacher``:
``teacher``, ``bbpg`` and ``pipeline`` are this package's submodules, and importing one (``from powersam.train.teacher
import ...``) rebinds that attribute to the module, so a function of the same name would vanish at random.

``config`` is the stage's dataclass, a dict of its fields, or a YAML file path (as ``--config`` on the command line).
Each stage returns what its module's function returns (the checkpoint path; the pipeline its metrics). Everything
imports lazily: ``import powersam.train`` costs nothing, and torch loads with the first stage called.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

__all__ = ["STAGES", "pretrain_teacher", "run", "run_pipeline", "train_bbpg", "train_decoder", "train_encoder",
           "train_teacher"]

# stage → (module, function, config class)
STAGES: dict[str, tuple[str, str, str]] = {
    "teacher": ("teacher", "train_teacher", "TeacherConfig"),
    "encoder": ("distill_encoder", "distill_encoder", "EncoderDistillConfig"),
    "decoder": ("distill_decoder", "distill_decoder", "DecoderDistillConfig"),
    "bbpg": ("bbpg", "train_bbpg", "BBPGConfig"),
    "pipeline": ("pipeline", "run_pipeline", "PipelineConfig"),
    "synth-teacher": ("pretrain", "pretrain_teacher", "SynthTeacherConfig"),
}


def _stage(name: str) -> Callable[..., Any]:
    module_name, function_name, config_name = STAGES[name]

    def run(config: Any, resume: bool = False) -> Any:
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{module_name}":
                raise
            raise NotImplementedError(f"training stage {name!r} needs powersam/train/{module_name}.py, absent "
                                      "from this installation") from None
        config_cls = getattr(module, config_name)
        if isinstance(config, (str, Path)):
            from .config import load_config

            config = load_config(config, config_cls)
        elif isinstance(config, dict):
            from .config import config_from_dict

            config = config_from_dict(config, config_cls)
        elif not isinstance(config, config_cls):
            raise TypeError(f"training stage {name!r} takes a {config_cls.__name__}, a dict or a YAML path; "
                            f"got {type(config).__name__}")
        return getattr(module, function_name)(config, resume=resume)

    run.__name__ = run.__qualname__ = function_name if name != "encoder" and name != "decoder" else f"train_{name}"
    run.__doc__ = (f"Run ``powersam.train.{module_name}.{function_name}`` (config: ``{config_name}``, a dict of its "
                   "fields, or a YAML path).")
    return run


def run(stage: str, config: Any, resume: bool = False) -> Any:
    """Run one training stage by name (``teacher``, ``encoder``, ``decoder``, ``bbpg``, ``pipeline``,
    ``synth-teacher``) on ``config`` (its dataclass, a dict, or a YAML path); ``resume`` continues from last.pt."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; stages: {', '.join(STAGES)}")
    return _stage(stage)(config, resume=resume)


train_teacher = _stage("teacher")
train_encoder = _stage("encoder")
train_decoder = _stage("decoder")
train_bbpg = _stage("bbpg")
run_pipeline = _stage("pipeline")
pretrain_teacher = _stage("synth-teacher")
