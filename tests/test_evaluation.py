"""The cached, resumable runner: a resumed or cached evaluation refuses rows of other images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossholder import evaluation, sweeps
from oracles import linear_multiclass



def _kw(**extra):
    return dict(dataset="mnist", defense="lin", eps_list=[0.0, 0.2, 0.4], steps=5, restarts=2, seed=1,
                profile="smoke", model_id="m", chunk=4, progress=False, protocol="paper-v1", **extra)


@pytest.mark.filterwarnings("ignore:APGD-T is not run")
def test_resumed_evaluation_refuses_other_images(linear_case, tmp_path, monkeypatch):
    """Issue 30: until=4 on images 0-7, then the same call on 8-15 kept chunk 0 of the old images."""
    lin, x, y, _ = linear_case
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "r"))
    curve, rows, _ = evaluation.evaluate_model(lin, x[:8], y[:8], until=4, **_kw())
    assert curve is None and len(rows) == 4
    with pytest.raises(ValueError, match=r"other images \(inputs fingerprint [0-9a-f]{16}\) than this call's"):
        evaluation.evaluate_model(lin, x[8:16], y[8:16], **_kw())
    # same images: resumes, and the finished run is the one an uninterrupted run gives
    curve, rows, side = evaluation.evaluate_model(lin, x[:8], y[:8], **_kw())
    assert curve is not None and side["inputs"] and rows["label"].tolist() == y[:8].tolist()
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "whole"))
    _, whole, _ = evaluation.evaluate_model(lin, x[:8], y[:8], **_kw())
    evaluation.pd.testing.assert_frame_equal(rows, whole)


@pytest.mark.filterwarnings("ignore:APGD-T is not run")
def test_cached_evaluation_refuses_other_images(linear_case, tmp_path, monkeypatch):
    lin, x, y, _ = linear_case
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "r"))
    _, _, side = evaluation.evaluate_model(lin, x[:8], y[:8], **_kw())
    with pytest.raises(ValueError, match="holds rows of other images"):
        evaluation.evaluate_model(lin, x[8:16], y[8:16], **_kw())
    # a file written before fingerprints were recorded (the committed results): checked by its labels
    sidecar = next((tmp_path / "r").rglob("lin-*.json"))
    record = evaluation.store.read_json(sidecar)
    record.pop("inputs")
    evaluation.store.atomic_write_json(sidecar, record)
    assert evaluation.evaluate_model(lin, x[:8], y[:8], **_kw())[0] is not None
    flipped = y[:8].clone()
    flipped[3] = 1 - flipped[3]
    with pytest.raises(ValueError, match="row for image 3 has label"):
        evaluation.evaluate_model(lin, x[:8], flipped, **_kw())


def test_a_modified_protocol_object_is_refused():
    """A Protocol object differing from the named one would be cached under that name's identity."""
    import dataclasses

    from crossholder import sweeps

    assert sweeps.protocol_of(sweeps.PROTOCOLS["paper-v1"]) is sweeps.PROTOCOLS["paper-v1"]
    with pytest.raises(ValueError, match="is not one of the named protocols"):
        sweeps.protocol_of(dataclasses.replace(sweeps.PROTOCOLS["paper-v1"], step_fraction=0.01))


@pytest.mark.filterwarnings("ignore:APGD-T is not run")
def test_rows_of_other_runs_are_taken_only_for_the_same_images(tmp_path, monkeypatch):
    """Version 2's rows and a donor's rows carry per-chunk fingerprints: other images under the same
    labels are never upgraded or reused (the review of issue 30's change: labels alone let them through)."""
    pytest.importorskip("pyautoattack")

    lin, x, y, _ = linear_multiclass(n=16)
    x2 = (x + 1e-5 * torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)).clamp(0, 1)
    with torch.no_grad():
        assert torch.equal(lin(x2).argmax(1), y), "the same labels, other images"
    kw = dict(dataset="mnist", defense="lin", eps_list=[0.0, 0.05, 0.1], steps=3, restarts=1, seed=0,
              profile="smoke", model_id="m", chunk=8, progress=False)
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "r"))
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "s"))
    evaluation.evaluate_model(lin, x, y, protocol="strongest-v2", **kw)
    _, mixed, side = evaluation.evaluate_model(lin, x2, y, **kw)
    assert "upgraded_from" not in side, "version 2's rows of other images are not upgraded"
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "fresh"))
    _, fresh, _ = evaluation.evaluate_model(lin, x2, y, **kw)
    evaluation.pd.testing.assert_frame_equal(mixed, fresh)
    # a donor on more images: its chunks are reused only for the same images
    import shutil

    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "donor"))
    evaluation.evaluate_model(lin, x, y, **kw)
    shutil.copytree(tmp_path / "donor", tmp_path / "donor-copy")
    _, _, side_same = evaluation.evaluate_model(lin, x[:8], y[:8], reuse_larger_runs=True, **kw)
    assert side_same["reused_from"]["examples"] == 8
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "donor-copy"))
    _, _, side_other = evaluation.evaluate_model(lin, x2[:8], y[:8], reuse_larger_runs=True, **kw)
    assert "reused_from" not in side_other


@pytest.mark.filterwarnings("ignore:APGD-T is not run")
def test_evaluate_model_reuses_whole_chunks_of_a_larger_run(linear_case, tmp_path, monkeypatch):
    lin, x, y, _ = linear_case
    kw = dict(dataset="mnist", defense="lin", eps_list=[0.0, 0.2, 0.4], steps=5, restarts=2, seed=1,
              profile="smoke", model_id="m", chunk=4, progress=False)
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "fresh"))
    _, fresh6, side6 = evaluation.evaluate_model(lin, x[:6], y[:6], **kw)
    assert "reused_from" not in side6
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "donor"))
    _, donor, _ = evaluation.evaluate_model(lin, x[:12], y[:12], **kw)
    _, reused6, side = evaluation.evaluate_model(lin, x[:6], y[:6], reuse_larger_runs=True, **kw)
    assert side["reused_from"]["examples"] == 4, "only the whole chunk [0, 4) is taken; rows 4, 5 are computed"
    assert side["params"]["n"] == 6
    evaluation.pd.testing.assert_frame_equal(reused6, fresh6)
    # labels that do not match the donor's: nothing is reused
    _, _, side_bad = evaluation.evaluate_model(lin, x[:8], 1 - y[:8], reuse_larger_runs=True, **kw)
    assert "reused_from" not in side_bad


@pytest.mark.filterwarnings("ignore:APGD-T is not run")
def test_evaluate_model_until_stops_and_resumes_to_the_same_rows(linear_case, tmp_path, monkeypatch):
    """``until`` cuts a run into pieces: it stops unfinished after the chunks below it (no curve, no
    results file), and the resumed run ends with exactly the rows of one uninterrupted run."""
    lin, x, y, _ = linear_case
    kw = dict(dataset="mnist", defense="lin", eps_list=[0.0, 0.2, 0.4], steps=5, restarts=2, seed=1,
              profile="smoke", model_id="m", chunk=4, progress=False, protocol="paper-v1")
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "whole"))
    _, whole, _ = evaluation.evaluate_model(lin, x[:12], y[:12], **kw)
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "pieces"))
    curve, rows, state = evaluation.evaluate_model(lin, x[:12], y[:12], until=5, **kw)
    assert curve is None and state["done"] == 8 and state["n"] == 12, "chunks [0, 4) and [4, 8) start below 5"
    assert not (tmp_path / "pieces").exists() or not any((tmp_path / "pieces").rglob("*.csv"))
    curve, pieces, _ = evaluation.evaluate_model(lin, x[:12], y[:12], until=100, **kw)
    assert curve is not None
    evaluation.pd.testing.assert_frame_equal(pieces, whole)
    with pytest.raises(ValueError, match="until=0"):
        evaluation.evaluate_model(lin, x[:12], y[:12], until=0, **kw)


def test_evaluate_registered_run_id_is_the_curve_notebook_04_later_reads(tmp_path, monkeypatch):
    """A curve computed for a finished, not yet registered run (run_id=) is the cache hit of the registered model."""
    from crossholder import evaluation, training

    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    cfg = training.make_config("mnist", "none", profile="smoke")
    training.train(cfg, progress=False, register=False)
    with pytest.raises(KeyError):
        evaluation.evaluate_registered("mnist", "none", profile="smoke", progress=False)
    curve, _, side = evaluation.evaluate_registered("mnist", "none", profile="smoke", progress=False, run_id=cfg.run_id)
    assert side["params"]["model"] == cfg.run_id
    training.train(cfg, progress=False, register=True)

    def boom(*a, **k):
        raise AssertionError("must come from the cache")

    monkeypatch.setattr(sweeps, "sweep", boom)          # what evaluate_model computes with
    monkeypatch.setattr(sweeps, "strong_sweep", boom)
    again, _, _ = evaluation.evaluate_registered("mnist", "none", profile="smoke", progress=False)
    assert again.equals(curve)
    with pytest.raises(FileNotFoundError, match="run_id='0000000000'"):
        evaluation.evaluate_registered("mnist", "none", profile="smoke", progress=False, run_id="0000000000")


def test_evaluation_cli_says_when_rows_were_reused(monkeypatch, capsys):
    """A run that took its rows from a larger run says so, instead of a bare "done in 0.01 s"."""
    from crossholder import evaluation

    curve = evaluation.pd.DataFrame({"attack": ["worst-per-example"], "eps": [0.0], "accuracy": [1.0]})
    side = {"wall_time_s": 0.01, "files": ["curve.csv"],
            "reused_from": {"examples": 300, "file": "donor-examples.csv", "wall_time_s_share": 12.5}}
    monkeypatch.setattr(evaluation, "evaluate_registered", lambda *a, **k: (curve, None, side))
    evaluation.main(["--dataset", "mnist", "--defense", "none"])
    out = capsys.readouterr().out
    assert "300 examples' rows reused from donor-examples.csv" in out and "12.5 s" in out and "0.01 s here" in out


def test_version_3_upgrades_version_2_rows_to_exactly_a_fresh_run(tmp_path, monkeypatch):
    """``strongest`` (code 3) run where ``strongest-v2`` rows exist, in its scratch partial (chunk 0)
    or finished, gives per-example rows identical to a version-3 run from scratch, names the
    version-2 run in its sidecar and counts its cost; FAB-T is applied on top, never recomputing PGD."""
    pytest.importorskip("pyautoattack")
    lin, x, y, d = linear_multiclass(n=16)
    std = sweeps.data_mod.MEAN_STD["mnist"][1]
    grid = [0.0] + [round(float(q) / std, 6) for q in np.quantile(d.numpy(), [0.3, 0.6, 0.9])]
    kw = dict(dataset="mnist", defense="lin", eps_list=grid, steps=3, restarts=1, seed=0, profile="smoke",
              model_id="m", chunk=8, progress=False)

    def run(root, **k):
        monkeypatch.setenv("CROSSHOLDER_RESULTS", str(root / "results"))
        monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(root / "scratch"))
        return evaluation.evaluate_model(lin, x, y, **{**kw, **k})

    _, fresh, side_fresh = run(tmp_path / "fresh")
    assert side_fresh["code"] == "3" and "upgraded_from" not in side_fresh
    assert {"fab-t", "fab", "apgd-t"} <= set(side_fresh["grad_evals_by_attack"])
    assert run(tmp_path / "partial", protocol="strongest-v2", until=8)[0] is None     # one chunk, unfinished
    _, finished_v2, side_v2 = run(tmp_path / "finished", protocol="strongest-v2")
    assert side_v2["code"] == "2" and "min_norm_fab_t" not in finished_v2
    run(tmp_path / "other-chunk", protocol="strongest-v2", chunk=16)
    calls = []
    real_sweep = sweeps.sweep
    monkeypatch.setattr(sweeps, "sweep", lambda *a, **k: calls.append(k.get("loss")) or real_sweep(*a, **k))
    _, from_partial, side_p = run(tmp_path / "partial")
    assert calls.count("ce") == 2 and calls.count("cw") == 1, "only chunk 1 runs PGD (CE, CW) and APGD-CE again"
    calls.clear()
    _, from_finished, side_f = run(tmp_path / "finished")
    assert not calls, "every chunk is upgraded: neither PGD nor APGD-CE runs again"
    calls.clear()
    _, from_other_chunk, side_o = run(tmp_path / "other-chunk")
    assert calls.count("cw") == 2 and "upgraded_from" not in side_o, "rows of another chunk size are not upgraded"
    for got in (from_partial, from_finished, from_other_chunk):   # the same columns, in the same order, bit for bit
        evaluation.pd.testing.assert_frame_equal(got, fresh, check_exact=True)
    assert side_f["upgraded_from"]["run_id"] == side_v2["run_id"] and side_f["upgraded_from"]["chunks"] == [0, 8]
    assert side_p["upgraded_from"]["chunks"] == [0]
    # the sidecar counts this run's own work; with the finished version-2 run's it is a fresh run's
    assert side_f["grad_evals"] + side_f["upgraded_from"]["version2_totals"]["grad_evals"] == side_fresh["grad_evals"]
    assert side_p["grad_evals"] < side_fresh["grad_evals"]
    monkeypatch.setattr(sweeps, "sweep", real_sweep)
    assert run(tmp_path / "resume", until=8)[0] is None
    with pytest.raises(ValueError, match="chunk=16 but .* was computed with chunk=8"):
        run(tmp_path / "resume", chunk=16)


def test_evaluate_model_strongest_rows_and_legacy_protocol(linear_case, tmp_path, monkeypatch):
    """The default protocol adds APGD-CE, APGD-T, FAB and strongest rows (never above any attack's);
    ``paper-v1`` keeps the code-version-1 run identity and its step rule."""
    pytest.importorskip("pyautoattack")
    lin, x, y, _ = linear_case
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    kw = dict(dataset="mnist", defense="lin", eps_list=[0.0, 0.3, 0.6], steps=5, restarts=1, seed=0,
              profile="smoke", model_id="m", chunk=8, progress=False)
    curve, per, side = evaluation.evaluate_model(lin, x[:16], y[:16], **kw)
    assert set(curve["attack"]) == set(sweeps.ATTACKS)
    acc = curve.pivot_table(index="eps", columns="attack", values="robust")
    for attack in sweeps.ATTACKS:
        assert (acc["strongest"] <= acc[attack]).all(), attack
    assert side["code"] == sweeps.EVAL_CODE_VERSION and side["params"]["step_fraction"] == 0.25
    assert set(side["grad_evals_by_attack"]) <= {"pgd-ce", "pgd-cw", "apgd-ce", "apgd-t", "fab", "fab-t"}
    assert {"pgd-ce", "pgd-cw", "apgd-ce", "fab"} <= set(side["grad_evals_by_attack"])
    steps_seen = []
    real_pgd = sweeps.pgd

    def spy(model, x, y, eps, **k):
        steps_seen.append(k["step_size"] / eps)
        return real_pgd(model, x, y, eps, **k)

    monkeypatch.setattr(sweeps, "pgd", spy)
    legacy, _, side1 = evaluation.evaluate_model(lin, x[:16], y[:16], protocol="paper-v1", **kw)
    assert set(legacy["attack"]) == set(sweeps.PAPER_ATTACKS) and side1["code"] == "1"
    v1_params = {"dataset": "mnist", "defense": "lin", "model": "m", "eps": kw["eps_list"], "steps": 5,
                 "restarts": 1, "n": 16, "eps_unit": "paper", "losses": ["ce", "cw"]}
    assert side1["run_id"] == evaluation.store.run_id({**v1_params, "seed": 0, "profile": "smoke", "code": "1"}), \
        "the legacy run identity is the version-1 one"
    assert steps_seen and all(f == pytest.approx(2.5 / 5) for f in steps_seen), "legacy step: 2.5 eps / steps"
    with pytest.raises(ValueError, match="protocol='fast'; allowed values"):
        evaluation.evaluate_model(lin, x[:16], y[:16], protocol="fast", **kw)


@pytest.mark.filterwarnings("ignore:APGD-T is not run")
def test_a_data_set_evaluation_with_an_ablation_adds_its_claim_and_pairs(tmp_path, monkeypatch):
    """evaluate_dataset(defenses=...) with cross_holder_hg (issue 31): its curve beside the four, the
    claim MH judged under strongest, and the pair (cross_holder, cross_holder_hg) in paired.csv; the
    default keeps the paper's four (the committed summaries)."""
    from crossholder import claims
    from crossholder import experiments as ex

    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    asked = {}
    real = claims.paired_table
    monkeypatch.setattr(claims, "paired_table", lambda *a, **k: asked.update(k) or real(*a, **k))
    ev = evaluation.evaluate_dataset("mnist", profile="smoke", progress=False, variant="smoke-test",
                                     defenses=ex.DEFENSES + ("cross_holder_hg",), n_examples=8, autoattack_n=4,
                                     sanity_n=4)
    assert set(ev.curves["defense"]) == set(ex.DEFENSES) | {"cross_holder_hg"}
    mh = ev.claims[ev.claims["claim"] == "MH"]
    assert len(mh) == 1 and mh.iloc[0]["attack"] == "strongest"
    assert "MC" not in set(ev.claims["claim"]), "CURE is not among the defenses: its claim is not listed"
    # the smoke grid stops at ε = 3, below the paired tests' ε = 4, 5, 6: the pairs asked for are checked
    assert ("cross_holder", "cross_holder_hg") in asked["pairs"] and ("cross_holder", "cure") not in asked["pairs"]
    assert set(ev.claims["claim"]) - {"MH"} == {c[0] for c in claims.CLAIMS["mnist"]}
