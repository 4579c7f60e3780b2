"""Strict state-dict loading that explains every mismatch.

``nn.Module.load_state_dict(strict=True)`` fails with one long unordered key list; :func:`load_state_dict_strict`
checks keys and shapes before copying anything and raises :class:`CheckpointMismatchError` with the keys grouped
by component, both shapes, a guess of what the file is, and a hint when a prefix explains the difference.
Optional components (absent entirely) and ignored file keys are allowed and listed in the :class:`LoadReport`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .identify import _identify
from .io import CheckpointError, CheckpointMismatchError

__all__ = ["LoadReport", "load_state_dict_strict"]

_MAX_KEYS_PER_GROUP = 20
_MAX_GROUPS = 30


@dataclass
class LoadReport:
    """What :func:`load_state_dict_strict` did."""

    source: str
    loaded: int
    ignored_keys: list[str] = field(default_factory=list)
    absent_optional_prefixes: list[str] = field(default_factory=list)
    left_at_init: list[str] = field(default_factory=list)
    dtype_converted: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.source}: loaded {self.loaded} tensors"]
        if self.ignored_keys:
            counts: dict[str, int] = {}
            for key in self.ignored_keys:
                counts[key.split(".", 1)[0]] = counts.get(key.split(".", 1)[0], 0) + 1
            lines.append(f"  ignored {len(self.ignored_keys)} checkpoint keys: " + ", ".join(
                f"{top}.* ({n})" for top, n in counts.items()))
        for prefix in self.absent_optional_prefixes:
            count = sum(k.startswith(prefix) for k in self.left_at_init)
            lines.append(f"  {prefix}* not in checkpoint, left at initialisation ({count} tensors)")
        if self.dtype_converted:
            lines.append(f"  {len(self.dtype_converted)} tensors converted to the model's dtype")
        return "\n".join(lines)


def _normalise_prefixes(prefixes: tuple[str, ...] | list[str] | str, name: str) -> tuple[str, ...]:
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    for p in prefixes:
        if not isinstance(p, str) or not p.strip("."):
            raise ValueError(f"{name} must be non-empty strings, got {p!r}")
    return tuple(p if p.endswith(".") else p + "." for p in prefixes)


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key.startswith(p) or key == p[:-1] for p in prefixes)


def _group_of(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[: max(1, min(2, len(parts) - 1))])


def _group_keys(keys: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(_group_of(key), []).append(key)
    return groups


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _format_section(title: str, lines_by_key: dict[str, str], verb: str) -> list[str]:
    out = [title]
    groups = _group_keys(list(lines_by_key))
    for i, (group, keys) in enumerate(groups.items()):
        if i == _MAX_GROUPS:
            out.append(f"  … and {len(groups) - _MAX_GROUPS} more groups")
            break
        out.append(f"  {group}: {len(keys)} {verb}")
        out.extend(f"    {lines_by_key[k]}" for k in keys[:_MAX_KEYS_PER_GROUP])
        if len(keys) > _MAX_KEYS_PER_GROUP:
            out.append(f"    … and {len(keys) - _MAX_KEYS_PER_GROUP} more")
    return out


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str | None:
    """Spot a prefix that the file's keys carry and the model's lack, or the reverse."""
    for longer, shorter, text in (
        (unexpected, set(missing), "{hits} of the {n} unexpected keys become model keys once '{prefix}' is "
                                   "removed: the file's keys carry an extra '{prefix}' prefix"),
        (missing, set(unexpected), "{hits} of the {n} missing keys are in the file without the prefix "
                                   "'{prefix}': the model's keys carry an extra '{prefix}' prefix"),
    ):
        for key in longer[:50]:
            for candidate in shorter:
                if key.endswith("." + candidate):
                    prefix = key[: len(key) - len(candidate)]
                    hits = sum(k.startswith(prefix) and k[len(prefix):] in shorter for k in longer)
                    if hits >= max(1, len(longer) // 2):
                        return text.format(hits=hits, n=len(longer), prefix=prefix)
    return None


def _mismatch_message(
    model: nn.Module,
    file_state: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    source: str,
    missing: list[str],
    unexpected: list[str],
    wrong_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    partial_optional: dict[str, tuple[int, int]],
) -> str:
    counts = ", ".join(f"{n} {what}" for n, what in (
        (len(missing), "missing"), (len(unexpected), "unexpected"), (len(wrong_shape), "with the wrong shape"))
        if n)
    lines = [f"{source} does not fit {type(model).__name__}: {counts} "
             f"(model has {len(expected)} keys, checkpoint {len(file_state)})."]
    file_guess, model_guess = _identify(file_state), _identify(expected)
    if file_guess is not None:
        text = f"This looks like a {file_guess[0]} checkpoint" + (f" ({file_guess[1]})" if file_guess[1] else "")
        if model_guess is not None:
            text += f"; the model is {model_guess[0]}" + (f" ({model_guess[1]})" if model_guess[1] else "")
        lines.append(text + ".")
    for prefix, (present, total) in partial_optional.items():
        lines.append(f"Optional component '{prefix}' is only partly in the checkpoint ({present} of {total} "
                     f"keys); it must be entirely present or entirely absent.")
    if missing:
        lines += _format_section("Missing from the checkpoint (in the model, not in the file):",
                                 {k: f"{k} {_shape(expected[k])}" for k in missing}, "missing")
    if unexpected:
        lines += _format_section("Unexpected in the checkpoint (in the file, not in the model):",
                                 {k: f"{k} {_shape(file_state[k])}" for k in unexpected}, "unexpected")
    if wrong_shape:
        lines += _format_section("Wrong shape:", {k: f"{k}: file {f} vs model {m}" for k, f, m in wrong_shape},
                                 "with the wrong shape")
    hint = _prefix_hint(missing, unexpected) if missing and unexpected else None
    if hint:
        lines.append(f"Hint: {hint}.")
    return "\n".join(lines)


# Trained weights, BatchNorm statistics and buffers stay many orders of magnitude below this; random bytes written
# over a float32 tensor give NaN, inf or values up to 3.4e38.
IMPLAUSIBLE_MAGNITUDE = 1e15


def check_weight_values(state_dict: Mapping[str, Tensor], source: str) -> None:
    """CheckpointError naming the tensors that hold NaN, ±inf or implausibly large values (a damaged file:
    it would load, then give NaN scores and empty masks without any error)."""
    bad = []
    for key, value in state_dict.items():
        if not value.is_floating_point() or value.numel() == 0:
            continue
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            bad.append(f"{key} ({int((~finite).sum())} NaN/inf values)")
        elif float(value.abs().max()) > IMPLAUSIBLE_MAGNITUDE:
            bad.append(f"{key} (|value| up to {float(value.abs().max()):.3g})")
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} tensors hold NaN, inf or implausible values, so the file is "
                              f"damaged (or was saved from a diverged run): " + "; ".join(bad[:5])
                              + (" …" if len(bad) > 5 else ""))


def load_state_dict_strict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: str = "checkpoint",
    optional_prefixes: tuple[str, ...] = (),
    ignore_prefixes: tuple[str, ...] = (),
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` after checking that keys and shapes match exactly.

    Args:
        model: the module to fill (its ``state_dict()`` defines the expected keys, persistent buffers included).
        state_dict: name → tensor, e.g. from :func:`read_checkpoint`.
        source: how to name the file in messages (e.g. its path).
        optional_prefixes: model components (e.g. ``"box_generator."``) that may be entirely absent from the
            file; they then stay at initialisation. Partly present is an error.
        ignore_prefixes: file keys to drop (e.g. EdgeSAM's ``"fpn."``, ``"rpn_head."``); they are reported.

    Raises:
        CheckpointMismatchError: anything missing, unexpected or of the wrong shape, with a readable diff.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of name → tensor, got {type(state_dict).__name__}")
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise TypeError(f"state_dict entry {key!r} must map a str to a tensor, got {type(value).__name__}")
    optional = _normalise_prefixes(optional_prefixes, "optional_prefixes")
    ignore = _normalise_prefixes(ignore_prefixes, "ignore_prefixes")

    expected = model.state_dict()
    ignored = [k for k in state_dict if _under(k, ignore)]
    file_state = {k: v for k, v in state_dict.items() if not _under(k, ignore)}

    absent_optional: list[str] = []
    left_at_init: list[str] = []
    partial_optional: dict[str, tuple[int, int]] = {}
    for prefix in optional:
        component = [k for k in expected if _under(k, (prefix,))]
        present = sum(k in file_state for k in component)
        if component and present == 0:
            absent_optional.append(prefix)
            left_at_init.extend(component)
        elif present < len(component):
            partial_optional[prefix] = (present, len(component))
    skipped = set(left_at_init)
    missing = [k for k in expected if k not in file_state and k not in skipped]
    unexpected = [k for k in file_state if k not in expected]
    wrong_shape = [(k, _shape(v), _shape(expected[k])) for k, v in file_state.items()
                   if k in expected and _shape(v) != _shape(expected[k])]
    if missing or unexpected or wrong_shape:
        message = _mismatch_message(model, state_dict, expected, source, missing, unexpected, wrong_shape,
                                    partial_optional)
        raise CheckpointMismatchError(message, missing, unexpected, wrong_shape)

    check_weight_values(file_state, source)
    converted = [k for k, v in file_state.items() if v.dtype != expected[k].dtype]
    result = model.load_state_dict(file_state, strict=False)
    # Modules with custom _load_from_state_dict hooks could still disagree; never let that pass silently.
    leftover = sorted(set(result.missing_keys) - skipped)
    if leftover or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"{source}: {type(model).__name__}.load_state_dict reported missing {leftover[:20]} and "
            f"unexpected {list(result.unexpected_keys)[:20]} after the key check passed",
            leftover, list(result.unexpected_keys))
    return LoadReport(source=source, loaded=len(file_state), ignored_keys=ignored,
                      absent_optional_prefixes=absent_optional, left_at_init=left_at_init,
                      dtype_converted=converted)
