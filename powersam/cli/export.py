"""``powersam export``: options → :func:`powersam.deploy.onnx_export.export_onnx` and its FP16 / INT8 twins, or
TensorRT engines.

Export formats are registered here (``--format NAME`` → a runner that takes the parsed options and returns the files
written; a format's own flags come through an arguments hook). :func:`register_export_formats` adds ``--fp16``,
``--int8`` and ``--format tensorrt``. Building the parser imports neither torch nor onnx.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..deploy.options import CALIBRATION_METHOD_NAMES, MIN_OPSET

ExportRunner = Callable[[argparse.Namespace], list[Path]]
ArgumentsHook = Callable[[argparse.ArgumentParser], None]
MultimaskOutput = Union[bool, int, None]

# Export back ends of ``powersam export --format``. Another format (e.g. TensorRT) registers itself with
# register_export_format before the parser is built; its own flags (``--int8``, …) come through its hook.
EXPORT_FORMATS: dict[str, ExportRunner] = {}
_ARGUMENT_HOOKS: list[ArgumentsHook] = []
_registered = False


def register_export_format(name: str, runner: ExportRunner, add_arguments: Optional[ArgumentsHook] = None) -> None:
    """Make ``powersam export --format NAME`` call ``runner(args)`` (returns the files written); ``add_arguments``
    adds the format's own options to the ``export`` parser."""
    EXPORT_FORMATS[name] = runner
    if add_arguments is not None:
        _ARGUMENT_HOOKS.append(add_arguments)


def _parse_multimask(text: str) -> MultimaskOutput:
    if text == "all":
        return None
    if text in ("1", "3", "4"):
        return int(text)
    raise argparse.ArgumentTypeError(f"expected 1, 3, 4 or all, got {text!r}")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``powersam export``."""
    parser.add_argument("--model", default=None, help="zoo name (see `powersam models`); optional with a checkpoint "
                        "written by powersam, which records it")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights to load (strict)")
    parser.add_argument("--format", default="onnx", choices=sorted(EXPORT_FORMATS), help="export format (default onnx)")
    parser.add_argument("--out", type=Path, required=True, help="output .onnx file (with --interactive: X.onnx gives "
                        "X.encoder.onnx + X.decoder.onnx; a folder gets encoder.onnx + decoder.onnx)")
    parser.add_argument("--size", type=int, default=None,
                        help="network input side (default: the size the checkpoint records, else 1024)")
    parser.add_argument("--interactive", action="store_true", help="export the SAM encoder/decoder pair instead of "
                        "the integrated detect-and-segment graph")
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset (default 17, at least {MIN_OPSET})")
    parser.add_argument("--bilinear", action="store_true", help="bilinear instead of the trained bicubic fuse-neck "
                        "upsampling (changes outputs slightly)")
    parser.add_argument("--conf", type=float, default=None, help="default score threshold stored in the graph metadata")
    parser.add_argument("--iou", type=float, default=None, help="default NMS IoU stored in the graph metadata")
    parser.add_argument("--max-det", type=int, default=None, help="default detection cap stored in the graph metadata")
    parser.add_argument("--multimask", type=_parse_multimask, default=None, metavar="{1,3,4,all}",
                        help="decoder mask outputs (default all: the runtime chooses per call)")
    parser.add_argument("--simplify", action="store_true", help="run onnxsim over the graphs (needs onnxsim)")
    for hook in _ARGUMENT_HOOKS:
        hook(parser)


def _run_onnx(args: argparse.Namespace) -> list[Path]:
    from ..deploy.onnx_export import export_onnx

    return export_onnx(
        args.model,
        args.out,
        checkpoint=args.checkpoint,
        img_size=args.size,
        interactive=args.interactive,
        opset=args.opset,
        upsample_mode="bilinear" if args.bilinear else None,
        score_thr=args.conf,
        nms_iou=args.iou,
        max_det=args.max_det,
        multimask_output=args.multimask,
        simplify=args.simplify,
    )


register_export_format("onnx", _run_onnx)


def run_export(args: argparse.Namespace) -> int:
    """``powersam export``: write the files and print one line per file."""
    runner = EXPORT_FORMATS.get(args.format)
    if runner is None:
        raise ValueError(f"unknown export format {args.format!r}; known: {', '.join(sorted(EXPORT_FORMATS))}")
    started = time.perf_counter()
    paths = runner(args)
    elapsed = time.perf_counter() - started
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    print(f"export took {elapsed:.1f} s")
    return 0


# ---------------------------------------------------------------------------------------------- FP16, INT8, TensorRT
def add_fp16_arguments(parser: argparse.ArgumentParser) -> None:
    """``--fp16`` on ``powersam export --format onnx``."""
    parser.add_argument("--fp16", action="store_true", help="also write X.fp16.onnx: FP16 compute, float32 inputs "
                        "and outputs (for ONNX Runtime's CUDA provider, or a TensorRT engine built on the device)")


def fp16_runner(export: ExportRunner) -> ExportRunner:
    """The ``--format onnx`` back end with ``--fp16``: ``export``'s files plus FP16 twins of its float graphs
    (:func:`powersam.deploy.precision.float16_twins`)."""

    def run(args: argparse.Namespace) -> list[Path]:
        paths = export(args)
        if not getattr(args, "fp16", False):
            return paths
        from ..deploy.precision import float16_twins

        return [*paths, *float16_twins(paths)]

    return run


def add_int8_arguments(parser: argparse.ArgumentParser) -> None:
    """``--int8`` and its calibration options on ``powersam export``."""
    group = parser.add_argument_group("INT8 quantisation")
    group.add_argument("--int8", action="store_true", help="also write X.int8.onnx: static INT8 (QDQ) quantisation of "
                       "the encoder / integrated graph, decoder kept float (--format tensorrt: an INT8 engine)")
    group.add_argument("--calib", default=None, metavar="IMAGES", help="calibration images: folder, glob or file "
                       "(default: synthetic substation scenes; images from the deployment domain calibrate better)")
    group.add_argument("--num-calib", type=int, default=32, help="number of calibration images (default 32)")
    group.add_argument("--calib-method", choices=sorted(CALIBRATION_METHOD_NAMES), default="minmax",
                       help="activation range calibration of the ONNX INT8 graphs (default minmax)")
    group.add_argument("--int8-decoder", action="store_true", help="with --int8: also quantise the mask decoder's "
                       "weight MatMuls (dynamic INT8; X.int8.onnx, or decoder.int8.onnx as the INT8 encoder's partner)")


def int8_runner(export_fp32: ExportRunner) -> ExportRunner:
    """The ``--format onnx`` back end with ``--int8``: ``export_fp32``'s files, plus their INT8 twins when asked."""

    def run(args: argparse.Namespace) -> list[Path]:
        int8 = bool(getattr(args, "int8", False))
        for flag, given in (("--calib", getattr(args, "calib", None) is not None),
                            ("--int8-decoder", bool(getattr(args, "int8_decoder", False)))):
            if given and not int8:
                raise ValueError(f"{flag} only applies with --int8")
        paths = export_fp32(args)
        if not int8:
            return paths
        from ..deploy.quantize import quantize_export

        return [*paths, *quantize_export(paths, args.calib, args.num_calib, args.calib_method,
                                         decoder=bool(getattr(args, "int8_decoder", False)))]

    return run


def add_tensorrt_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``powersam export --format tensorrt`` (``--int8``/``--calib``/``--num-calib``/``--calib-method``
    are shared with the ONNX INT8 export, see :func:`add_int8_arguments`)."""
    group = parser.add_argument_group("TensorRT (--format tensorrt)")
    group.add_argument("--no-fp16", action="store_true", help="build an FP32 engine (default FP16; --int8: INT8 "
                       "convolutions, the rest FP32)")
    group.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace limit in GiB (default 4)")


def tensorrt_runner(export_fp32: ExportRunner) -> ExportRunner:
    """The ``--format tensorrt`` back end: check TensorRT and the GPU first, export the float ONNX graph(s) with
    ``export_fp32`` (``X.engine`` is exported as ``X.onnx``), then build one engine per graph beside it."""

    def run(args: argparse.Namespace) -> list[Path]:
        from ..deploy.tensorrt import ENGINE_SUFFIX, build_engine, require_tensorrt

        if getattr(args, "int8_decoder", False):  # before the TensorRT check: the answer is the same on any machine
            raise ValueError("--int8-decoder is for ONNX Runtime graphs (--format onnx --int8); TensorRT builds "
                             "decoder graphs FP16")
        require_tensorrt()  # before the export: without TensorRT or a GPU there is nothing to build
        if getattr(args, "fp16", False) and args.no_fp16:
            raise ValueError("--fp16 and --no-fp16 contradict each other (FP16 is the default engine precision)")
        if getattr(args, "int8", False) and args.no_fp16:
            raise ValueError("--int8 and --no-fp16: choose one (INT8 engines keep their other layers FP32 already, "
                             "and build decoder graphs FP16)")
        precision = "int8" if getattr(args, "int8", False) else "fp32" if args.no_fp16 else "fp16"
        onnx_out = Path(args.out).with_suffix(".onnx") if Path(args.out).suffix == ENGINE_SUFFIX else Path(args.out)
        graphs = export_fp32(argparse.Namespace(**{**vars(args), "out": onnx_out}))
        engines = []
        for graph in graphs:
            engines.append(build_engine(
                graph, graph.with_suffix(ENGINE_SUFFIX), precision, getattr(args, "calib", None),
                args.workspace_gb, num_calib=getattr(args, "num_calib", 32),
                calib_method=getattr(args, "calib_method", "minmax")))
        return [*graphs, *engines]

    return run


def register_export_formats() -> None:
    """Add ``--int8`` / ``--fp16`` (INT8 and FP16 twins of the ONNX export) and ``--format tensorrt`` to
    ``powersam export``; idempotent.

    Call before the ``export`` parser is built (:func:`add_export_arguments` reads the registered hooks).
    """
    global _registered
    if _registered:
        return

    def add_twin_arguments(parser: argparse.ArgumentParser) -> None:
        add_fp16_arguments(parser)
        add_int8_arguments(parser)

    export_fp32 = EXPORT_FORMATS["onnx"]
    register_export_format("onnx", fp16_runner(int8_runner(export_fp32)), add_twin_arguments)
    register_export_format("tensorrt", tensorrt_runner(export_fp32), add_tensorrt_arguments)
    _registered = True


def register(sub: Any) -> None:
    """Add ``export`` (with every registered format) to the ``powersam`` sub-command parsers ``sub``."""
    p = sub.add_parser("export", help="export to ONNX: integrated detect-and-segment graph, or the interactive pair")
    register_export_formats()  # --int8 / --fp16 on the onnx format, and --format tensorrt
    add_export_arguments(p)
    p.set_defaults(func=run_export)
