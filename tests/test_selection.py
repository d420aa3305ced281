"""Selection grid: per-point cache, defense filter, winner and admissibility marks, clear errors."""

from __future__ import annotations

import pytest

from crossholder import selection


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
    assert len(list((tmp_path / "mnist" / "selection" / "points").glob("adversarial-*.json"))) == 2
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


def test_unknown_defense_is_a_clear_error():
    with pytest.raises(ValueError, match="defense='none' has no grid"):
        selection.grid("mnist", "smoke", ("none",))
