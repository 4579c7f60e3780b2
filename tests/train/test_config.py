"""YAML ↔ dataclass configs: round trip, unknown / missing keys, type checks, ``--set`` overrides."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from powersam.cli.options import add_config_arguments, config_from_args
from powersam.train.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
)


@dataclass
class OptimConfig:
    kind: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    clip: Optional[float] = None


@dataclass
class DataConfig:
    root: Path = Path("data")
    batch_size: int = 8
    classes: list[str] = field(default_factory=lambda: ["insulator"])


@dataclass
class StageConfig:
    name: str
    epochs: int = 100
    amp: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lr_mults: dict[str, float] = field(default_factory=dict)
    teacher: Optional[OptimConfig] = None


YAML = """\
name: stage1
epochs: 50
optim:
  lr: 1e-3          # PyYAML reads this as a string; the float field converts it
  betas: [0.8, 0.99]
  clip: 5
data:
  root: /tmp/substation
  classes: [insulator, breaker]
lr_mults:
  backbone: 0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stage.yaml"
    path.write_text(text)
    return path


def test_load_types_and_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, YAML), StageConfig)
    assert cfg.name == "stage1" and cfg.epochs == 50 and cfg.amp is False
    assert cfg.optim == OptimConfig("adamw", 1e-3, (0.8, 0.99), 5.0)
    assert isinstance(cfg.optim.lr, float) and isinstance(cfg.optim.clip, float) and isinstance(cfg.optim.betas, tuple)
    assert cfg.data.root == Path("/tmp/substation") and cfg.data.batch_size == 8
    assert cfg.lr_mults == {"backbone": 0.0} and cfg.teacher is None
    dumped = tmp_path / "dumped.yaml"
    text = dump_config(cfg, dumped)
    assert dumped.read_text() == text and text.startswith("name: stage1\n")  # field order kept
    assert load_config(dumped, StageConfig) == cfg


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "name: x\noptim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr' in .*stage\.yaml.*did you mean 'lr'"):
        load_config(path, StageConfig)
    with pytest.raises(ConfigError, match=r"'zzz' in .*stage\.yaml; valid keys: name, epochs"):
        load_config(write(tmp_path, "name: x\nzzz: 1\n"), StageConfig)


def test_missing_required_and_wrong_types(tmp_path):
    with pytest.raises(ConfigError, match=r"name missing in .*stage\.yaml"):
        load_config(write(tmp_path, "epochs: 3\n"), StageConfig)
    bad = {
        "epochs: 2.5": r"'epochs'.*integer",
        "epochs: true": r"'epochs'.*integer",
        "amp: 1": r"'amp'.*true or false",
        "optim: {kind: adam}": r"'optim\.kind'.*one of",
        "optim: {betas: [0.9]}": r"'optim\.betas'.*2 items",
        "optim: {lr: fast}": r"'optim\.lr'.*number",
        "data: 3": r"'data'.*mapping",
        "name: 3": r"'name'.*string",
    }
    for line, pattern in bad.items():
        text = line if line.startswith("name") else "name: x\n" + line
        with pytest.raises(ConfigError, match=pattern):
            load_config(write(tmp_path, text + "\n"), StageConfig)
    with pytest.raises(ConfigError, match="top level"):
        load_config(write(tmp_path, "- 1\n- 2\n"), StageConfig)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml", StageConfig)


def test_empty_file_uses_defaults_when_possible(tmp_path):
    @dataclass
    class Defaults:
        epochs: int = 3

    assert config_from_dict(None, Defaults) == Defaults()


def test_set_overrides_with_type_conversion(tmp_path):
    cfg = load_config(write(tmp_path, YAML), StageConfig, overrides=["epochs=3", "optim.lr=2e-4", "data.batch_size=16"])
    assert cfg.epochs == 3 and cfg.optim.lr == 2e-4 and cfg.data.batch_size == 16
    cfg = apply_overrides(cfg, ["name=007", "amp=true", "optim.clip=null", "optim.betas=[0.5, 0.6]",
                                "data.classes=[a, b, c]", "lr_mults.neck=0.5", "teacher.lr=3"])
    assert cfg.name == "007"  # string field: the text as it is, not the int 7
    assert cfg.amp is True and cfg.optim.clip is None and cfg.optim.betas == (0.5, 0.6)
    assert cfg.data.classes == ["a", "b", "c"] and cfg.lr_mults == {"backbone": 0.0, "neck": 0.5}
    assert cfg.teacher == OptimConfig(lr=3.0)  # an optional section is created on demand


def test_set_override_errors_name_the_key():
    cfg = StageConfig(name="x")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr' in --set"):
        apply_overrides(cfg, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"'data\.batch_size' in --set overrides must be an integer"):
        apply_overrides(cfg, ["data.batch_size=big"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides(cfg, ["epochs"])
    with pytest.raises(ConfigError, match=r"unknown config key 'epochs\.x'"):
        apply_overrides(cfg, ["epochs.x=1"])


def test_cli_arguments(tmp_path):
    parser = add_config_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--config", str(write(tmp_path, YAML)), "--set", "epochs=7", "--set", "optim.kind=sgd"])
    cfg = config_from_args(args, StageConfig)
    assert cfg.epochs == 7 and cfg.optim.kind == "sgd" and cfg.name == "stage1"

    @dataclass
    class Defaults:
        epochs: int = 3

    assert config_from_args(parser.parse_args(["--set", "epochs=4"]), Defaults) == Defaults(epochs=4)


def test_non_dataclass_rejected():
    with pytest.raises(TypeError, match="dataclass"):
        config_from_dict({}, dict)
