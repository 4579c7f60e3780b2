"""Where shipped weights came from: training time from a run's metrics, the machine, the git commit.

Used by the scripts that ship weights (``scripts/ship_teacher.py``, ``scripts/ship_student.py``) to fill the JSON
record that sits beside each file in this folder.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

__all__ = ["earlier_run_record", "git_commit", "machine", "training_seconds"]


def training_seconds(metrics_file: Path) -> float:
    """Σ steps × seconds per step over the train records of ``metrics.jsonl`` (pauses between resumes excluded)."""
    total, previous = 0.0, 0
    for line in Path(metrics_file).read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") != "train":
            continue
        step = int(record["global_step"])
        total += max(step - previous, 0) * float(record["time"])
        previous = step
    return total


def machine() -> str:
    """CPU model, core count, torch threads and version, OS: one line for the record."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, " \
           f"{platform.system()} {platform.machine()}"


def git_commit() -> str:
    """HEAD of the working directory's repository, or ``unknown``."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def earlier_run_record(meta: dict, run_dir: Path, command: str) -> dict:
    """The history entry of an earlier run on this machine that a shipped file builds on: ``meta`` of the file it
    wrote, ``run_dir`` its folder (``config.yaml``, ``metrics.jsonl``), ``command`` the ``powersam train`` stage."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    stopped = " (stopped early; weights from its last.pt)" if meta.get("partial") else ""
    return {"command": f"powersam train {command} --config {run_dir / 'config.yaml'}{stopped}",
            "steps": meta.get("steps"), "scene_seed": meta.get("scene_seed"), "scene_offset": meta.get("scene_offset"),
            "next_scene_offset": meta.get("next_scene_offset"),
            "wall_seconds": training_seconds(metrics) if metrics.is_file() else None, "machine": machine(),
            "git_commit": git_commit()}
