"""Notebook 01's tables: operator-norm estimates, |Hg| against |Hv*|, convergence, and Figure 3's claims.

Built on :mod:`crossholder.hessian` (the math); pandas lives here, not there.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from . import guards
from .hessian import METHODS, HVPOperator, flat_norm, full_hessian, normalize, operator_norm, resolve_pairs

__all__ = ["norm_table", "norm_summary", "convergence_table", "figure3_claims", "direction_frame", "DEFENSE_NORMS",
           "defense_norms", "load_defense_norms", "ratio_summary"]


def norm_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, method: str = "ascent", iters: int = 10,
               step: float = 0.1, lanczos_iters: int | None = 20, batch_size: int = 500, seed: int = 0,
               progress: bool = True):
    """Per-example ``|Hg|`` and ``|Hv*|`` for the runner-up class (the paper's appendix C.1, Figure 3).

    ``t`` is the predicted class and ``j`` the runner-up (second-largest logit), as in the paper's
    footnote 2. Returns a DataFrame with one row per example: ``index``, ``label``, ``pred``, ``j``,
    ``margin``, ``grad_norm``, ``hg`` (|Hg|), ``hv`` (|Hv*|, the ``method`` estimate with ``iters``
    steps), ``diff`` (``hv - hg``) and, when ``lanczos_iters`` is set, ``hv_lanczos``: a Lanczos
    estimate with that many products (beyond the paper: how far the paper's ascent is from the
    norm). Units: logits per pixel² of [0, 1] images.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    model.eval()
    rows = []
    for start in tqdm(range(0, len(x), batch_size), desc="|Hg|, |Hv*|", disable=not progress, leave=False):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        with torch.no_grad(), guards.frozen_batch_stats(model):
            t = model(xb).argmax(1)
        H = HVPOperator(model, xb, t, "runner_up")
        with torch.no_grad():
            hg = flat_norm(H(normalize(H.grad, 2.0)))
        H.release()
        res = operator_norm(model, xb, t, H.j, method=method, iters=iters, step=step, seed=seed + start)
        rows.append(pd.DataFrame({
            "index": range(start, start + len(xb)), "label": yb.tolist(), "pred": t.tolist(), "j": H.j.tolist(),
            "margin": H.margin.tolist(), "grad_norm": flat_norm(H.grad).tolist(), "hg": hg.tolist(),
            "hv": res.norm.tolist()}))
        if lanczos_iters:
            lz = operator_norm(model, xb, t, H.j, method="lanczos", iters=lanczos_iters, seed=seed + start)
            rows[-1]["hv_lanczos"] = lz.norm.tolist()
    df = pd.concat(rows, ignore_index=True)
    df["diff"] = df["hv"] - df["hg"]
    return df


def norm_summary(df) -> "pd.DataFrame":  # noqa: F821
    """Quantiles of ``hg``, ``hv`` and ``diff`` of a :func:`norm_table`, with the histogram mode of each.

    The mode is the centre of the fullest of 50 equal-width bins between the 0.5% and 99.5% quantiles.
    """
    import numpy as np
    import pandas as pd

    rows = []
    for col in [c for c in ("hg", "hv", "diff", "hv_lanczos") if c in df]:
        s = df[col].to_numpy()
        lo, hi = np.quantile(s, [0.005, 0.995])
        counts, edges = np.histogram(s[(s >= lo) & (s <= hi)], bins=50, range=(lo, hi))
        k = int(counts.argmax())
        rows.append({"quantity": col, "mean": s.mean(), "q05": np.quantile(s, 0.05), "q25": np.quantile(s, 0.25),
                     "median": np.median(s), "q75": np.quantile(s, 0.75), "q95": np.quantile(s, 0.95),
                     "max": s.max(), "mode": 0.5 * (edges[k] + edges[k + 1])})
    return pd.DataFrame(rows).set_index("quantity")




def convergence_table(model: nn.Module, x: torch.Tensor, t: torch.Tensor, *, products: tuple[int, ...] = (1, 2, 3, 5, 7, 10, 15, 20, 30),
                      step: float = 0.1, seed: int = 0, progress: bool = True):
    """Estimates against the number of Hessian-vector products, with the exact norm, per example.

    ``model`` and ``x`` in float64; the exact spectral norm comes from the full input Hessian
    (:func:`full_hessian`, ``d x d``) and ``eigvalsh``; ``j`` is the runner-up of ``t``.
    Ascent with ``T`` steps costs ``2T + 1`` products, so it appears at odd budgets only.
    Returns a DataFrame: ``example``, ``method``, ``products``, ``estimate``, ``exact``, ``rel_err``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if x.dtype != torch.float64:
        raise TypeError("convergence_table needs float64 inputs and model (the exact oracle)")
    with torch.no_grad(), guards.frozen_batch_stats(model):
        _, j = resolve_pairs(model(x), t, "runner_up")
    exact = []
    for b in tqdm(range(len(x)), desc="full Hessians", disable=not progress, leave=False):
        Hm = full_hessian(model, x[b], t[b], j[b])
        exact.append(torch.linalg.eigvalsh(0.5 * (Hm + Hm.T)).abs().max())
    exact_t = torch.stack(exact)
    rows = []
    budget = max(products)
    for method in METHODS:
        iters = budget if method != "ascent" else (budget - 1) // 2
        r = operator_norm(model, x, t, j, method=method, iters=iters, step=step, seed=seed)
        for k, n_prod in enumerate(r.history_hvps):
            if n_prod not in products:
                continue
            est = r.history[k]
            for b in range(len(x)):
                rows.append({"example": b, "method": method, "products": n_prod, "estimate": float(est[b]),
                             "exact": float(exact_t[b]), "rel_err": float((exact_t[b] - est[b]) / exact_t[b])})
    return pd.DataFrame(rows)


def figure3_claims(df) -> "pd.DataFrame":  # noqa: F821
    """The paper's statements about Figure 3 (appendix C.1) checked against a :func:`norm_table`."""
    import pandas as pd

    s = norm_summary(df)
    rows = [
        {"claim": "|Hv*| is shifted to the right of |Hg| (median)",
         "ours": f"median |Hg| {s.loc['hg', 'median']:.3g}, |Hv*| {s.loc['hv', 'median']:.3g}",
         "supported": bool(s.loc["hv", "median"] > s.loc["hg", "median"])},
        {"claim": "|Hv*| has a heavier right tail (95% quantile)",
         "ours": f"q95 |Hg| {s.loc['hg', 'q95']:.3g}, |Hv*| {s.loc['hv', 'q95']:.3g}",
         "supported": bool(s.loc["hv", "q95"] > s.loc["hg", "q95"])},
        {"claim": "|Hv*| - |Hg| has its mode around 5 (paper's units unknown)",
         "ours": f"mode {s.loc['diff', 'mode']:.3g}, median {s.loc['diff', 'median']:.3g}",
         "supported": bool(3.0 <= s.loc["diff", "mode"] <= 7.0)},
        {"claim": "|Hg| is not a tight lower bound (|Hv*| - |Hg| > 10% of |Hv*| for most examples)",
         "ours": f"{(df['diff'] > 0.1 * df['hv']).mean():.1%} of examples",
         "supported": bool((df["diff"] > 0.1 * df["hv"]).mean() > 0.5)},
    ]
    return pd.DataFrame(rows)


def direction_frame(model: nn.Module, x: torch.Tensor, *, iters: int = 30, seed: int = 0):
    """Tidy frame of inputs and their top-curvature directions (Lanczos, predicted vs runner-up).

    Columns ``example``, ``kind`` (``"x"`` the image, ``"v"`` the unit direction v*), ``pixel``
    (flattened index), ``value``; plus ``norm`` (the estimate) on the ``"v"`` rows.
    """
    import pandas as pd

    with torch.no_grad(), guards.frozen_batch_stats(model):
        t = model(x).argmax(1)
    r = operator_norm(model, x, t, "runner_up", method="lanczos", iters=iters, seed=seed)
    frames = []
    d = x[0].numel()
    for b in range(len(x)):
        frames.append(pd.DataFrame({"example": b, "kind": "x", "pixel": range(d), "value": x[b].flatten().tolist()}))
        frames.append(pd.DataFrame({"example": b, "kind": "v", "pixel": range(d), "value": r.v[b].flatten().tolist(),
                                    "norm": float(r.norm[b])}))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- per registered model (issue 31, notebook 09)
#: |Hg| against |Hv*| of each registered model: the first ``n`` test images, |Hv*| by Lanczos with ``iters``
#: products (runner-up margin, as Figure 3).
DEFENSE_NORMS = {"n": 1000, "method": "lanczos", "iters": 20}


def defense_norms(dataset: str, defense: str, *, compute: bool = True, progress: bool = False) -> pd.DataFrame | None:
    """:func:`norm_table` of the model registered as ``"<dataset>/<defense>"`` (``results/models.json``) on
    the first :data:`DEFENSE_NORMS` ``["n"]`` test images: per image ``hg`` (|Hg|) and ``hv`` (|Hv*|,
    Lanczos), so ``hv / hg >= 1`` says how much curvature lies off the gradient direction. Cached as
    ``results/<dataset>/hessian/norms-<defense>-<id>.csv`` (:func:`crossholder.store.cached_table`);
    ``compute=False`` returns ``None`` instead of computing a missing table.

    Raises:
        KeyError: no model registered under that key.
    """
    from . import data as data_mod
    from . import hessian, store, training

    model, rec = training.load_registered(dataset, defense)
    params = _norms_params(dataset, defense, rec["run_id"])
    stem = f"{dataset}/hessian/norms-{defense}"
    if not compute:
        csv = store.cached_csv(stem, params, seed=0, profile="cpu", code_version=hessian.CODE_VERSION)
        return pd.read_csv(csv) if csv.exists() else None
    x, y = data_mod.tensors(dataset, "test")
    x, y = x[:DEFENSE_NORMS["n"]], y[:DEFENSE_NORMS["n"]]
    table, _, _ = store.cached_table(
        stem, params, lambda: norm_table(model.eval(), x, y, method=DEFENSE_NORMS["method"],
                                         iters=DEFENSE_NORMS["iters"], lanczos_iters=None, progress=progress),
        seed=0, profile="cpu", code_version=hessian.CODE_VERSION)
    return table


def _norms_params(dataset: str, defense: str, run_id: str) -> dict:
    return {"dataset": dataset, "defense": defense, "model": run_id, **DEFENSE_NORMS}


def load_defense_norms(root=None) -> dict[tuple[str, str], pd.DataFrame]:
    """Every :func:`defense_norms` table there is for the registered models (``results/models.json``)
    under ``root`` (a project root; ``None``: :func:`crossholder.paths.results_dir`), by
    ``(dataset, defense)``. Reads only."""
    from . import data as data_mod
    from . import experiments as ex
    from . import hessian, paths, store

    res = paths.results_under(root)
    reg = store.read_json(res / "models.json", {}) or {}
    out = {}
    for ds, d in [(ds, d) for ds in data_mod.DATASETS for d in ex.ALL_DEFENSES if f"{ds}/{d}" in reg]:
        rec = reg[f"{ds}/{d}"]
        # the file store.cached_table writes for defense_norms, found under ``res``
        csv = res / store.cached_csv(f"{ds}/hessian/norms-{d}", _norms_params(ds, d, rec["run_id"]), seed=0,
                                     profile="cpu", code_version=hessian.CODE_VERSION).relative_to(store.cache_dir("cpu"))
        if csv.exists():
            out[(ds, d)] = pd.read_csv(csv)
    return out


def ratio_summary(tables: dict[tuple[str, str], pd.DataFrame]) -> pd.DataFrame:
    """Per ``(dataset, defense)``: quantiles of ``|Hv*| / |Hg|`` and the medians of both norms."""
    import numpy as np

    rows = []
    for (ds, d), t in tables.items():
        r = (t["hv"] / t["hg"]).to_numpy()
        rows.append({"dataset": ds, "defense": d, "n": len(t), "median_hg": t["hg"].median(),
                     "median_hv": t["hv"].median(), "ratio_q05": np.quantile(r, 0.05), "ratio_median": np.median(r),
                     "ratio_q95": np.quantile(r, 0.95), "share_ratio_above_2": float((r > 2).mean())})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    """``python -m crossholder.hessian_tables [--dataset D ...]``: :func:`defense_norms` of every registered
    model (``results/models.json``) of the data sets (default both); cached, so a rerun only loads."""
    import argparse

    from . import data as data_mod
    from . import experiments as ex
    from . import paths, store

    ap = argparse.ArgumentParser(description="|Hg| and |Hv*| of every registered model on the first "
                                 f"{DEFENSE_NORMS['n']} test images (notebook 09)")
    ap.add_argument("--dataset", action="append", choices=data_mod.DATASETS, default=None)
    args = ap.parse_args(argv)
    reg = store.read_json(paths.results_dir() / "models.json", {}) or {}
    for ds in args.dataset or data_mod.DATASETS:
        for d in ex.ALL_DEFENSES:
            if f"{ds}/{d}" in reg:
                t = defense_norms(ds, d)
                print(f"{ds}/{d}: median |Hv*| / |Hg| = {(t['hv'] / t['hg']).median():.3f} on {len(t)} images")


if __name__ == "__main__":
    main()
