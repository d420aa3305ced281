"""The store: canonical identity (one configuration, one id), committed ids re-derive, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crossholder import paths, selection, store, training

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _sidecars():
    return sorted(p for p in RESULTS.rglob("*.json") if "scratch" not in p.parts)


# ---------------------------------------------------------------- canonical numbers
@pytest.mark.parametrize("value", [5, 5.0, np.float32(5), np.int64(5), torch.tensor(5.0), torch.tensor(5)])
def test_equal_numbers_hash_equal_whatever_their_type(value):
    assert store.run_id({"eps": value, "epochs": 10}) == store.run_id({"eps": 5.0, "epochs": 10})
    assert store.run_id({"epochs": float(10), "eps": value}) == store.run_id({"eps": 5.0, "epochs": 10})


def test_lists_tuples_and_key_order():
    a = store.run_id({"eps": [0, 1, 2], "steps": 5, "strong": {"fab_iter": 100.0, "apgd_iter": 100}})
    b = store.run_id({"strong": {"apgd_iter": 100, "fab_iter": 100}, "steps": 5.0, "eps": (0.0, 1.0, 2.0)})
    assert a == b
    assert store.run_id({"eps": [0, 1, 2]}) != store.run_id({"eps": [0, 1, 3]})
    assert store.canonical({"x": float("inf")}) == {"x": "inf"}


def test_bad_numbers_are_refused():
    with pytest.raises(ValueError, match=r"epochs=2\.5; allowed values: an integer"):
        store.run_id({"epochs": 2.5})
    with pytest.raises(ValueError, match="NaN"):
        store.run_id({"eps": float("nan")})


def test_one_training_configuration_one_identity():
    """The finding of issue 30: eps=5 and eps=5.0 named two runs (292266a416 and the registered 0212e6fb03)."""
    ids = {training.final_config("mnist", "adversarial", eps=v).run_id for v in (5, 5.0, np.float64(5), np.int32(5))}
    assert ids == {"0212e6fb03"}
    key, value = training.parse_override("eps=5")
    assert training.final_config("mnist", "adversarial", **{key: value}).run_id == "0212e6fb03"
    assert training.parse_override("epochs=3") == ("epochs", 3)
    assert training.parse_override("n_train=None") == ("n_train", None)
    assert training.parse_override("compiled=True") == ("compiled", True)
    for bad, match in (("epochs=2.5", "epochs takes a value of type int"), ("nope=1", "KEY one of"),
                       ("eps", "KEY one of"), ("compiled=yes", "compiled takes a value of type bool")):
        with pytest.raises(ValueError, match=match):
            training.parse_override(bad)


def test_jobs_keep_one_task_per_configuration():
    from crossholder import jobs

    calls = [{"dataset": "mnist", "defense": "adversarial", "overrides": {"eps": 5}},
             {"dataset": "mnist", "defense": "adversarial", "overrides": {"eps": 5.0}}]
    assert len(jobs._unique(calls)) == 1


# ---------------------------------------------------------------- every committed id re-derives
def test_every_committed_training_id_re_derives():
    checked = 0
    for side in _sidecars():
        rec = json.loads(side.read_text())
        if not (isinstance(rec, dict) and "hyperparameters" in rec and "run_id" in rec):
            continue
        cfg = training.TrainConfig(**rec["hyperparameters"])
        assert cfg.run_id == rec["run_id"], side
        checked += 1
    assert checked >= 60


def test_every_committed_evaluation_and_table_id_re_derives():
    checked = 0
    for side in _sidecars():
        rec = json.loads(side.read_text())
        if not (isinstance(rec, dict) and "run_id" in rec and "params" in rec):
            continue
        params = dict(rec["params"])
        if "code" not in params:             # an evaluation: its code version sits beside the params
            params["code"] = rec.get("code", "1")
        assert store.run_id({**params, "seed": rec["seed"], "profile": rec["profile"]}) == rec["run_id"], side
        checked += 1
    assert checked >= 100


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_every_committed_grid_point_is_found_under_its_identity(dataset):
    for defense, hp in selection.grid(dataset, "cpu"):
        assert selection._point_path(dataset, defense, hp, "cpu", 0).exists(), (defense, hp)


# ---------------------------------------------------------------- files
def test_atomic_write_leaves_the_old_file_on_error(tmp_path):
    f = tmp_path / "a.txt"
    store.atomic_write_text(f, "old")

    def fail(fh):
        fh.write("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.atomic_write(f, fail)
    assert f.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_layout_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "r"))
    monkeypatch.setenv("CROSSHOLDER_FIGURES", str(tmp_path / "f"))
    assert store.variant_dirs("") == (tmp_path / "r", tmp_path / "f")
    assert store.variant_dirs("smoke") == (tmp_path / "r" / "variants" / "smoke", tmp_path / "f" / "variants" / "smoke")
    assert store.dataset_dir("mnist", "smoke") == tmp_path / "r" / "variants" / "smoke" / "mnist"
    assert paths.results_dir() == tmp_path / "r"
    with pytest.raises(ValueError, match="variant='../x'"):
        store.variant_dirs("../x")


def test_integer_keys_stay_exact_however_large():
    assert store.run_id({"seed": 2**53}) != store.run_id({"seed": 2**53 + 1})
    assert store.run_id({"seed": 7}) == store.run_id({"seed": 7.0}) == store.run_id({"seed": np.int64(7)})
