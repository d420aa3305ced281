"""The paper's verdicts and the paired tests (crossholder.claims) on constructed curves and per-example frames."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from crossholder import claims, evaluation, stats, sweeps
from oracles import strong_frame

F64 = torch.float64


def _curves(acc_by_defense: dict[str, list[float]], eps: list[float], n: int = 300) -> "evaluation.pd.DataFrame":
    rows = []
    for d, accs in acc_by_defense.items():
        for e, a in zip(eps, accs):
            lo, hi = stats.wilson_interval(round(a * n), n)
            for att in sweeps.ATTACKS:
                rows.append({"defense": d, "attack": att, "eps": e, "accuracy": a, "ci_low": float(lo),
                             "ci_high": float(hi)})
    return evaluation.pd.DataFrame(rows)


def test_claims_table_verdicts():
    eps = [3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0]
    curves = _curves({"cross_holder": [0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4],
                      "cross_lipschitz": [0.9, 0.8, 0.72, 0.55, 0.45, 0.35, 0.25],   # clearly below CH after 4
                      "adversarial": [0.95, 0.9, 0.85, 0.72, 0.62, 0.5, 0.41]}, eps)  # ahead, but within the CIs
    t = claims.claims_table(curves, "mnist").set_index(["claim", "attack"])
    assert t.loc[("M1", "pgd-ce"), "supported"] and t.loc[("M1", "pgd-ce"), "beyond_ci"]
    assert t.loc[("M4", "pgd-cw"), "supported"] and t.loc[("M4", "pgd-cw"), "beyond_ci"]
    assert not t.loc[("M3", "pgd-cw"), "supported"] and not t.loc[("M3", "pgd-cw"), "beyond_ci"]
    # at ε = 4 all three are >= 0.7, but Cross-Lipschitz's 0.72 has a lower bound below 0.7 at n = 300
    assert t.loc[("M5", "worst-min"), "supported"] and not t.loc[("M5", "worst-min"), "beyond_ci"]
    # a claim whose range is not in the curves
    t2 = claims.claims_table(curves[curves["eps"] <= 4.0], "mnist").set_index(["claim", "attack"])
    assert t2.loc[("M4", "pgd-cw"), "evidence"] == "not evaluated"


def test_paired_comparison_counts_and_exact_mcnemar():
    from scipy.stats import binomtest

    # fooled_at: index of the first ε that fooled the image (2 = never, on a 2-point grid); -1 = misclassified
    a = evaluation.pd.DataFrame({"index": [0, 1, 2, 3, 4, 5], "fooled_at_ce": [2, 2, 1, 2, -1, 2],
                                 "fooled_at_cw": [2, 1, 2, 2, -1, 2]})
    b = evaluation.pd.DataFrame({"index": [0, 1, 2, 3, 4, 5], "fooled_at_ce": [2, 2, 2, 0, 2, 2],
                                 "fooled_at_cw": [2, 2, 2, 2, 2, 1]})
    r = claims.paired_comparison(a, b, 1)     # robust at eps[1]: fooled_at > 1 for both losses
    # a robust: 0, 3, 5; b robust: 0, 1, 2, 4
    assert (r["both"], r["only_a"], r["only_b"], r["neither"]) == (1, 2, 3, 0)
    assert r["p_value"] == pytest.approx(binomtest(2, 5).pvalue, abs=1e-12)
    r0 = claims.paired_comparison(a, b, 0)    # eps[0]: a robust 0,1,2,3,5; b robust 0,1,2,4,5
    assert (r0["only_a"], r0["only_b"]) == (1, 1) and r0["p_value"] == 1.0
    rng = np.random.default_rng(0)
    for _ in range(20):                            # exact two-sided McNemar = scipy's binomial test
        n = 60
        fa, fb = rng.integers(-1, 4, n), rng.integers(-1, 4, n)
        A = evaluation.pd.DataFrame({"index": range(n), "fooled_at_ce": fa, "fooled_at_cw": 3})
        B = evaluation.pd.DataFrame({"index": range(n), "fooled_at_ce": fb, "fooled_at_cw": 3})
        r = claims.paired_comparison(A, B, 1)
        d = r["only_a"] + r["only_b"]
        assert r["p_value"] == pytest.approx(binomtest(r["only_a"], d).pvalue if d else 1.0, abs=1e-12)
        assert r["both"] + r["only_a"] + r["only_b"] + r["neither"] == n
    with pytest.raises(ValueError, match="same images"):
        claims.paired_comparison(a, b.iloc[::-1], 1)
    with pytest.raises(ValueError, match="lacks the columns"):
        claims.paired_comparison(a.drop(columns="fooled_at_cw"), b, 1)
    with pytest.raises(ValueError, match="k=-1"):
        claims.paired_comparison(a, b, -1)


def test_paired_table_under_both_attacks():
    a = strong_frame(ce=[3, 3, 3, 0], strongest=[3, 3, 1, 0])
    b = strong_frame(ce=[3, 0, 0, 0], strongest=[3, 0, 0, 0])
    t = claims.paired_table({"cross_holder": a, "cross_lipschitz": b}, [0.0, 1.0, 2.0], dataset="mnist",
                                eps_points=[2.0])
    assert list(t["attack"]) == ["worst-per-example", "strongest"] and list(t["b"]) == ["cross_lipschitz"] * 2
    w, s = t.iloc[0], t.iloc[1]
    assert (w["a_robust"], w["b_robust"], w["only_a"], w["only_b"]) == (3, 1, 2, 0)
    assert (s["a_robust"], s["b_robust"], s["only_a"], s["only_b"]) == (2, 1, 1, 0) and s["p_value"] == 1.0
    with pytest.raises(ValueError, match="attack='apgd'; allowed values"):
        claims.paired_comparison(a, b, 1, "apgd")


def test_ablation_claims_are_judged_once_on_strongest():
    """Issue 31's two claims (ABLATION_CLAIMS): judged on the strongest curve only, once each; a missing
    ablation is "not evaluated"; the paper's own claims are untouched by default."""
    eps = [3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0]
    curves = _curves({"cross_holder": [0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4],
                      "cross_holder_hg": [0.9, 0.8, 0.7, 0.55, 0.45, 0.35, 0.25]}, eps, n=1000)
    curves = curves[curves["attack"].isin(["strongest", "worst-min"])]
    t = claims.claims_table(curves, "mnist", claims.ABLATION_CLAIMS["mnist"])
    assert list(t["claim"]) == ["MH", "MC"] and set(t["attack"]) == {"strongest"}
    mh, mc = t.iloc[0], t.iloc[1]
    assert mh["supported"] and mh["beyond_ci"] and mc["evidence"] == "not evaluated"
    assert set(claims.claims_table(curves, "mnist")["claim"]) == {c[0] for c in claims.CLAIMS["mnist"]}
