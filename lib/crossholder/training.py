"""One training loop for the four defenses: ``none``, ``cross_lipschitz``, ``cross_holder``, ``adversarial``.

Every defense uses the same optimizer, schedule, batch size and number of epochs
(:data:`crossholder.experiments.TRAINING_CHOICES`, per-profile epochs in ``PROFILES``).

* ``none``: cross-entropy.
* ``cross_lipschitz``: eq. (5) with λ2 = 0 (``cl_variant="margin"``), or Hein & Andriushchenko's
  original pairwise form (``cl_variant="hein"``), :mod:`crossholder.regularizers`.
* ``cross_holder``: eq. (5). ``mode="faithful"``: Algorithm 1 (fresh ``v ~ N(0, I)`` each step,
  T = 10 ascent steps of size o = 0.1). ``mode="fast"`` (ours): directions kept per training
  example between epochs (:class:`~crossholder.regularizers.DirectionStore`), ``inner_iters``
  power steps (at least ``cold_iters`` on an example's first visit, from a random direction;
  ``max(inner_iters, warmup_iters)`` in the first ``warmup_epochs`` epochs, when kept directions go
  stale fastest), and the training step's own product ``H v`` kept as the next power step.
  ``power_dtype="bfloat16"`` runs those power steps (direction search only) in bfloat16; the
  training product stays float32. ``backward_step=True`` keeps ``H (H v)`` instead of ``H v``:
  the gradient the backward pass computes for ``v`` anyway is one more power step for free
  (``regularized_loss(backward_step=True)``).
  ``compiled=True`` runs the explicit second-order passes through ``torch.compile``
  (``regularized_loss(compiled=True)``; about 1.5x faster per step on this CPU, needs a C++
  compiler); it is part of a run's identity.
* ``adversarial``: Madry et al.'s L2 PGD adversarial training, trained on the last PGD iterate
  (random start, ``at_steps`` steps of ``2.5 ε / at_steps``); ε in the paper's units is converted
  to pixels with the dataset's std (``eps_unit="paper"``), or taken as pixels (``eps_unit="pixel"``).

Runs are resumable: after every epoch the full state (weights, optimizer, schedule, random
generators, kept directions, log) is written atomically to ``<scratch>/train-<id>/state.pt``
(``crossholder.paths.scratch_dir``);
a killed run restarted with the same config continues from there and ends with the same weights
as an uninterrupted run (same seed, CPU). Outputs, under the run id (a hash of the config and
:data:`TRAIN_CODE_VERSION`):

* ``results/<dataset>/models/<defense>-<id>.pt``: the final weights (``crossholder.models.load``);
* ``results/<dataset>/models/<defense>-<id>.json``: provenance and final metrics;
* ``results/<dataset>/training/<defense>-<id>.csv``: one row per epoch;
* ``results/models.json``: ``"<dataset>/<defense>"`` -> the selected model (``register=True``) of the
  canonical configuration (:func:`config_variant`); any other configuration (another profile, seed
  or hyperparameter) registers in ``results/variants/<variant>/models.json`` instead, so exploring
  never replaces a registered model.

Command line (background runs): ``python -m crossholder.training --dataset mnist --defense cross_holder``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import data as data_mod
from . import experiments as ex
from . import models as models_mod
from . import paths
from . import store
from .attacks import pgd_last_iterate
from . import regularizers
from .regularizers import DirectionStore, hein_cross_lipschitz, regularized_loss
from .errors import not_allowed

__all__ = ["TrainConfig", "TrainResult", "make_config", "parse_override", "train", "load_registered", "load_run", "selected_models",
           "config_variant", "profile_variant", "registry_path", "final_config",
           "accuracy", "run_paths", "TRAIN_CODE_VERSION"]

TRAIN_CODE_VERSION = "1"
MODES = ("fast", "faithful")
CL_VARIANTS = ("margin", "hein")
EPS_UNITS = ("paper", "pixel")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and its identity).

    Units: ``eps`` in the paper's units (L2 on standardized inputs) when ``eps_unit="paper"``,
    else pixels of [0, 1] images. ``lr`` per step of Adam; ``epochs`` full passes over ``n_train``
    examples (``None``: the whole 57,000-image training split).
    """

    dataset: str
    defense: str
    lam1: float = 0.0
    lam2: float = 0.0
    eps: float = 0.0
    eps_unit: str = "paper"
    at_steps: int = ex.TRAINING_CHOICES["at_steps"]
    classes: str = "runner_up"
    mode: str = "fast"
    inner: str = ex.TRAINING_CHOICES["fast_inner"]
    inner_iters: int = ex.TRAINING_CHOICES["fast_inner_iters"]
    cold_iters: int = ex.TRAINING_CHOICES["fast_cold_iters"]
    warmup_iters: int = 0
    warmup_epochs: int = 0
    power_dtype: str = "float32"
    backward_step: bool = False
    step: float = 0.1
    cl_variant: str = "margin"
    compiled: bool = False
    gamma: float = 0.0
    h: float = 0.0
    h_ramp_epochs: int = ex.TRAINING_CHOICES["cure_h_ramp_epochs"]
    epochs: int = 10
    batch_size: int = ex.TRAINING_CHOICES["batch_size"]
    lr: float = ex.TRAINING_CHOICES["lr"]
    n_train: int | None = None
    seed: int = 0
    profile: str = "cpu"

    def __post_init__(self) -> None:
        # one configuration, one identity: numbers in the field's declared type (eps=5 is eps=5.0, numpy
        # scalars become Python numbers); a value that is not a number is left for validate() to refuse
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or v is None:
                continue
            kind = str(f.type)
            if kind == "float" and isinstance(v, numbers.Real):
                object.__setattr__(self, f.name, float(v))
            elif kind.startswith("int") and isinstance(v, numbers.Real) and float(v).is_integer():
                object.__setattr__(self, f.name, int(v))

    def validate(self) -> "TrainConfig":
        data_mod.check_dataset(self.dataset)
        ex.check_defense(self.defense)
        ex.check_profile(self.profile)
        for name in ("lam1", "lam2", "eps", "step", "lr", "gamma", "h"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}={v!r} must be a finite number >= 0")
        if self.defense == "adversarial" and not self.eps > 0:
            raise ValueError(f"eps={self.eps!r}: adversarial training needs eps > 0")
        if self.defense in ("cross_lipschitz", "cross_holder", "cross_holder_hg") and not self.lam1 > 0:
            raise ValueError(f"lam1={self.lam1!r}: {self.defense} needs lam1 > 0")
        if self.defense == "cross_holder_hg" and not self.lam2 > 0:
            raise ValueError(f"lam2={self.lam2!r}: {self.defense} needs lam2 > 0 (lam2 = 0 is cross_lipschitz)")
        # cross_holder with lam2 = 0 is allowed: the ablation "its Hessian term off" (a Cross-Lipschitz step
        # through Cross-Hölder's code path and identity), asked for explicitly; the direction search's
        # options then do nothing, so asking for one is refused rather than hashed into a second identity
        if self.defense == "cross_holder" and self.lam2 == 0 and (
                self.mode != "fast" or self.backward_step or self.power_dtype != "float32" or self.warmup_epochs):
            raise ValueError(f"lam2=0 turns Cross-Hölder's Hessian term off: mode={self.mode!r}, "
                             f"backward_step={self.backward_step}, power_dtype={self.power_dtype!r} and "
                             f"warmup_epochs={self.warmup_epochs} would do nothing; leave them at their defaults")
        if self.defense == "cure" and not (self.gamma > 0 and self.h > 0):
            raise ValueError(f"gamma={self.gamma!r}, h={self.h!r}: cure needs gamma > 0 and h > 0")
        if self.compiled and self.defense in ("cross_holder_hg", "cure"):
            raise ValueError(f"compiled=True is not supported for defense={self.defense!r}; use compiled=False")
        if self.mode not in MODES:
            raise not_allowed("mode", self.mode, MODES)
        if self.cl_variant not in CL_VARIANTS:
            raise not_allowed("cl_variant", self.cl_variant, CL_VARIANTS)
        if self.eps_unit not in EPS_UNITS:
            raise not_allowed("eps_unit", self.eps_unit, EPS_UNITS)
        if self.classes not in ("all", "runner_up"):
            raise not_allowed("classes", self.classes, ("all", "runner_up"))
        if not isinstance(self.compiled, bool):
            raise not_allowed("compiled", self.compiled, (True, False))
        if self.compiled and self.defense == "cross_lipschitz" and self.cl_variant != "margin":
            raise ValueError(f"compiled=True supports cl_variant='margin' only, got {self.cl_variant!r}")
        if self.compiled and self.defense == "cross_holder" and (self.mode != "fast" or self.inner != "power"):
            raise ValueError(f"compiled=True supports mode='fast' with inner='power', got mode={self.mode!r}, "
                             f"inner={self.inner!r}")
        for name in ("cold_iters", "warmup_iters", "warmup_epochs", "h_ramp_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}={v!r} must be an integer >= 0")
        regularizers.power_dtype_of(self.power_dtype)   # ValueError naming the allowed values
        if self.power_dtype != "float32" and (self.defense != "cross_holder" or self.mode != "fast"
                                              or self.inner != "power"):
            raise ValueError(f"power_dtype={self.power_dtype!r} applies to cross_holder with mode='fast' and "
                             f"inner='power' only; got defense={self.defense!r}, mode={self.mode!r}, "
                             f"inner={self.inner!r}")
        if not isinstance(self.backward_step, bool):
            raise not_allowed("backward_step", self.backward_step, (True, False))
        if self.backward_step and (self.defense != "cross_holder" or self.mode != "fast"):
            raise ValueError(f"backward_step=True applies to cross_holder with mode='fast' only; got "
                             f"defense={self.defense!r}, mode={self.mode!r}")
        if self.warmup_epochs and self.mode != "fast":
            raise ValueError(f"warmup_epochs={self.warmup_epochs} applies to mode='fast' only, got mode={self.mode!r}")
        for name in ("epochs", "batch_size", "at_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be an integer >= 1")
        if not isinstance(self.inner_iters, int) or self.inner_iters < 0:
            raise ValueError(f"inner_iters={self.inner_iters!r} must be an integer >= 0")
        if self.n_train is not None and (not isinstance(self.n_train, int) or self.n_train < self.batch_size):
            raise ValueError(f"n_train={self.n_train!r} must be None or an integer >= batch_size")
        return self

    def relevant(self) -> dict[str, Any]:
        """The parameters that matter for this defense (the others are dropped from the identity)."""
        d = dataclasses.asdict(self)
        keep = {"dataset", "defense", "epochs", "batch_size", "lr", "n_train", "seed", "profile"}
        if self.defense == "cross_lipschitz":
            keep |= {"lam1", "classes", "cl_variant"}
        elif self.defense == "cross_holder" and self.lam2 == 0:
            keep |= {"lam1", "lam2", "classes"}      # its Hessian term off: no direction search to name
        elif self.defense == "cross_holder":
            keep |= {"lam1", "lam2", "classes", "mode", "inner", "inner_iters", "step"}
            if self.mode == "fast":
                keep |= {"cold_iters"}
                if self.warmup_epochs:   # only when set: runs made before the option existed keep their ids
                    keep |= {"warmup_iters", "warmup_epochs"}
                if self.power_dtype != "float32":   # likewise
                    keep |= {"power_dtype"}
                if self.backward_step:              # likewise
                    keep |= {"backward_step"}
        elif self.defense == "cross_holder_hg":
            keep |= {"lam1", "lam2", "classes"}
        elif self.defense == "cure":
            keep |= {"gamma", "h", "h_ramp_epochs"}
        elif self.defense == "adversarial":
            keep |= {"eps", "eps_unit", "at_steps"}
        if self.compiled and self.defense in ("cross_lipschitz", "cross_holder"):
            keep |= {"compiled"}   # only when True: runs made before the option existed keep their ids
        return {k: v for k, v in d.items() if k in keep}

    def iters_at(self, epoch: int) -> int:
        """Fast mode's power steps before the training product at 0-based ``epoch`` (the warm-up schedule).

        ``max(inner_iters, warmup_iters)`` for the first ``warmup_epochs`` epochs, ``inner_iters``
        after: kept directions go stale fastest early in training, when the network changes most
        between two visits of an example (results/mnist/benchmarks/fidelity-frontier.csv).
        """
        return max(self.inner_iters, self.warmup_iters) if epoch < self.warmup_epochs else self.inner_iters

    def h_at(self, epoch: int) -> float:
        """CURE's finite-difference step at 0-based ``epoch``: ``h · (epoch + 1) / h_ramp_epochs`` for the
        first ``h_ramp_epochs`` epochs, then ``h`` (CURE increases h during training; the ramp's length
        is our choice, :data:`crossholder.experiments.TRAINING_CHOICES`)."""
        return self.h * min(1.0, (epoch + 1) / self.h_ramp_epochs) if self.h_ramp_epochs else self.h

    @property
    def run_id(self) -> str:
        return store.run_id({**self.relevant(), "code": TRAIN_CODE_VERSION,
                          "choices": {k: ex.TRAINING_CHOICES[k] for k in ("optimizer", "schedule")}})

    @property
    def name(self) -> str:
        return f"{self.defense}-{self.run_id}"

    @property
    def eps_pixel(self) -> float:
        return self.eps * data_mod.MEAN_STD[self.dataset][1] if self.eps_unit == "paper" else self.eps


def parse_override(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` (the CLI's ``--set``) as ``(key, value)`` with the value in :class:`TrainConfig`'s
    type for that key: ``eps=5`` gives ``5.0`` (a float field), ``epochs=10`` gives ``10``, ``compiled=True``
    gives ``True``, ``n_train=None`` gives ``None``; so the CLI names the same run as the Python API.

    Raises:
        ValueError: no ``=``, an unknown key, or a value that is not of the key's type.
    """
    key, sep, value = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if not sep or key not in fields:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
    kind = str(fields[key].type)
    try:
        if value == "None" and "None" in kind:
            return key, None
        if kind == "bool":
            if value not in ("True", "False"):
                raise ValueError(value)
            return key, value == "True"
        if kind.startswith("int"):
            return key, int(value)
        if kind == "float":
            return key, float(value)
        return key, value
    except ValueError:
        raise ValueError(f"--set {text!r}: {key} takes a value of type {kind}") from None


def make_config(dataset: str, defense: str, *, profile: str = "cpu", seed: int = 0, **overrides: Any) -> TrainConfig:
    """The paper's hyperparameters for ``(dataset, defense)`` at ``profile``, with ``overrides`` applied.

    Faithful Cross-Hölder (``mode="faithful"``) gets Algorithm 1's inner loop (ascent, T = 10,
    o = 0.1, every class) unless overridden.
    """
    data_mod.check_dataset(dataset)
    ex.check_defense(defense)
    prof = ex.PROFILES[ex.check_profile(profile)]
    base: dict[str, Any] = dict(ex.PAPER[dataset].get(defense, ex.ABLATION_DEFAULTS[dataset].get(defense, {})))
    base.update(epochs=prof["epochs"], n_train=prof["n_train"], classes=prof["classes"], profile=profile, seed=seed)
    if overrides.get("mode") == "faithful":
        base.update(inner="ascent", inner_iters=ex.PAPER_INNER["inner_iters"], step=ex.PAPER_INNER["step"],
                    classes="all")
    base.update(overrides)
    unknown = set(base) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown training parameter(s) {sorted(unknown)}; allowed: "
                         f"{sorted(f.name for f in dataclasses.fields(TrainConfig))}")
    return TrainConfig(dataset=dataset, defense=defense, **base).validate()


@dataclass
class TrainResult:
    model: nn.Module
    config: TrainConfig
    log: pd.DataFrame
    checkpoint: Path
    record: dict[str, Any] = field(default_factory=dict)


def _checkpoint_path(dataset: str, name: str, profile: str) -> Path:
    """``<cache>/<dataset>/models/<defense>-<run id>.pt`` (its sidecar: the same with ``.json``), under
    :func:`crossholder.store.cache_dir` of ``profile``."""
    return store.cache_dir(profile) / dataset / "models" / f"{name}.pt"


def run_paths(cfg: TrainConfig) -> dict[str, Path]:
    """Where a run's files live: ``checkpoint``, ``sidecar``, ``log`` (under
    :func:`crossholder.store.cache_dir` of the run's profile: ``results/`` at ``cpu``) and ``state``
    (resume state, in the scratch folder)."""
    res = store.cache_dir(cfg.profile)
    ckpt = _checkpoint_path(cfg.dataset, cfg.name, cfg.profile)
    return {
        "checkpoint": ckpt,
        "sidecar": ckpt.with_suffix(".json"),
        "log": res / cfg.dataset / "training" / f"{cfg.name}.csv",
        "state": paths.scratch_dir() / f"train-{cfg.dataset}-{cfg.name}" / "state.pt",
    }


def _cosine(total: int):
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Clean accuracy of ``model`` on ``x`` ``(N, C, H, W)``, ``y`` ``(N,)`` (batches moved to the model's device)."""
    was = model.training
    model.eval()
    correct = 0
    dev = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i:i + batch].to(dev)).argmax(1).cpu() == y[i:i + batch].cpu()).sum())
    model.train(was)
    return correct / max(len(x), 1)


def _step_loss(cfg: TrainConfig, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor,
               store: DirectionStore | None, gen: torch.Generator, inner_iters: int | None = None, epoch: int = 0
               ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, Callable[[], None] | None]:
    """The loss of one batch and its terms; also the clean logits (for the train accuracy).

    ``inner_iters``: fast mode's power steps at this epoch (:meth:`TrainConfig.iters_at`; default ``cfg.inner_iters``).
    The fourth value (fast mode only, else ``None``) stores the next directions in ``store``; call it
    after ``loss.backward()`` (with ``backward_step`` they are the gradient the backward pass leaves).
    """
    if inner_iters is None:
        inner_iters = cfg.inner_iters
    if cfg.defense == "none":
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        return loss, {"ce": loss.item()}, logits.detach(), None
    if cfg.defense == "adversarial":
        model.eval()
        xa = pgd_last_iterate(model, xb, yb, cfg.eps_pixel, steps=cfg.at_steps, generator=gen)
        model.train()
        loss = F.cross_entropy(model(xa), yb)
        with torch.no_grad():
            logits = model(xb)
        return loss, {"ce": loss.item()}, logits, None
    keep = None
    if cfg.defense == "cure":
        out = regularizers.cure_loss(model, xb, yb, gamma=cfg.gamma, h=cfg.h_at(epoch))
    elif cfg.defense == "cross_holder_hg":
        out = regularized_loss(model, xb, yb, lam1=cfg.lam1, lam2=cfg.lam2, classes=cfg.classes, inner="gradient",
                               inner_iters=0)
    elif cfg.defense == "cross_lipschitz" and cfg.cl_variant == "hein":
        out = hein_cross_lipschitz(model, xb, yb, lam1=cfg.lam1)
    elif cfg.defense == "cross_lipschitz":
        out = regularized_loss(model, xb, yb, lam1=cfg.lam1, classes=cfg.classes, compiled=cfg.compiled)
    elif cfg.lam2 == 0:     # cross_holder with its Hessian term off: no directions to search or keep
        out = regularized_loss(model, xb, yb, lam1=cfg.lam1, classes=cfg.classes, compiled=cfg.compiled)
    elif cfg.mode == "faithful":
        out = regularized_loss(model, xb, yb, lam1=cfg.lam1, lam2=cfg.lam2, classes=cfg.classes, v0=None,
                               inner=cfg.inner, inner_iters=cfg.inner_iters, step=cfg.step, generator=gen)
    else:
        assert store is not None
        cold = bool((store.classes[idx] < 0).any())   # first visit: a fresh direction needs more steps
        v0 = store.get(idx, gen, dtype=xb.dtype)
        out = regularized_loss(model, xb, yb, lam1=cfg.lam1, lam2=cfg.lam2, classes=cfg.classes, v0=v0,
                               inner=cfg.inner, inner_iters=max(cfg.cold_iters, inner_iters) if cold else inner_iters,
                               step=cfg.step, generator=gen, compiled=cfg.compiled, power_dtype=cfg.power_dtype,
                               backward_step=cfg.backward_step)

        def keep() -> None:
            store.put(idx, out.next_directions(), out.j)
    terms = {"ce": out.ce.item(), "grad_term": out.grad_term.item(), "hess_term": out.hess_term.item()}
    return out.loss, terms, out.logits, keep


def train(cfg: TrainConfig, *, progress: bool = True, register: bool = False, max_epochs: int | None = None,
          threads: int | None = None, device: str = "cpu") -> TrainResult:
    """Train (or load from the cache, or resume) the run ``cfg``.

    Args:
        cfg: the run (:func:`make_config`).
        progress: tqdm progress bar over batches (a widget in JupyterLab, else stderr).
        register: record the model in the registry of its variant (:func:`config_variant`):
            ``results/models.json`` under ``"<dataset>/<defense>"`` for the canonical configuration.
        max_epochs: stop after this many epochs *in total* and return the partial model (the resume
            state is kept; used to simulate a kill in tests).
        threads: ``torch.set_num_threads`` for this run (``None``: leave as is).
        device: where the arithmetic runs (``"cpu"``, ``"cuda"``); not part of the run's identity.
            Random numbers (shuffling, starts, directions) are drawn on the CPU either way. The
            returned model is on the CPU.
    """
    cfg.validate()
    dev = ex.check_device(device)
    ex.tune_allocator()
    if threads is not None:
        torch.set_num_threads(threads)
    p = run_paths(cfg)
    if p["checkpoint"].exists() and p["sidecar"].exists() and p["log"].exists():
        model = models_mod.load(p["checkpoint"])
        record = store.read_json(p["sidecar"])
        if register:
            _register(cfg, record)
        return TrainResult(model, cfg, pd.read_csv(p["log"]), p["checkpoint"], record)

    x, y, xv, yv = _training_data(cfg, dev)
    st = _LoopState.fresh(cfg, x, dev)
    if p["state"].exists():
        st.restore(p["state"], p["log"])
    start_epoch, wall_before = st.epoch, st.wall_time_s
    end_epoch = cfg.epochs if max_epochs is None else min(cfg.epochs, max_epochs)
    t_run = time.perf_counter()
    for epoch in range(start_epoch, end_epoch):
        row = _train_epoch(cfg, st, x, y, epoch, dev, progress)
        row["val_acc"] = accuracy(st.model, xv, yv)
        if st.store is not None:
            row.update(_fidelity_probe(cfg, st.model, x, y, st.store, n=16 if cfg.profile == "smoke" else 128,
                                       inner_iters=cfg.iters_at(epoch + 1)))
        st.rows.append(row)
        st.epoch, st.wall_time_s = epoch + 1, wall_before + (time.perf_counter() - t_run)
        # log first, then the state that points at it: a kill between the two re-runs one epoch at most
        store.atomic_write_text(p["log"], pd.DataFrame(st.rows).to_csv(index=False))
        st.save(p["state"])
        if progress:
            print(f"[{cfg.dataset}/{cfg.defense}] epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f} "
                  f"train {row['train_acc']:.4f} val {row['val_acc']:.4f} ({row['epoch_time_s']:.0f} s)", flush=True)
    log = pd.DataFrame(st.rows)
    if end_epoch < cfg.epochs:
        st.model.cpu().eval()
        return TrainResult(st.model, cfg, log, p["state"], {"partial": True, "epochs_done": end_epoch})
    wall = wall_before + (time.perf_counter() - t_run) if end_epoch > start_epoch else wall_before
    record = _finish(cfg, st.model, log, wall, dev, p)
    if register:
        _register(cfg, record)
    return TrainResult(st.model, cfg, log, p["checkpoint"], record)


def _training_data(cfg: TrainConfig, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """``(x, y, x_val, y_val)`` of a run: the training split (``n_train`` first examples; on ``dev``,
    channels-last) and the validation split (its first ``n_val`` at the smoke profile)."""
    x, y = data_mod.tensors(cfg.dataset, "train")
    if cfg.n_train is not None:
        x, y = x[: cfg.n_train], y[: cfg.n_train]
    xv, yv = data_mod.tensors(cfg.dataset, "val")
    if cfg.profile == "smoke":
        xv, yv = xv[: ex.PROFILES["smoke"]["n_val"]], yv[: ex.PROFILES["smoke"]["n_val"]]
    # channels_last: mkldnn's NHWC convolutions are 1.4x (plain step) to 2x (PGD) faster on this CPU
    return x.to(dev).contiguous(memory_format=torch.channels_last), y.to(dev), xv, yv


@dataclass
class _LoopState:
    """Everything a resumed run needs: model, optimizer, schedule, random generators, kept directions
    (fast Cross-Hölder), the epoch rows so far, epochs done and wall time."""
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    gen_shuffle: torch.Generator
    gen_noise: torch.Generator
    store: DirectionStore | None
    steps_per_epoch: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    wall_time_s: float = 0.0

    @classmethod
    def fresh(cls, cfg: TrainConfig, x: torch.Tensor, dev: torch.device) -> "_LoopState":
        steps_per_epoch = len(x) // cfg.batch_size   # drop the last partial batch: every step the same size
        torch.manual_seed(cfg.seed)
        model = models_mod.paper_cnn(cfg.dataset).to(dev, memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(cfg.epochs * steps_per_epoch))
        store = None
        if cfg.defense == "cross_holder" and cfg.mode == "fast" and cfg.lam2 > 0:
            store = DirectionStore(len(x), 1 if cfg.classes == "runner_up" else 9, tuple(x.shape[1:]))
        return cls(model, opt, sched, torch.Generator().manual_seed(cfg.seed),
                   torch.Generator().manual_seed(cfg.seed + 1), store, steps_per_epoch)

    def restore(self, state_path: Path, log_path: Path) -> None:
        st = torch.load(state_path, weights_only=True, map_location="cpu")
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.gen_shuffle.set_state(st["gen_shuffle"])
        self.gen_noise.set_state(st["gen_noise"])
        if self.store is not None:
            self.store.load_state_dict(st["store"])
        # the epoch rows travel with the state (the log CSV may be missing in a fresh checkout)
        if "log_rows" in st:
            rows = list(st["log_rows"])
        else:
            log_csv = next((f for f in (state_path.parent / "log.csv", log_path) if f.exists()), None)
            rows = pd.read_csv(log_csv).to_dict("records") if log_csv is not None else []
        self.rows = rows[: st["epoch"]]
        self.epoch, self.wall_time_s = st["epoch"], float(st["wall_time_s"])

    def save(self, state_path: Path) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "gen_shuffle": self.gen_shuffle.get_state(),
                 "gen_noise": self.gen_noise.get_state(), "epoch": self.epoch, "wall_time_s": self.wall_time_s,
                 "log_rows": [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()} for r in self.rows]}
        if self.store is not None:
            state["store"] = self.store.state_dict()
        models_mod.atomic_torch_save(state, state_path)


def _train_epoch(cfg: TrainConfig, st: _LoopState, x: torch.Tensor, y: torch.Tensor, epoch: int,
                 dev: torch.device, progress: bool) -> dict[str, Any]:
    """One epoch of optimizer steps; its log row (mean loss terms, train accuracy, lr, time)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    st.model.train()
    perm = torch.randperm(len(x), generator=st.gen_shuffle)
    sums: dict[str, float] = {}
    correct = 0
    bar = tqdm(range(st.steps_per_epoch), desc=f"{cfg.dataset}/{cfg.defense} epoch {epoch + 1}/{cfg.epochs}",
               disable=not progress, leave=False, mininterval=2.0)
    for s in bar:
        idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
        idx_d = idx.to(dev)
        xb, yb = x[idx_d], y[idx_d]
        loss, terms, logits, keep = _step_loss(cfg, st.model, xb, yb, idx, st.store, st.gen_noise,
                                               cfg.iters_at(epoch), epoch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at epoch {epoch + 1}, step {s}: {terms}")
        st.opt.zero_grad(set_to_none=True)
        loss.backward()
        if keep is not None:
            keep()
        st.opt.step()
        st.sched.step()
        terms["loss"] = loss.item()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
        correct += int((logits.argmax(1) == yb).sum())
        if progress and s % 20 == 0:
            bar.set_postfix(loss=f"{terms['loss']:.3f}")
    row = {"epoch": epoch + 1, **{k: v / st.steps_per_epoch for k, v in sums.items()},
           "train_acc": correct / (st.steps_per_epoch * cfg.batch_size), "val_acc": float("nan"),
           "lr": st.sched.get_last_lr()[0], "epoch_time_s": round(time.perf_counter() - t0, 2)}
    for k in ("grad_term", "hess_term"):
        row.setdefault(k, 0.0)
    row["regularizer"] = cfg.lam1 * (row["grad_term"] + cfg.lam2 * row["hess_term"]) \
        if cfg.defense in ("cross_lipschitz", "cross_holder", "cross_holder_hg") else \
        cfg.gamma * row["hess_term"] if cfg.defense == "cure" else 0.0
    return row


def _finish(cfg: TrainConfig, model: nn.Module, log: pd.DataFrame, wall: float, dev: torch.device,
            p: dict[str, Path]) -> dict[str, Any]:
    """Test accuracy, the checkpoint and its sidecar record; the resume state is removed."""
    xt, yt = data_mod.tensors(cfg.dataset, "test")
    if cfg.profile == "smoke":
        xt, yt = xt[:1000], yt[:1000]
    model.eval()
    test_acc = accuracy(model, xt, yt)
    model.cpu()
    models_mod.save(model, p["checkpoint"], meta={"run_id": cfg.run_id, "config": cfg.relevant()})
    record = {
        "dataset": cfg.dataset, "defense": cfg.defense, "run_id": cfg.run_id,
        "checkpoint": paths.relative_to_root(p["checkpoint"]), "log": paths.relative_to_root(p["log"]),
        "hyperparameters": cfg.relevant(), "profile": cfg.profile, "seed": cfg.seed,
        "clean_test_accuracy": test_acc, "test_n": len(xt), "clean_val_accuracy": float(log["val_acc"].iloc[-1]),
        "eps_pixel": cfg.eps_pixel if cfg.defense == "adversarial" else None,
        "provenance": store.provenance(params={**cfg.relevant(), "code": TRAIN_CODE_VERSION,
                                            "choices": ex.TRAINING_CHOICES},
                                    seed=cfg.seed, profile=cfg.profile, wall_time_s=wall, device=str(dev)),
    }
    store.atomic_write_json(p["sidecar"], record)
    _remove_state(p["state"])
    return record


def _fidelity_probe(cfg: TrainConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    store: DirectionStore, n: int = 128, cold_products: int = 50,
                    inner_iters: int | None = None) -> dict[str, float]:
    """Fast mode's ||H v|| on a fixed probe batch against a cold-start Lanczos estimate.

    For the first ``n`` training examples (runner-up class of each), ``v`` is the kept direction
    advanced by the power steps of the next epoch (``inner_iters``, default ``cfg.inner_iters``;
    :meth:`TrainConfig.iters_at`) on the current network: what the next training step on those
    examples would use (in ``cfg.power_dtype``, through the training code path when not float32).
    Returns the median and 10% quantile of fast / cold.
    """
    from .hessian import operator_norm

    if cfg.classes != "runner_up":
        return {}
    model.eval()
    idx = torch.arange(min(n, len(x)))
    xb, yb = x[: len(idx)], y[: len(idx)]
    v0 = store.get(idx, torch.Generator().manual_seed(0))[:, 0]
    k = cfg.inner_iters if inner_iters is None else inner_iters
    if cfg.power_dtype == "float32":
        fast = operator_norm(model, xb, yb, "runner_up", method="power", iters=k + 1, v0=v0).norm
    else:
        fast = regularizers.warm_norm(model, xb, yb, v0, k, power_dtype=cfg.power_dtype)
    cold = operator_norm(model, xb, yb, "runner_up", method="lanczos", iters=cold_products, seed=0)
    model.train()
    ratio = fast.detach() / cold.norm.clamp_min(1e-30)
    return {"fidelity_median": float(ratio.median()), "fidelity_q10": float(ratio.quantile(0.1))}


def _remove_state(state: Path) -> None:
    """The run is complete: its resume state (which can hold ~1 GB of kept directions) is not needed."""
    if state.exists():
        state.unlink()
    if state.parent.exists() and not any(state.parent.iterdir()):
        state.parent.rmdir()


def final_config(dataset: str, defense: str, *, profile: str = "cpu", seed: int = 0, **overrides: Any) -> TrainConfig:
    """The configuration registered for ``"<dataset>/<defense>"``: :func:`make_config` with, at the ``cpu``
    profile, the final choices of :data:`crossholder.experiments.FINAL` (what notebook 02 trains by
    default), then ``overrides``. With ``seed`` 0 and no overrides at ``cpu`` it is the canonical
    configuration (``config_variant == ""``); other seeds register in ``<profile>-seed=<s>``."""
    base = dict(ex.FINAL[data_mod.check_dataset(dataset)].get(defense, {})) if profile == "cpu" else {}
    return make_config(dataset, defense, profile=profile, seed=seed, **{**base, **overrides})


def config_variant(cfg: TrainConfig) -> str:
    """The variant (:func:`crossholder.store.variant_name`) a run registers under.

    ``""`` (``results/models.json``, what notebook 04 and the committed results use) for the
    canonical configuration: the ``cpu`` profile's final choice (:data:`crossholder.experiments.FINAL`)
    with seed 0. At another profile, that profile's default configuration with seed 0 is the
    variant named after the profile (``"smoke"``). Anything else is named after what differs from
    the profile's default, e.g. ``"cpu-seed=1"`` or ``"smoke-lam1=0.1"``.
    """
    final = ex.FINAL[cfg.dataset].get(cfg.defense, {}) if cfg.profile == "cpu" else {}
    ref = make_config(cfg.dataset, cfg.defense, profile=cfg.profile, seed=0, **final).relevant()
    mine = cfg.relevant()
    changed = {k: mine.get(k) for k in sorted(set(mine) | set(ref)) if mine.get(k) != ref.get(k)}
    return store.variant_name(cfg.profile, changed)


def profile_variant(profile: str, seed: int = 0) -> str:
    """The variant whose registry holds a profile's default models of ``seed`` (:func:`config_variant`
    of ``make_config(..., profile=profile, seed=seed)`` with the final choices at ``cpu``)."""
    return store.variant_name(profile, {"seed": seed} if seed else {})


def registry_path(variant: str = "") -> Path:
    """``results/models.json`` (``variant=""``) or ``results/variants/<variant>/models.json``."""
    return store.variant_dirs(variant)[0] / "models.json"


def _register(cfg: TrainConfig, record: dict[str, Any]) -> None:
    store.update_json(registry_path(config_variant(cfg)), f"{cfg.dataset}/{cfg.defense}", record)


def load_registered(dataset: str, defense: str, variant: str = "") -> tuple[nn.Module, dict[str, Any]]:
    """The model registered for ``"<dataset>/<defense>"`` in :func:`registry_path` of ``variant``
    (``""``: ``results/models.json``) and its record.

    Raises:
        KeyError: nothing registered under that key (the message says how to train it).
    """
    reg = store.read_json(registry_path(variant), {}) or {}
    key = f"{data_mod.check_dataset(dataset)}/{ex.check_defense(defense)}"
    if key not in reg:
        raise KeyError(f"{key} is not in {registry_path(variant)}; train it with notebook 02 or "
                       f"`python -m crossholder.training --dataset {dataset} --defense {defense}`")
    rec = reg[key]
    return models_mod.load(paths.project_root() / rec["checkpoint"]), rec


def load_run(dataset: str, defense: str, run_id: str, *, profile: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model of the finished training run ``<defense>-<run_id>`` at ``profile`` (registered or not)
    and its record."""
    ckpt = _checkpoint_path(data_mod.check_dataset(dataset), f"{ex.check_defense(defense)}-{run_id}", profile)
    rec = store.read_json(ckpt.with_suffix(".json"))
    if not ckpt.exists() or rec is None:
        raise FileNotFoundError(f"run_id={run_id!r}: no finished training run {ckpt} (+ .json sidecar)")
    return models_mod.load(ckpt), rec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train one model (resumes if interrupted): the registered "
                                 "configuration (final_config: at cpu the final choices of experiments.FINAL, "
                                 "as notebook 02 and crossholder.jobs train), then the --set overrides.")
    ap.add_argument("--dataset", required=True, choices=data_mod.DATASETS)
    ap.add_argument("--defense", required=True, choices=ex.ALL_DEFENSES)
    ap.add_argument("--profile", default="cpu", choices=list(ex.PROFILES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--no-register", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides, e.g. lam1=0.1 mode=faithful classes=all")
    args = ap.parse_args(argv)
    overrides = dict(parse_override(kv) for kv in args.set)
    cfg = final_config(args.dataset, args.defense, profile=args.profile, seed=args.seed, **overrides)
    res = train(cfg, register=not args.no_register, threads=args.threads, device=args.device)
    print(f"[{cfg.dataset}/{cfg.defense}] done: clean test accuracy {res.record.get('clean_test_accuracy')}, "
          f"checkpoint {paths.relative_to_root(res.checkpoint)}", flush=True)



def selected_models(dataset: str, profile: str, *, seed: int = 0, progress: bool = False,
                    defenses: Sequence[str] = ex.DEFENSES) -> dict[str, dict[str, Any]]:
    """The registered model of every defense in ``defenses`` (default: the paper's four) for ``dataset`` at
    ``profile`` and ``seed``: from
    ``results/models.json`` at ``cpu`` with seed 0, else from the registry of
    :func:`profile_variant` (``results/variants/smoke/models.json``, ...).

    At the ``smoke`` profile missing models are trained on the spot (seconds); at the other profiles
    a missing model raises a ``KeyError`` that says how to train it (notebook 02), because that
    takes hours on a CPU. A registered model from another profile than asked is also an error.
    """
    reg = store.read_json(registry_path(profile_variant(profile, seed)), {}) or {}
    out = {}
    for defense in defenses:
        key = f"{dataset}/{ex.check_defense(defense)}"
        rec = reg.get(key)
        if rec is None or rec.get("profile") != profile:
            if profile != "smoke":
                raise KeyError(f"no {profile}-profile model of seed {seed} registered for {key}; train it with "
                               f"notebook 02 (papermill -p dataset {dataset} -p defense {defense} -p profile "
                               f"{profile} -p seed {seed}) or `python -m crossholder.training --dataset {dataset} "
                               f"--defense {defense} --profile {profile} --seed {seed}`")
            rec = train(final_config(dataset, defense, profile=profile, seed=seed), register=True,
                        progress=progress).record
        out[defense] = rec
    return out


if __name__ == "__main__":
    main()
