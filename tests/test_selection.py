"""Selection grid: per-point cache, defense filter, winner and admissibility marks, clear errors."""

from __future__ import annotations

import json

import pytest

from crossholder import experiments, selection, store


def test_points_are_scored_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    calls = []

    def fake_score(dataset, defense, hp, profile, seed, device="cpu"):
        calls.append((defense, tuple(hp.items())))
        acc = {"eps": 1.0 - hp.get("eps", 0) / 10}.get("eps")
        return {"defense": defense, **hp, "clean_val_acc": acc, "score": hp["eps"] / 10}

    monkeypatch.setattr(selection, "_score", fake_score)
    df = selection.run_grid("mnist", "smoke", progress=False, defenses=("adversarial",))
    assert len(calls) == 2 and set(df["defense"]) == {"adversarial"}
    again = selection.run_grid("mnist", "smoke", progress=False, defenses=("adversarial",))
    assert len(calls) == 2, "second run must come from the per-point cache"
    assert again.equals(df)
    points = store.cache_dir("smoke") / "mnist" / "selection" / "points"   # results/variants/smoke/...
    assert points.is_relative_to(tmp_path / "variants" / "smoke")
    assert len(list(points.glob("adversarial-*.json"))) == 2
    # admissible: clean val >= 0.99 -> no point here (0.7, 0.6); so no winner
    assert not df["admissible"].any() and not df["winner"].any()


def test_winner_is_the_best_admissible_point(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    rows = {3.0: (0.995, 1.2), 4.0: (0.985, 1.5)}              # eps: (clean val, score)

    def fake_score(dataset, defense, hp, profile, seed, device="cpu"):
        acc, score = rows[hp["eps"]]
        return {"defense": defense, **hp, "clean_val_acc": acc, "score": score}

    monkeypatch.setattr(selection, "_score", fake_score)
    df = selection.run_grid("mnist", "smoke", progress=False, defenses=("adversarial",))
    assert df.loc[df["eps"] == 3.0, "winner"].item()           # 4.0 scores more but is not admissible
    assert not df.loc[df["eps"] == 4.0, "winner"].item()


def test_ablation_grids_run_only_when_named():
    """notebook 03 and `make selection` score the paper's three defenses; the ablations only when named."""
    assert {d for d, _ in selection.grid("mnist", "cpu")} == {"adversarial", "cross_lipschitz", "cross_holder"}
    pts = selection.grid("fashion_mnist", "cpu", ("cure", "cross_holder_hg"))
    assert [d for d, _ in pts] == ["cross_holder_hg"] * 3 + ["cure"] * 6
    assert all(hp["lam1"] == experiments.FINAL["fashion_mnist"]["cross_holder"]["lam1"] for d, hp in pts[:3])


def test_unknown_defense_is_a_clear_error():
    with pytest.raises(ValueError, match="defense='none' has no grid"):
        selection.grid("mnist", "smoke", ("none",))


def test_select_points_keeps_the_order_given_and_rejects_unknown_points():
    todo = selection.grid("fashion_mnist", "cpu", ("adversarial", "cross_holder"))
    got = selection.select_points(todo, ["eps=2.0", "lam1=0.1,lam2=0.5", "eps=0.5"])
    assert got == [("adversarial", {"eps": 2.0}), ("cross_holder", {"lam1": 0.1, "lam2": 0.5}),
                   ("adversarial", {"eps": 0.5})]
    with pytest.raises(ValueError, match=r"point='eps=7.0' is not in the grid"):
        selection.select_points(todo, ["eps=7.0"])
    with pytest.raises(ValueError, match=r"point='lam1': expected KEY=NUMBER"):
        selection.select_points(todo, ["lam1"])
    with pytest.raises(ValueError, match=r"point='lam1=x': expected KEY=NUMBER"):
        selection.select_points(todo, ["lam1=x"])


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_final_hyperparameters_depart_from_the_paper_only_for_a_grid_winner(dataset):
    """experiments.FINAL departs from the paper's pick only for the admissible winner of the committed grid
    table, and only where the paper's pick is not admissible there; then it names the winner's own run."""
    import pandas as pd

    from crossholder import experiments, paths, training

    table_csv = paths.project_root() / "results" / dataset / "selection" / "grid-cpu.csv"
    table = pd.read_csv(table_csv) if table_csv.exists() else pd.DataFrame()
    for defense, paper in experiments.PAPER[dataset].items():
        final = experiments.FINAL[dataset][defense]
        hp = {k: v for k, v in final.items() if k != "compiled"}
        if hp == paper:
            continue
        rows = table[table["defense"] == defense] if len(table) else table
        assert len(rows), f"{dataset}/{defense}: FINAL departs from the paper but {table_csv} has no such rows"
        win = rows[rows["winner"]]
        assert len(win) == 1, f"{dataset}/{defense}: FINAL departs from the paper but the grid has no winner"
        picked = rows[rows["paper_pick"]]
        assert not picked["admissible"].any(), "the paper's pick is admissible in the grid: FINAL must keep it"
        assert all(float(win.iloc[0][k]) == v for k, v in hp.items()), (dataset, defense, hp, win.iloc[0].to_dict())
        cfg = training.make_config(dataset, defense, profile="cpu", **final)
        assert cfg.run_id == win.iloc[0]["run_id"], "FINAL must name the winner's own training run"


def test_registered_models_are_the_final_choices():
    """results/models.json holds, for every (dataset, defense), the run that experiments.FINAL names at the cpu
    profile. Otherwise re-executing notebook 02 (make figures, nbval) would register another model, and
    notebook 04 would start hours of attacks on it."""
    from crossholder import experiments, paths, training

    registered = store.read_json(paths.project_root() / "results" / "models.json", {})
    for dataset, picks in experiments.FINAL.items():
        for defense in experiments.DEFENSES:
            rec = registered[f"{dataset}/{defense}"]
            cfg = training.make_config(dataset, defense, profile="cpu", **picks.get(defense, {}))
            assert rec["run_id"] == cfg.run_id, (f"{dataset}/{defense}: registered {rec['run_id']}, FINAL names "
                                                 f"{cfg.run_id}: run notebook 02 and notebook 04 for it")


def test_cached_table_returns_the_same_frame_computed_or_loaded(tmp_path, monkeypatch):
    """A first run and a rerun of a notebook print the same table (None and bools as read from the CSV)."""
    import pandas as pd

    from crossholder import experiments

    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    frame = pd.DataFrame({"check": ["a", "b"], "passed": [True, None], "value": [0.25, 1.0]})
    first, csv, _ = store.cached_table("x/t", {"k": 1}, lambda: frame, seed=0, profile="smoke", code_version="1")
    again, csv2, _ = store.cached_table("x/t", {"k": 1}, lambda: 1 / 0, seed=0, profile="smoke", code_version="1")
    assert csv == csv2 and first.to_string() == again.to_string()


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_committed_grid_table_has_every_committed_point(dataset):
    """grid-cpu.csv (and so notebook 03's committed output) tables exactly the scored points in
    results/<dataset>/selection/points/: a point committed without re-tabling (`make selection
    GRID=False`) would otherwise surface only as an nbval mismatch of notebook 03."""
    import pandas as pd

    from crossholder import paths, selection

    table_csv = paths.project_root() / "results" / dataset / "selection" / "grid-cpu.csv"
    if not table_csv.exists():
        pytest.skip(f"{table_csv} not written yet")
    tabled = set(pd.read_csv(table_csv)["run_id"].astype(str))
    scored = set()
    for d, hp in selection.grid(dataset, "cpu"):
        path = selection._point_path(dataset, d, hp, "cpu", 0)
        if path.exists():
            scored.add(str(json.loads(path.read_text())["row"]["run_id"]))
    assert scored == tabled, (f"{dataset}: scored but not tabled {sorted(scored - tabled)}, tabled but not scored "
                              f"{sorted(tabled - scored)}: run `rm -f results/.make/03.done && make selection GRID=False`")


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_registered_ablations_are_the_selected_points_of_complete_grids(dataset):
    """experiments.FINAL names, for each ablation it registers, the `selected` point of the committed
    ablation table (best score admissible on the validation and the test split), and only once that
    defense's grid has no point missing."""
    from crossholder import training

    table, missing = selection.read_ablation_table(dataset)
    for defense in experiments.ABLATIONS:
        final = experiments.FINAL[dataset].get(defense)
        if final is None:
            continue
        assert table is not None, f"{dataset}: FINAL registers {defense} but no ablation table is committed"
        assert not [m for m in missing if m["defense"] == defense], f"{dataset}/{defense}: its grid is not complete"
        sel = table[(table["defense"] == defense) & table["selected"]]
        assert len(sel) == 1
        cfg = training.make_config(dataset, defense, profile="cpu", **final)
        assert cfg.run_id == sel.iloc[0]["run_id"]
        assert sel.iloc[0]["clean_val_acc"] >= selection.THRESHOLD[dataset] <= sel.iloc[0]["clean_test_acc"]
