"""Verdicts across training seeds (crossholder.seeds) on synthetic per-example rows."""

import math

import numpy as np
import pandas as pd
import pytest

from crossholder import claims, evaluation, seeds, stats

EPS = [0.0, 2.0, 4.0, 5.0, 6.0]


def _per(fooled_at: np.ndarray) -> pd.DataFrame:
    """Per-example rows where every attack fools each image first at grid index ``fooled_at``."""
    n = len(fooled_at)
    return pd.DataFrame({"index": np.arange(n), "label": np.zeros(n, int), "fooled_at_ce": fooled_at,
                         "fooled_at_cw": fooled_at, "fooled_at_strongest": fooled_at})


def _records(per) -> dict:
    """What models_by_seed returns for the (defense, seed) keys of ``per``."""
    return {k: {"run_id": f"{k[0]}-{k[1]}", "hyperparameters": {"seed": k[1]}} for k in per}


def test_each_attack_is_judged_on_its_own_column():
    """Seed tables and the pooled test read each attack's own fooled_at column (a mix-up would pass
    tests whose columns are all equal)."""
    per = _per(np.array([5, 5, 5, 5]))
    per["fooled_at_ce"] = [1, 5, 5, 5]          # pgd-ce: 3 robust at ε = 4 (grid index 2)
    per["fooled_at_cw"] = [5, 1, 1, 5]          # pgd-cw: 2 robust
    per["fooled_at_strongest"] = [1, 1, 1, 5]   # strongest: 1 robust
    t = seeds.seeds_table({("cross_holder", 0): per}, EPS, dataset="mnist")
    at4 = t[t["eps"] == 4.0].set_index("attack")["robust"]
    assert (at4["pgd-ce"], at4["pgd-cw"], at4["strongest"], at4["worst-per-example"]) == (3, 2, 1, 1)
    other = _per(np.array([5, 5, 5, 5]))
    r = seeds.pooled_paired({("cross_holder", 0): per, ("cross_lipschitz", 0): other}, EPS, dataset="mnist",
                            attacks=("pgd-ce", "strongest"), eps_points=(4.0,)).set_index("attack")
    assert (r.loc["pgd-ce", "only_b"], r.loc["strongest", "only_b"]) == (1, 3)


def test_seeds_table_is_tidy_and_rejects_different_images():
    per = {("cross_holder", 0): _per(np.array([5, 5, 3, 1])), ("cross_holder", 1): _per(np.array([5, 2, 2, 1]))}
    t = seeds.seeds_table(per, EPS, dataset="mnist")
    assert list(t.columns[:3]) == ["defense", "seed", "attack"]
    s = t[(t["attack"] == "strongest") & (t["eps"] == 4.0)].set_index("seed")
    assert s.loc[0, "robust"] == 3 and s.loc[1, "robust"] == 1 and (s["n"] == 4).all()   # fooled_at > k=2
    bad = {**per, ("cross_lipschitz", 0): _per(np.array([5, 5, 5]))}
    with pytest.raises(ValueError, match="same images"):
        seeds.seeds_table(bad, EPS, dataset="mnist")


def test_claims_across_seeds_counts_the_seeds_that_support_each_claim():
    # F1 (Fashion-MNIST): Cross-Hölder above Cross-Lipschitz at every ε in [0.5, 6]
    n = 50
    strong, weak = np.full(n, 5), np.full(n, 5)
    weak[:20] = 1                                       # Cross-Lipschitz fooled earlier on 20 images
    per = {("cross_holder", 0): _per(strong), ("cross_lipschitz", 0): _per(weak),   # seed 0: supported
           ("cross_holder", 1): _per(weak), ("cross_lipschitz", 1): _per(strong)}   # seed 1: the reverse
    t = seeds.seeds_table(per, EPS, dataset="fashion_mnist")
    c = seeds.claims_across_seeds(t, "fashion_mnist").set_index(["claim", "attack"])
    row = c.loc[("F1", "strongest")]
    assert row["seeds"] == 2 and row["supported_in"] == 1
    # seed 0 clearly for (20 of 50 apart), seed 1 clearly against: counted apart, never added up
    assert row["clear_for_in"] == 1 and row["clear_against_in"] == 1 and row["per_seed"] == "0: yes*, 1: no*"
    assert c.loc[("F2", "strongest"), "seeds"] == 0    # adversarial training is in neither seed


def test_pooled_paired_adds_each_seeds_discordant_images():
    a0, b0 = np.array([5, 5, 5, 1, 5]), np.array([1, 1, 5, 1, 5])   # only_a = 2, only_b = 0
    a1, b1 = np.array([5, 1, 5, 5]), np.array([1, 5, 5, 1])         # only_a = 2, only_b = 1
    per = {("cross_holder", 0): _per(a0), ("cross_lipschitz", 0): _per(b0),
           ("cross_holder", 1): _per(a1), ("cross_lipschitz", 1): _per(b1)}
    t = seeds.pooled_paired(per, EPS, dataset="mnist", attacks=("strongest",), eps_points=(4.0,))
    r = t.iloc[0]
    assert (r["seeds"], r["n"], r["only_a"], r["only_b"]) == (2, 9, 4, 1)
    assert r["a_robust"] == 7 and r["b_robust"] == 4 and r["per_seed"] == "0: 2/0, 1: 2/1"
    assert math.isclose(r["p_value"], 2 * (1 + 5) / 2 ** 5)            # exact: 2 P(X <= 1), X ~ Bin(5, 1/2)
    # one seed alone is the ordinary paired test
    one = seeds.pooled_paired({k: v for k, v in per.items() if k[1] == 0}, EPS, dataset="mnist",
                              attacks=("strongest",), eps_points=(4.0,)).iloc[0]
    c = claims.paired_comparison(per[("cross_holder", 0)], per[("cross_lipschitz", 0)], 2, "strongest")
    assert math.isclose(one["p_value"], c["p_value"]) and one["only_a"] == c["only_a"]
    # a seed only one of the two defenses has is left out of the pooled test
    lone = {**per, ("cross_holder", 2): _per(np.array([5, 5, 5, 5]))}
    assert seeds.pooled_paired(lone, EPS, dataset="mnist", attacks=("strongest",),
                               eps_points=(4.0,)).iloc[0]["seeds"] == 2
    with pytest.raises(ValueError, match="eps=4.5"):
        seeds.pooled_paired(per, EPS, dataset="mnist", eps_points=(4.5,))


def test_per_examples_by_seed_validates_n():
    with pytest.raises(ValueError, match="n=0"):
        seeds.per_examples_by_seed("mnist", n=0)


def test_pooled_paired_says_how_many_seeds_are_significant_alone():
    """One seed with a large effect can carry the pooled p-value: per_seed_p and significant_in show it."""
    n = 100
    a = np.full(n, 5)
    b0 = a.copy()
    b0[:40] = 1                                               # seed 0: 40/0, clearly for Cross-Hölder
    b1 = a.copy()
    b1[:1] = 1                                                # seed 1: 1/0, not significant alone
    per = {("cross_holder", 0): _per(a), ("cross_lipschitz", 0): _per(b0),
           ("cross_holder", 1): _per(a), ("cross_lipschitz", 1): _per(b1)}
    r = seeds.pooled_paired(per, EPS, dataset="mnist", attacks=("strongest",), eps_points=(4.0,)).iloc[0]
    assert r["p_value"] < 1e-10 and r["significant_in"] == 1
    assert r["per_seed_p"] == f"0: {stats.mcnemar_exact(40, 0):.2g}, 1: 1"


def _registry(root, seed: int, records: dict) -> None:
    import json

    path = root / "models.json" if seed == 0 else root / "variants" / f"cpu-seed={seed}" / "models.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))


def test_models_by_seed_refuses_a_seed_that_is_not_seed_0s_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    hp = {"dataset": "mnist", "defense": "cross_holder", "lr": 0.001, "epochs": 10}
    _registry(tmp_path, 0, {"mnist/cross_holder": {"run_id": "r0", "hyperparameters": {**hp, "seed": 0}}})
    _registry(tmp_path, 1, {"mnist/cross_holder": {"run_id": "r1", "hyperparameters": {**hp, "seed": 1}}})
    got = seeds.models_by_seed("mnist", defenses=("cross_holder", "none"))
    assert {k: r["run_id"] for k, r in got.items()} == {("cross_holder", 0): "r0", ("cross_holder", 1): "r1"}
    _registry(tmp_path, 2, {"mnist/cross_holder": {"run_id": "r2", "hyperparameters": {**hp, "seed": 2, "lr": 0.01}}})
    with pytest.raises(ValueError, match=r"seed 2 \(run r2\) differs from seed 0's \(run r0\) in \['lr'\]"):
        seeds.models_by_seed("mnist", defenses=("cross_holder",))
    _registry(tmp_path, 2, {"mnist/cross_holder": {"run_id": "r2", "hyperparameters": {**hp, "seed": 1}}})
    with pytest.raises(ValueError, match="registered for seed 2 .* trained with seed 1"):
        seeds.models_by_seed("mnist", defenses=("cross_holder",))


def test_first_rows_so_far_cuts_the_first_n_images_and_refuses_a_gap(tmp_path, monkeypatch):
    """Seed 0's 1,000-image evaluation gives its first 500 rows (sorted by image); a file with a gap
    in the first 500 gives nothing; seed 1's evaluation on 500 images is a different file."""
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    monkeypatch.setattr(evaluation, "_model_of", lambda *a, **k: (None, {"run_id": "m0"}))
    prof = seeds.ex.PROFILES["cpu"]

    def files(n, seed):
        return evaluation._identity(dataset="mnist", defense="cross_holder", model_id="m0",
                                    eps_list=evaluation.eps_grid("cpu"), steps=prof["eval_steps"],
                                    restarts=prof["eval_restarts"], n=n, seed=seed, profile="cpu",
                                    protocol="strongest")[2]

    per_csv = files(prof["eval_n"], 0)[1]
    per_csv.parent.mkdir(parents=True)
    rows = _per(np.arange(prof["eval_n"]) % 13).sample(frac=1.0, random_state=0)     # shuffled
    rows.to_csv(per_csv, index=False)
    got = evaluation.first_rows_so_far("mnist", "cross_holder", 500, seed=0)
    assert got["index"].tolist() == list(range(500))
    assert got["fooled_at_strongest"].tolist() == [i % 13 for i in range(500)]
    assert evaluation.first_rows_so_far("mnist", "cross_holder", 500, seed=1, n_examples=500) is None
    rows[rows["index"] != 250].to_csv(per_csv, index=False)                          # image 250 missing
    assert evaluation.first_rows_so_far("mnist", "cross_holder", 500, seed=0) is None
    assert files(500, 1)[1] != per_csv


def test_seeds_figure_draws_every_seed_and_names_a_missing_attack(tmp_path, monkeypatch):
    from crossholder import plotting

    monkeypatch.setenv("CROSSHOLDER_FIGURES", str(tmp_path))
    per = {("cross_holder", s): _per(np.array([5, 5 - s, 3, 1])) for s in (0, 1, 2)}
    t = seeds.seeds_table(per, EPS, dataset="mnist")
    fig = plotting.seeds_figure(t, std=0.3081, name="seeds_test", title="t")
    ax = fig.axes[0]
    assert len([ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(EPS)]) == 3
    assert (tmp_path / "seeds_test.png").exists() and (tmp_path / "seeds_test.pdf").exists()
    with pytest.raises(ValueError, match="attack='fab'"):
        plotting.seeds_figure(t, std=0.3081, name="x", title="t", attack="fab")


def test_write_puts_tables_and_figure_in_place_from_the_rows_found(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CROSSHOLDER_FIGURES", str(tmp_path / "figures"))
    n = 40
    per = {(d, s): _per(np.where(np.arange(n) < 10 * (s + 1), 3, 9)) for d in ("cross_holder", "cross_lipschitz")
           for s in (0, 1)}
    monkeypatch.setattr(seeds, "per_examples_by_seed",
                        lambda dataset, **kw: (per, [("cross_holder", 2), ("cross_lipschitz", 2)]))
    monkeypatch.setattr(seeds, "models_by_seed", lambda dataset, **kw: _records(per))
    st = seeds.write("mnist", n=n)
    assert st["missing"] == [("cross_holder", 2), ("cross_lipschitz", 2)]
    folder = tmp_path / "results" / "mnist"
    t = pd.read_csv(folder / "seeds.csv")
    assert set(t["seed"]) == {0, 1} and (t["n"] == n).all()
    import json
    side = json.loads((folder / "seeds.json").read_text())
    assert side["params"]["missing"] == ["cross_holder/2", "cross_lipschitz/2"]
    assert side["params"]["models"] == {f"{d}/{s}": f"{d}-{s}" for d, s in sorted(per)}
    assert (folder / "claims-seeds.csv").exists() and (folder / "paired-seeds.csv").exists()
    assert (tmp_path / "figures" / "seeds_mnist.png").exists()
    monkeypatch.setattr(seeds, "per_examples_by_seed", lambda dataset, **kw: ({}, [("none", 0)]))
    assert seeds.write("fashion_mnist")["found"] == []
    assert not (tmp_path / "results" / "fashion_mnist").exists()


def test_seed_tables_in_reports_read_what_write_wrote(tmp_path, monkeypatch):
    from crossholder import reports

    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CROSSHOLDER_FIGURES", str(tmp_path / "figures"))
    n = 50
    strong, weak = np.full(n, 99), np.full(n, 99)
    weak[:20] = 1
    per = {("cross_holder", 0): _per(strong), ("cross_lipschitz", 0): _per(weak),
           ("cross_holder", 1): _per(weak), ("cross_lipschitz", 1): _per(strong)}
    monkeypatch.setattr(seeds, "per_examples_by_seed", lambda dataset, **kw: (per, []))
    monkeypatch.setattr(seeds, "models_by_seed", lambda dataset, **kw: _records(per))
    seeds.write("fashion_mnist", n=n)
    curves = reports.seed_curves_table(tmp_path).splitlines()
    assert "| Fashion-MNIST | Cross-Hölder | 0 | 50 | 100.0 | 100.0 | 100.0 | 100.0 |" in curves
    assert "| Fashion-MNIST | Cross-Hölder | mean (range) | 50 | 80.0 (60.0–100.0) | 80.0 (60.0–100.0) | " \
           "80.0 (60.0–100.0) | 80.0 (60.0–100.0) |" in curves
    claims = reports.claims_seeds_table(tmp_path)
    assert "| F1 | Worst case: Cross-Hölder above Cross-Lipschitz | strongest | 1 of 2 | 0: yes*, 1: no* |" in claims
    paired = reports.paired_seeds_table(tmp_path)
    assert "| Fashion-MNIST | Cross-Lipschitz | strongest | 5 | 2 | +0.0 (1.00) | 0 of 2 | 0: 20/0, 1: 0/20 |" in paired
    v = reports.verdicts_table(tmp_path).splitlines()
    assert v[0].endswith("| strongest | holds in (seeds, n = 50) |")
