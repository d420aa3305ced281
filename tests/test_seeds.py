"""Verdicts across training seeds (crossholder.seeds) on synthetic per-example rows."""

import math

import numpy as np
import pandas as pd
import pytest

from crossholder import evaluation, seeds

EPS = [0.0, 2.0, 4.0, 5.0, 6.0]


def _per(fooled_at: np.ndarray) -> pd.DataFrame:
    """Per-example rows where every attack fools each image first at grid index ``fooled_at``."""
    n = len(fooled_at)
    return pd.DataFrame({"index": np.arange(n), "label": np.zeros(n, int), "fooled_at_ce": fooled_at,
                         "fooled_at_cw": fooled_at, "fooled_at_strongest": fooled_at})


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
    c = evaluation.paired_comparison(per[("cross_holder", 0)], per[("cross_lipschitz", 0)], 2, "strongest")
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
    st = seeds.write("mnist", n=n)
    assert st["missing"] == [("cross_holder", 2), ("cross_lipschitz", 2)]
    folder = tmp_path / "results" / "mnist"
    t = pd.read_csv(folder / "seeds.csv")
    assert set(t["seed"]) == {0, 1} and (t["n"] == n).all()
    import json
    side = json.loads((folder / "seeds.json").read_text())
    assert side["params"]["missing"] == ["cross_holder/2", "cross_lipschitz/2"]
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
    seeds.write("fashion_mnist", n=n)
    curves = reports.seed_curves_table(tmp_path).splitlines()
    assert "| Fashion-MNIST | Cross-Hölder | 0 | 50 | 100.0 | 100.0 | 100.0 | 100.0 |" in curves
    assert "| Fashion-MNIST | Cross-Hölder | mean (range) | 50 | 80.0 (60.0–100.0) | 80.0 (60.0–100.0) | " \
           "80.0 (60.0–100.0) | 80.0 (60.0–100.0) |" in curves
    claims = reports.claims_seeds_table(tmp_path)
    assert "| F1 | Worst case: Cross-Hölder above Cross-Lipschitz | strongest | 1 of 2 | 0: yes*, 1: no* |" in claims
    paired = reports.paired_seeds_table(tmp_path)
    assert "| Fashion-MNIST | Cross-Lipschitz | strongest | 5 | 2 | +0.0 (1.00) | 0: 20/0, 1: 0/20 |" in paired
