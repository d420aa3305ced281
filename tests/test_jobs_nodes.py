"""Losing a node (issue 33, item 8): a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``),
trainings and an evaluation as tasks, the worker node killed while it holds a training mid-run.

Its own module: it needs its own Ray connection (a process joins one Ray instance at a time), after
``test_jobs.py``'s local instance is shut down.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from crossholder import jobs, training  # noqa: E402

RUNS = [{"dataset": "mnist", "defense": "none", "seed": s, "overrides": {"n_train": 2048, "epochs": 4}}
        for s in (5, 6)]


def _train_plain(cfg):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                      # a task's one thread: the same arithmetic
    try:
        return training.train(cfg, progress=False, register=True)
    finally:
        torch.set_num_threads(threads)


def test_a_lost_node_is_retried_elsewhere_and_changes_nothing(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    from crossholder import evaluation

    if ray.is_initialized():             # a connection left by another test would be reused by jobs.session
        ray.shutdown()
    t0 = time.perf_counter()
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    smoke = training.final_config("mnist", "none", profile="smoke")
    _train_plain(smoke)                              # the registered smoke model the evaluation task attacks
    cfgs = [training.final_config(r["dataset"], r["defense"], profile="smoke", seed=r["seed"], **r["overrides"])
            for r in RUNS]
    states = [training.run_paths(c)["state"] for c in cfgs]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    result: dict = {}
    try:
        with jobs.session(cluster.address):
            def submit():
                result["train"] = jobs.train(RUNS, profile="smoke", register=True, progress=False)
                result["eval"] = jobs.evaluate([{"dataset": "mnist", "defense": "none"}], profile="smoke",
                                               progress=False)

            t = threading.Thread(target=submit)
            t.start()
            deadline = time.time() + 120
            while time.time() < deadline and not all(s.exists() for s in states) and t.is_alive():
                time.sleep(0.05)            # both trainings past their first epoch: one runs on each node
            assert all(s.exists() for s in states), "the trainings finished before the node could be lost"
            cluster.remove_node(worker, allow_graceful=False)
            t.join(300)
            assert not t.is_alive()
    finally:
        cluster.shutdown()
    resumed = [r["resumed_at_epoch"] for r in result["train"]]
    assert max(resumed) >= 1, f"the lost node's training resumed from its checkpoint: {resumed}"
    assert result["eval"][0]["finished"]
    lost_rows = evaluation.evaluate_registered("mnist", "none", profile="smoke", progress=False)[1]
    # every result equals an undisturbed run's, bit for bit
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "plain"))
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "plain-scratch"))
    for cfg in cfgs:
        plain = _train_plain(cfg).model
        lost = training.models_mod.load(tmp_path / "results" / "variants" / "smoke" / "mnist" / "models" / f"{cfg.name}.pt")
        for a, b in zip(lost.state_dict().values(), plain.state_dict().values()):
            assert torch.equal(a, b), cfg.name
        # the registry names the configuration once, with the run that finished
        variant = training.config_variant(cfg)
        lost_reg = json.loads((tmp_path / "results" / "variants" / variant / "models.json").read_text())
        assert list(lost_reg) == ["mnist/none"] and lost_reg["mnist/none"]["run_id"] == cfg.run_id, variant
    _train_plain(smoke)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain_rows = evaluation.evaluate_registered("mnist", "none", profile="smoke", progress=False)[1]
    finally:
        torch.set_num_threads(threads)
    evaluation.pd.testing.assert_frame_equal(lost_rows, plain_rows)
    # nothing half-written or left to resume
    leftovers = [p for p in (tmp_path / "results").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers and not any((tmp_path / "scratch").rglob("*.pt")), leftovers
    assert time.perf_counter() - t0 < 240
