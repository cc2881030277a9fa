"""Predicted tensors for parametrized weights (``torch.nn.utils.parametrize``), written through ``right_inverse``.

A weight under a parametrization (``weight_norm``, ``spectral_norm``, ``orthogonal``, a user's own)
is not a parameter: the module computes ``conv.weight`` from ``conv.parametrizations.weight.original*``
on every access. The GHN predicts the weight the module computes; :func:`through_right_inverse`
turns each such prediction into values for the originals with the parametrizations'
``right_inverse`` (last registered first, as torch does), so that the module then computes the
predicted weight, up to what the parametrization itself enforces: weight norm gives it back
exactly, spectral norm computes it divided by its largest singular value (its ``right_inverse`` is
the identity; the power-iteration vectors are set to the exact top singular pair, so that the
division uses the true norm of the new weight, not an estimate left from the old one), orthogonal
computes its orthogonal factor. A parametrization without ``right_inverse`` (or one that refuses,
``NotImplementedError``) leaves the weight to its own initialisation, with the reason. Nothing is
written here: the caller writes the returned tensors with the others, and calls ``undo`` if
anything fails first (some ``right_inverse`` methods update buffers, e.g. orthogonal's ``base``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..errors import PredictionError
from .tensors import tile


def parametrized_tensors(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Every parametrized tensor of ``model``: full name (``"conv.weight"``) -> (its module, ``"weight"``)."""
    return {
        f"{path}.{name}" if path else name: (module, name)
        for path, module in model.named_modules()
        if parametrize.is_parametrized(module)
        for name in module.parametrizations
    }


@torch.no_grad()
def current_value(model: nn.Module, name: str) -> torch.Tensor | None:
    """The tensor a parametrized ``name`` computes now, or ``None`` if ``name`` is not parametrized."""
    owner = parametrized_tensors(model).get(name)
    return None if owner is None else getattr(owner[0], owner[1])


def _original_names(name: str, owner: tuple[nn.Module, str]) -> list[str]:
    """The parameter names of the originals behind the parametrized tensor ``name``."""
    module, tensor_name = owner
    originals = module.parametrizations[tensor_name]
    prefix = f"{name.rpartition('.')[0]}.parametrizations.{tensor_name}".lstrip(".")
    if originals.is_tensor:
        return [f"{prefix}.original"]
    return [f"{prefix}.original{i}" for i in range(originals.ntensors)]


@dataclass
class Inversion:
    """What :func:`through_right_inverse` found: tensors to write, weights left alone, and how to undo.

    Attributes:
        ready: the caller's tensors with each parametrized name replaced by its originals' values.
        skipped: original parameter name -> why it keeps its own initialisation.
        written_through: parametrized name -> its parametrizations' class names, for the report.
        buffers: ``(module, buffer name, new value)`` to set after the write (spectral norm's vectors).
    """

    ready: dict[str, torch.Tensor]
    skipped: dict[str, str] = field(default_factory=dict)
    written_through: dict[str, list[str]] = field(default_factory=dict)
    buffers: list[tuple[nn.Module, str, torch.Tensor]] = field(default_factory=list)
    _saved: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def commit(self) -> None:
        """Set the buffers that go with the written originals (call after writing ``ready``)."""
        with torch.no_grad():
            for module, name, value in self.buffers:
                getattr(module, name).copy_(value)

    def undo(self) -> None:
        """Put back every buffer a ``right_inverse`` replaced or changed."""
        with torch.no_grad():
            for module, name, tensor, copy in reversed(self._saved):
                setattr(module, name, tensor)
                tensor.copy_(copy)


def _save_buffers(originals: nn.Module, saved: list) -> None:
    for parametrization in originals:
        for name, buffer in parametrization.named_buffers(recurse=False):
            saved.append((parametrization, name, buffer, buffer.clone()))


def _missing_inverse(originals: nn.Module) -> list[str]:
    return [type(p).__name__ for p in originals if not callable(getattr(p, "right_inverse", None))]


def _spectral_vectors(parametrization: nn.Module, weight: torch.Tensor) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """Spectral norm's ``_u``/``_v`` set to the top singular pair of ``weight`` (float64 SVD)."""
    matrix = parametrization._reshape_weight_to_matrix(weight).detach().to(torch.float64)
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    dtype = parametrization._u.dtype
    return [(parametrization, "_u", u[:, 0].to(dtype)), (parametrization, "_v", vh[0].to(dtype))]


def _is_spectral_norm(parametrization: nn.Module) -> bool:
    return all(hasattr(parametrization, a) for a in ("_u", "_v", "_reshape_weight_to_matrix"))


@torch.no_grad()
def through_right_inverse(model: nn.Module, ready: Mapping[str, torch.Tensor]) -> Inversion:
    """Replace predicted parametrized weights in ``ready`` by values for their originals.

    Args:
        model: the network.
        ready: parameter name -> prepared block (see :func:`ghninit.write.assign.prepare`); names of
            parametrized tensors (``"conv.weight"``) are converted, the others pass through.

    Returns:
        an :class:`Inversion`; nothing in the model's parameters has changed yet.

    Raises:
        PredictionError: when a ``right_inverse`` fails or returns values that do not fit the
            originals (every buffer it touched is put back first).
    """
    owners = parametrized_tensors(model)
    result = Inversion({})
    try:
        for name, block in ready.items():
            if name not in owners:
                result.ready[name] = block
                continue
            _invert(name, block, owners[name], result)
    except BaseException:
        result.undo()
        raise
    return result


def leave_parametrized(model: nn.Module, ready: Mapping[str, torch.Tensor], why: str) -> Inversion:
    """Drop the parametrized weights from ``ready``: their originals keep their own initialisation, for ``why``."""
    owners = parametrized_tensors(model)
    result = Inversion({name: block for name, block in ready.items() if name not in owners})
    for name in ready.keys() & owners.keys():
        result.skipped.update(dict.fromkeys(_original_names(name, owners[name]), why))
    return result


def _invert(name: str, block: torch.Tensor, owner: tuple[nn.Module, str], result: Inversion) -> None:
    module, tensor_name = owner
    originals = module.parametrizations[tensor_name]
    names = _original_names(name, owner)
    kinds = [type(p).__name__ for p in originals]
    missing = _missing_inverse(originals)
    if missing:
        why = f"parametrized by {', '.join(missing)}, which has no right_inverse: keeps its own initialisation"
        result.skipped.update(dict.fromkeys(names, why))
        return
    current = getattr(module, tensor_name)
    value: torch.Tensor | tuple = tile(block, tuple(current.shape)).to(dtype=current.dtype, device=current.device)
    _save_buffers(originals, result._saved)
    buffers = []
    try:
        for parametrization in reversed(list(originals)):
            value = parametrization.right_inverse(value)
            if _is_spectral_norm(parametrization):
                buffers += _spectral_vectors(parametrization, value)
    except NotImplementedError as err:
        why = f"parametrized by {', '.join(kinds)}, whose right_inverse is not implemented ({err}): keeps its own initialisation"
        result.skipped.update(dict.fromkeys(names, why))
        return
    except Exception as err:
        raise PredictionError(f"right_inverse of {', '.join(kinds)} failed for the predicted '{name}': {err}") from err
    values = [value] if isinstance(value, torch.Tensor) else list(value)
    targets = [getattr(originals, n.rpartition(".")[2]) for n in names]
    if len(values) != len(targets):
        raise PredictionError(
            f"right_inverse of {', '.join(kinds)} for '{name}' returned {len(values)} tensors for {len(targets)} originals"
        )
    for original_name, v, target in zip(names, values, targets):
        if not isinstance(v, torch.Tensor) or v.shape != target.shape:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise PredictionError(
                f"right_inverse of {', '.join(kinds)} for '{name}' gave {shape} for '{original_name}' of shape "
                f"{tuple(target.shape)}"
            )
        v = v.detach().to(dtype=target.dtype, device=target.device)
        if not torch.isfinite(v).all():
            raise PredictionError(f"right_inverse of {', '.join(kinds)} for '{name}' gave NaN or infinite values")
        result.ready[original_name] = v
    result.buffers += buffers
    result.written_through[name] = kinds
