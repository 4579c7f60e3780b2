"""Speed and size benchmarks: ``powersam bench`` (the command line is :mod:`powersam.cli.bench`).

* :mod:`~powersam.bench.runner` — model-agnostic timing harness (stages, interleaving, median/p90, machine info);
* :mod:`~powersam.bench.pipelines` — each model × runtime (torch, ONNX Runtime, INT8) as frames of
  :mod:`~powersam.bench.frames`, which run the shared inference pipeline and report its stage timings;
* :mod:`~powersam.bench.plot` — latency vs mIoU / latency bar figures;
* :mod:`~powersam.bench.suite` — :func:`benchmark`, :func:`write_bench_outputs`, :func:`load_miou_results`.
"""
from __future__ import annotations

__all__ = ["benchmark", "load_miou_results", "write_bench_outputs"]


def __getattr__(name: str):
    # Lazy, so ``import powersam.bench.runner`` stays free of torch and the model zoo.
    if name in __all__:
        from . import suite

        return getattr(suite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
