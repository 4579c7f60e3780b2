"""Two-process DDP (gloo, CPU) run of the toy model through torchrun: ranks agree, rank 0 alone writes,
and a resume under DDP reproduces the uninterrupted run. Takes about 5–10 s."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddp_toy import tensor_hash
from powersam.train.metrics import read_metrics
from powersam.train.state import load_training_state

SCRIPT = Path(__file__).with_name("ddp_toy.py")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(SCRIPT), str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    finished = sorted(path.name for path in out.glob("rank*.json"))  # written before the ranks leave the group
    assert result.returncode == 0, (f"torchrun failed ({result.returncode}; rank files written: {finished}):\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return out


def test_ranks_hold_identical_weights(ddp_run):
    ranks = [json.loads((ddp_run / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for run in ("full", "resumed"):
        assert ranks[0][run]["model"]["params"] == ranks[1][run]["model"]["params"]
        assert ranks[0][run]["ema"]["params"] == ranks[1][run]["ema"]["params"]
    # Without SyncBatchNorm (which has no CPU path) each rank keeps its own BN running statistics:
    # this also shows that the two ranks really saw different data.
    assert ranks[0]["full"]["model"]["buffers"] != ranks[1]["full"]["model"]["buffers"]


def test_resume_under_ddp_matches_uninterrupted_run(ddp_run):
    for r in range(2):
        record = json.loads((ddp_run / f"rank{r}.json").read_text())
        assert record["resumed"]["model"] == record["full"]["model"]
        assert record["resumed"]["ema"]["params"] == record["full"]["ema"]["params"]
    # rank 0's EMA buffers are the ones saved; other ranks restart theirs from rank 0's copy
    rank0 = json.loads((ddp_run / "rank0.json").read_text())
    assert rank0["resumed"]["ema"] == rank0["full"]["ema"]


def test_only_rank0_writes(ddp_run):
    for run in ("full", "resumed"):
        folder = ddp_run / run
        assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "metrics.jsonl"]
        # 2 epochs × 4 steps (48 samples, 2 ranks, batch 6), a record every 2 steps; a second writer would double it
        assert [r["global_step"] for r in read_metrics(folder / "metrics.jsonl")] == [2, 4, 6, 8]
        state = load_training_state(folder / "last.pt")
        assert state["world_size"] == 2 and len(state["rng"]) == 2  # every rank's RNG state was gathered
        assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # seeded seed + rank
        params = {k: v for k, v in state["model"].items() if "running" not in k and "num_batches" not in k}
        rank0 = json.loads((ddp_run / "rank0.json").read_text())
        assert tensor_hash(params.items()) == rank0[run]["model"]["params"]
