"""crossholder.jobs on a local Ray instance at the smoke profile (issue 19, item 7)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray")

from crossholder import experiments as ex  # noqa: E402
from crossholder import jobs, paths, selection, store, training  # noqa: E402


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process on this machine."""
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            out[int(p.name)] = (ppid, cmd)
    return out


def _descendants(root: int = 0) -> dict[int, str]:
    """The processes started, directly or not, by this test process (Ray's daemons and workers among them)."""
    procs, root = _processes(), root or os.getpid()
    out, frontier = {}, {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier and pid not in out}
        out.update({pid: procs[pid][1] for pid in frontier})
    return out


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray instance for the module (start-up costs seconds), workers writing under a temp root."""
    root = tmp_path_factory.mktemp("ray")
    before = set(_descendants())
    with paths.environment(CROSSHOLDER_RESULTS=root / "results", CROSSHOLDER_SCRATCH=root / "scratch"), \
            jobs.session(num_cpus=4):
        yield root
    deadline = time.time() + 30
    while set(_descendants()) - before and time.time() < deadline:
        time.sleep(0.5)
    left = {pid: cmd for pid, cmd in _descendants().items() if pid not in before}
    assert not left, f"processes left behind after the Ray session: {left}"


def test_a_grid_through_ray_gives_the_sequential_table(local_ray, tmp_path, monkeypatch):
    defenses = ("adversarial", "cross_lipschitz")
    got = jobs.grid("mnist", profile="smoke", defenses=defenses, progress=False)
    assert len(got) == 4
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                              # the tasks' one thread per CPU
    try:
        want = selection.run_grid("mnist", "smoke", defenses=defenses, progress=False)
    finally:
        torch.set_num_threads(threads)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))


def test_registrations_through_ray_lose_nothing(local_ray):
    """Trainings through jobs register in their variant's registry; and 8 tasks writing one registry
    at the same instant (the registry's file lock, ``store.update_json``) lose no entry."""
    runs = [{"dataset": "mnist", "defense": d} for d in ex.DEFENSES]
    out = jobs.train(runs, profile="smoke", progress=False)
    reg = store.read_json(Path(local_ray) / "results" / "variants" / "smoke" / "models.json")
    assert all(reg[f"mnist/{r['defense']}"]["run_id"] == r["run_id"] for r in out)
    registry = Path(local_ray) / "registry-race.json"

    def register_at(key: str, when: float) -> int:
        from crossholder import experiments

        time.sleep(max(0.0, when - time.time()))           # every task writes at the same instant
        store.update_json(registry, key, {"pid": os.getpid()})
        return os.getpid()

    task = ray.remote(register_at).options(num_cpus=0.5)         # all 8 fit the instance's 4 CPUs at once
    when = time.time() + 15
    pids = ray.get([task.remote(f"key-{i}", when) for i in range(8)])
    assert len(set(pids)) == 8, "the writers ran in parallel worker processes"
    assert set(store.read_json(registry)) == {f"key-{i}" for i in range(8)}


def _worker_of(task_name: str) -> int | None:
    """The worker of this session running ``task_name`` (never another Ray's on the machine)."""
    return next((pid for pid, cmd in _descendants().items() if cmd.startswith(f"ray::{task_name}")), None)


def test_a_killed_worker_is_retried_and_resumes_to_the_same_weights(local_ray, tmp_path, monkeypatch):
    overrides = {"n_train": 2048, "epochs": 4}
    cfg = training.final_config("mnist", "none", profile="smoke", seed=3, **overrides)
    paths = training.run_paths(cfg)                    # the workers' paths (the module's environment)
    result: dict = {}

    def submit():
        result["out"] = jobs.train([{"dataset": "mnist", "defense": "none", "seed": 3, "overrides": overrides}],
                                   profile="smoke", register=False, progress=False)

    t = threading.Thread(target=submit)
    t.start()
    killed, deadline = None, time.time() + 300
    while killed is None and time.time() < deadline and t.is_alive():
        pid = _worker_of("_train_task")
        if pid and paths["state"].exists():                # at least one epoch saved, not finished
            os.kill(pid, signal.SIGKILL)
            killed = pid
        time.sleep(0.05)
    t.join(600)
    assert killed is not None, "the training finished before it could be killed"
    out = result["out"][0]
    assert out["pid"] != killed, "the task was retried in another worker"
    assert out["resumed_at_epoch"] >= 1, "the retry resumed from the killed attempt's checkpoint"
    assert not paths["state"].exists(), "the resumed run finished and removed its state"
    resumed = training.models_mod.load(paths["checkpoint"])
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = training.train(cfg, progress=False).model
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(resumed.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)


def test_a_task_that_raises_surfaces_its_traceback(local_ray):
    with pytest.raises(ValueError, match="lam1") as err:
        jobs.train([{"dataset": "mnist", "defense": "cross_lipschitz", "overrides": {"lam1": -1.0}}],
                   profile="smoke", progress=False)
    text = str(err.value)                                  # the worker's frames, down to the raise
    assert "ray::_train_task()" in text and 'File "' in text and "in make_config" in text


def test_bad_addresses_fail_fast_with_a_clear_error():
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match="address='127.0.0.1:1': no Ray cluster answers"):
        with jobs.session("127.0.0.1:1"):
            pass
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ValueError, match="address='nowhere'; allowed"):
        with jobs.session("nowhere"):
            pass
    with pytest.raises(ValueError, match="cpus=0 must be an integer >= 1"):
        jobs.run_tasks(print, [], cpus=0)


def test_a_stale_ray_address_variable_fails_fast_naming_it(monkeypatch):
    """Issue 33, item 6 (ray PR #7977): RAY_ADDRESS=127.0.0.1:1 with address='auto' waited > 540 s."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"address='127.0.0.1:1': no Ray cluster answers there within 5 s "
                                              r"\(.*the address came from address='auto', from the RAY_ADDRESS variable"):
        jobs.run_tasks(print, [], address="auto")
    assert time.perf_counter() - t0 < 2 * jobs.ADDRESS_TIMEOUT_S
    monkeypatch.setenv("RAY_ADDRESS", "nowhere")
    with pytest.raises(ValueError, match="address='nowhere'; allowed.*from the RAY_ADDRESS variable"):
        jobs.run_tasks(print, [], address="auto")


def test_jobs_trains_exactly_the_registered_configurations(monkeypatch):
    """jobs.train builds training.final_config: for every registered model it is the registered run,
    in the canonical variant (so `make figures` only loads, and seeds land in `cpu-seed=<s>`)."""
    monkeypatch.delenv("CROSSHOLDER_RESULTS", raising=False)       # the committed results/
    registry = store.read_json(training.registry_path(""), {}) or {}
    assert registry, "results/models.json is committed"
    for key, rec in registry.items():
        dataset, defense = key.split("/")
        cfg = training.final_config(dataset, defense)
        assert cfg.run_id == rec["run_id"] and training.config_variant(cfg) == "", key
        assert training.config_variant(training.final_config(dataset, defense, seed=1)) == "cpu-seed=1"


def test_training_cli_trains_the_registered_configuration(monkeypatch):
    """python -m crossholder.training trains what notebook 02 and jobs train do (final_config), so the
    Fashion-MNIST picks that FINAL replaces are not silently retrained from the paper's values."""
    from crossholder import experiments as ex
    from crossholder import training

    seen = {}

    def fake_train(cfg, **kw):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(training, "train", fake_train)
    for defense in ex.FINAL["fashion_mnist"]:
        with pytest.raises(SystemExit):
            training.main(["--dataset", "fashion_mnist", "--defense", defense, "--seed", "1"])
        assert seen["cfg"] == training.final_config("fashion_mnist", defense, seed=1)
        assert training.config_variant(seen["cfg"]) == "cpu-seed=1"


def test_seeds_cli_trains_then_evaluates_with_the_checks_asked_for(monkeypatch):
    """`make seeds` (jobs seeds --checks N) trains every configuration per seed, then evaluates each
    and runs its AutoAttack agreement on the first N images, in one Ray session."""
    import contextlib

    calls = []
    monkeypatch.setattr(jobs, "session", lambda *a, **k: calls.append(("session", a, k)) or contextlib.nullcontext())
    monkeypatch.setattr(jobs, "train", lambda runs, **kw: calls.append(("train", runs, kw)) or [])
    monkeypatch.setattr(jobs, "evaluate", lambda runs, **kw: calls.append(("evaluate", runs, kw)) or [])
    jobs.main(["seeds", "--seeds", "1", "2", "--dataset", "mnist", "--defense", "cross_holder", "--n", "500",
               "--checks", "100"])
    assert [c[0] for c in calls] == ["session", "train", "evaluate"]
    assert calls[2][1] == [{"dataset": "mnist", "defense": "cross_holder", "seed": s} for s in (1, 2)]
    assert calls[2][2]["n"] == 500 and calls[2][2]["checks"] == 100


def test_checks_beyond_the_evaluated_images_are_refused():
    with pytest.raises(ValueError, match=r"checks=200 exceeds n=100.*allowed: 0 <= checks <= n"):
        jobs.evaluate([{"dataset": "mnist", "defense": "none"}], n=100, checks=200)
