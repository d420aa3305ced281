"""Which AutoAttack component fools the images our ``strongest`` sweep calls robust (the agreement's misses).

    .venv/bin/python tools/agreement_misses.py --dataset mnist --defense cross_lipschitz --eps 5 6 [--n 200]

Runs AutoAttack's standard L2 components one at a time (APGD-CE, APGD-T, FAB-T, Square; pyautoattack,
seed 0, as in ``checks.autoattack_agreement``) on the first ``n`` test images that ``strongest``
calls robust at each ε (paper units), and prints, per missed image, which components fool it and
our attacks' smallest witness norms (in paper units). Diagnosis only: writes
``results/<dataset>/robustness/misses-<defense>.csv``.
"""
from __future__ import annotations

import argparse
import os
import warnings

import pandas as pd
import torch

from crossholder import attacks, data, evaluation, paths, store, sweeps, training


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--defense", required=True)
    ap.add_argument("--eps", type=float, nargs="+", required=True)
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    from pyautoattack import AutoAttack

    per = evaluation.first_rows_so_far(args.dataset, args.defense, args.n)
    if per is None:
        raise SystemExit("the first n images of the strongest evaluation are not done yet")
    model, _ = training.load_registered(args.dataset, args.defense)
    model.eval()
    x, y = data.tensors(args.dataset, "test")
    x, y = x[:args.n], y[:args.n]
    grid = evaluation.eps_grid("cpu")
    std = data.MEAN_STD[args.dataset][1]
    rows = []
    for e in args.eps:
        k = grid.index(e)
        idx = torch.from_numpy(sweeps.robust_at(per, k, "strongest")).nonzero().squeeze(1)
        xs, ys = x[idx], y[idx]
        fooled = {}
        for name in ("apgd-ce", "apgd-t", "fab-t", "square"):
            aa = AutoAttack(model, norm="L2", eps=sweeps.to_pixel(e, args.dataset), version="standard",
                            seed=0, device="cpu")
            aa.attacks_to_run = [name]   # the standard version's settings, one component
            aa.verbose = False
            with warnings.catch_warnings(), attacks.own_random_state(torch.device("cpu")):
                warnings.simplefilter("ignore")
                adv, _ = aa.run_standard_evaluation(xs, ys, batch_size=len(xs))
            with torch.no_grad():
                fooled[name] = (model(adv).argmax(1) != ys).numpy()
            print(f"eps {e}: {name} fools {int(fooled[name].sum())} of {len(xs)}", flush=True)
        for j, i in enumerate(idx.tolist()):
            hit = [n for n, f in fooled.items() if f[j]]
            if hit:
                r = per.iloc[i]
                rows.append({"eps": e, "index": i, "label": int(y[i]), "fooled_by": "+".join(hit),
                             **{f"min_norm_{a}": float(r[f"min_norm_{a}"]) / std
                                for a in ("ce", "cw", "apgd_ce", "fab", "apgd_t")}})
    out = pd.DataFrame(rows)
    print(out.round(3).to_string(index=False))
    path = paths.results_dir() / args.dataset / "robustness" / f"misses-{args.defense}.csv"
    store.atomic_write_text(path, out.to_csv(index=False))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    main()
