"""Reading pickled state dicts (the published GHN-3 joblib files) without running their code.

A pickle names the functions that rebuild its objects, and ``pickle.load`` / ``joblib.load`` call
whatever is named: a downloaded file could run anything. :func:`load_state_dict_pickle` uses a
restricted unpickler that resolves only what a dict of tensors needs: ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` (checked arguments) and
``torch.storage._load_from_bytes``, whose bytes (a serialised storage) are read with
``torch.load(weights_only=True)``. Any other global is refused with an error naming it, before
anything is called. Uncompressed joblib files of tensors are plain pickles, so this reads them;
compressed joblib files are refused.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch._utils

_COMPRESSED_MAGIC = {
    b"\x78": "zlib",
    b"\x1f\x8b": "gzip",
    b"BZ": "bz2",
    b"\xfd7zXZ": "xz",
    b"\x5d\x00": "lzma",
    b"ZF": "joblib zlib",
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something a state dict of tensors does not need; nothing of it was run."""


def _storage_from_bytes(data: bytes) -> torch.storage.TypedStorage:
    if not isinstance(data, bytes | bytearray):
        raise UnsafePickleError(f"torch.storage._load_from_bytes got {type(data).__name__}, expected bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation
            storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise UnsafePickleError(f"a tensor storage could not be read as weights only: {err}") from err
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise UnsafePickleError(f"a storage blob held {type(storage).__name__}, not a tensor storage")
    return storage


def _is_int_tuple(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and v >= 0 for v in value)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None) -> torch.Tensor:
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise UnsafePickleError(f"_rebuild_tensor_v2 got a {type(storage).__name__} instead of a storage")
    if not (isinstance(offset, int) and _is_int_tuple(size) and _is_int_tuple(stride) and len(size) == len(stride)):
        raise UnsafePickleError("_rebuild_tensor_v2 got malformed offset/size/stride")
    if hooks or metadata:
        raise UnsafePickleError("_rebuild_tensor_v2 with backward hooks or metadata is not a plain tensor")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch._utils._rebuild_tensor_v2(
            storage, offset, size, stride, bool(requires_grad), collections.OrderedDict()
        )


def _rebuild_parameter(data, requires_grad=False, hooks=None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor) or hooks:
        raise UnsafePickleError("_rebuild_parameter got something other than a plain tensor")
    return data  # a parameter's values are all a state dict needs


def _ordered_dict(*args) -> collections.OrderedDict:
    if args:
        raise UnsafePickleError("OrderedDict called with arguments")
    return collections.OrderedDict()


_ALLOWED: dict[tuple[str, str], Callable] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
}


class StateDictUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a pickled dict of tensors needs."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED)
            raise UnsafePickleError(
                f"refused global '{module}.{name}': a state dict of tensors needs only {allowed}. "
                "The file may be malicious or not a plain state dict; nothing from it was run."
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refused persistent id {pid!r}: not a plain pickle of tensors")


def load_state_dict_pickle(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a pickled (or uncompressed-joblib) ``{name: tensor}`` dict safely.

    Raises:
        UnsafePickleError: naming the refused global, or saying why the content is not a state dict.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        for magic, kind in _COMPRESSED_MAGIC.items():
            if head.startswith(magic):
                raise UnsafePickleError(
                    f"{path}: {kind}-compressed joblib file; only uncompressed ones (as published) are read"
                )
        f.seek(0)
        try:
            state = StateDictUnpickler(f).load()
        except UnsafePickleError as err:
            raise UnsafePickleError(f"{path}: {err}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise UnsafePickleError(f"{path}: not a readable pickle of tensors ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UnsafePickleError(f"{path}: expected a dict of name -> tensor, got {type(state).__name__}")
    return dict(state)
