"""The paper's CNN (Carlini & Wagner 2017, made twice differentiable) and safe checkpoints.

Architecture (appendix C.2 of the paper), input ``(B, 1, 28, 28)`` in [0, 1]:

=====================  ======================  ==============
layer                  output shape            parameters
=====================  ======================  ==============
Standardize(mean,std)  (B, 1, 28, 28)          (buffers)
Conv 3x3, 32           (B, 32, 26, 26)         320
Conv 3x3, 32, stride 2 (B, 32, 12, 12)         9,248
Conv 3x3, 64           (B, 64, 10, 10)         18,496
Conv 3x3, 64, stride 2 (B, 64, 4, 4)           36,928
Linear 1024 -> 200     (B, 200)                205,000
Linear 200 -> 200      (B, 200)                40,200
Linear 200 -> 10       (B, 10) logits          2,010
=====================  ======================  ==============

SiLU (swish, x·σ(x)) after every layer but the last, so the logits are C^∞ in the
input. Convolutions are unpadded ("valid") as in Carlini & Wagner's model, where the
strided convolutions replace 2x2 max-pooling; the flattened size (64·4·4 = 1024) is
the same as theirs. The paper does not state padding; this is our reading.

Standardization is the first layer, so attacks, Hessians and ε in pixel units all
refer to [0, 1] images.

Checkpoints (``save`` / ``load``) hold the architecture's name and keyword arguments
next to the weights and are read with ``torch.load(weights_only=True)``: a checkpoint
is never arbitrary pickle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .data import MEAN_STD, check_dataset

__all__ = ["Standardize", "paper_cnn", "mlp", "build", "save", "load", "ARCHITECTURES", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "crossholder-checkpoint-v1"


class Standardize(nn.Module):
    """``(x - mean) / std`` with scalar mean and std stored as buffers."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"std={std!r} must be > 0")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.item():.4f}, std={self.std.item():.4f}"


def paper_cnn(dataset: str = "mnist", *, num_classes: int = 10) -> nn.Sequential:
    """The paper's CNN for ``dataset`` (``"mnist"`` or ``"fashion_mnist"``): ``(B,1,28,28) -> (B,10)`` logits."""
    mean, std = MEAN_STD[check_dataset(dataset)]
    act = nn.SiLU
    model = nn.Sequential(
        Standardize(mean, std),
        nn.Conv2d(1, 32, 3), act(),
        nn.Conv2d(32, 32, 3, stride=2), act(),
        nn.Conv2d(32, 64, 3), act(),
        nn.Conv2d(64, 64, 3, stride=2), act(),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 200), act(),
        nn.Linear(200, 200), act(),
        nn.Linear(200, num_classes),
    )
    model.arch = ("paper_cnn", {"dataset": dataset, "num_classes": num_classes})  # type: ignore[attr-defined]
    return model


def mlp(in_features: int = 6, hidden: tuple[int, ...] | list[int] = (8, 8), num_classes: int = 3) -> nn.Sequential:
    """A small SiLU network on flat inputs ``(B, in_features)``: the exact-oracle test bed."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.SiLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*layers)
    model.arch = ("mlp", {"in_features": in_features, "hidden": list(hidden), "num_classes": num_classes})  # type: ignore[attr-defined]
    return model


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"paper_cnn": paper_cnn, "mlp": mlp}


def build(arch: str, **kwargs: Any) -> nn.Module:
    """Construct an architecture by name (``ARCHITECTURES``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r} is unknown; allowed values: {', '.join(map(repr, ARCHITECTURES))}")
    return ARCHITECTURES[arch](**kwargs)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through :func:`crossholder.store.atomic_write`: never a half-written file."""
    from . import store

    return store.atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def save(model: nn.Module, path: str | os.PathLike[str], *, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (built by this module) with its architecture and optional JSON-like ``meta``."""
    arch = getattr(model, "arch", None)
    if arch is None:
        raise ValueError("model has no `arch` attribute; build it with crossholder.models.paper_cnn / mlp / build")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return atomic_torch_save(
        {"format": CHECKPOINT_FORMAT, "arch": arch[0], "kwargs": dict(arch[1]), "state_dict": state,
         "meta": dict(meta or {})},
        path,
    )


def load(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu",
         with_meta: bool = False) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save` (``weights_only=True``); returned in eval mode."""
    ckpt = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a crossholder checkpoint (format {CHECKPOINT_FORMAT!r})")
    model = build(ckpt["arch"], **ckpt["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    model.to(map_location).eval()
    return (model, ckpt.get("meta", {})) if with_meta else model
