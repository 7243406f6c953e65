"""Reading state dicts from ``.pth`` files, safely.

Files are read with ``torch.load(..., weights_only=True)``: a file that holds a pickled model
object (or anything but a mapping of names to tensors) is refused, and no code in it runs.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

DATA_PARALLEL_PREFIX = "module."
SAVE_HINT = "save the weights with torch.save(model.state_dict(), path) and pass that file"


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Return the state dict stored in ``path`` (a ``DataParallel`` ``module.`` prefix is removed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} does not hold a plain state_dict (it pickles other objects, which are not loaded "
            f"for safety): {SAVE_HINT}. Detail: {str(error).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable PyTorch weights file: {error}") from None
    if not isinstance(loaded, Mapping) or not loaded or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state_dict of tensors: {SAVE_HINT}")
    state = dict(loaded)
    if all(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        state = {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in state.items()}
    return state


def check_keys(state: Mapping[str, torch.Tensor], model: torch.nn.Module, source) -> None:
    """Raise ``ValueError`` naming every missing and unexpected key (never a silent strict=False)."""
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:12])}"
                         f"{' ...' if len(unexpected) > 12 else ''}")
        raise ValueError(f"{source} does not match the {type(model).__name__} built from its config: "
                         + "; ".join(parts) + ". Check the family and the config (--config).")
    mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
                  for key, value in model.state_dict().items() if state[key].shape != value.shape]
    if mismatched:
        raise ValueError(f"{source} has tensors whose shapes do not match the config: {'; '.join(mismatched[:8])}"
                         ". Check the family and the config (--config).")
