"""Training loop: resume after a kill gives identical weights, kept directions, bad parameters."""

from __future__ import annotations

import pytest
import torch

from crossholder import experiments, models, paths, regularizers, store, training


def small(defense, **kw):
    base = dict(profile="smoke", n_train=256, batch_size=64, epochs=2)
    base.update(kw)
    return training.make_config("mnist", defense, **base)


@pytest.mark.parametrize("defense", ["cross_holder", "adversarial", "cross_lipschitz", "cross_holder_hg", "cure"])
def test_resume_after_kill_gives_identical_weights(tmp_path, monkeypatch, defense):
    cfg = small(defense)
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "a"))
    full = training.train(cfg, progress=False)
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "b"))
    part = training.train(cfg, progress=False, max_epochs=1)           # "killed" after epoch 1
    assert part.record == {"partial": True, "epochs_done": 1}
    # a fresh checkout has the resume state (kept outside the work tree) but not the log CSV
    training.run_paths(cfg)["log"].unlink()                              # results/variants/smoke/mnist/training/
    resumed = training.train(cfg, progress=False)
    for (k, v), (_, w) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, w), k
    assert full.log.drop(columns=["epoch_time_s"]).equals(resumed.log.drop(columns=["epoch_time_s"]))
    assert not (tmp_path / "b" / "scratch" / f"train-mnist-{cfg.name}").exists(), "resume state removed when done"
    # asking again loads from the cache
    again = training.train(cfg, progress=False)
    assert again.checkpoint == resumed.checkpoint and torch.equal(
        next(again.model.parameters()), next(resumed.model.parameters()))


def test_outputs_provenance_and_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    cfg = small("none", epochs=1)
    res = training.train(cfg, progress=False, register=True)
    variant = training.config_variant(cfg)
    assert variant == "smoke-batch_size=64-n_train=256", "named after what differs from the smoke default"
    assert not (tmp_path / "models.json").exists(), "only the canonical configuration registers in models.json"
    reg = store.read_json(tmp_path / "variants" / variant / "models.json")
    rec = reg["mnist/none"]
    for key in ("checkpoint", "hyperparameters", "profile", "seed", "provenance", "clean_test_accuracy"):
        assert key in rec
    for key in ("params", "seed", "profile", "git_commit", "versions", "device", "wall_time_s", "allocator"):
        assert key in rec["provenance"]
    assert rec["provenance"]["allocator"] == experiments.tune_allocator()   # train() applied it
    m, rec2 = training.load_registered("mnist", "none", variant)
    assert torch.equal(next(m.parameters()), next(res.model.parameters())) and rec2 == rec
    cols = set(res.log.columns)
    assert {"epoch", "loss", "ce", "grad_term", "hess_term", "regularizer", "train_acc", "val_acc",
            "epoch_time_s"} <= cols
    with pytest.raises(KeyError, match="mnist/none is not in"):
        training.load_registered("mnist", "none")


def test_variants_name_what_differs_and_keep_the_canonical_registry():
    """Issue 20, item 2: the canonical configuration (the cpu profile's final choice, seed 0) is the empty
    variant; other profiles, seeds and hyperparameters each name their own."""
    final = experiments.FINAL["fashion_mnist"]["cross_holder"]
    assert training.config_variant(training.make_config("fashion_mnist", "cross_holder", **final)) == ""
    assert training.config_variant(training.make_config("fashion_mnist", "cross_holder")) != "", \
        "the paper's pick is not the final choice there"
    assert training.config_variant(training.make_config("mnist", "none", profile="smoke")) == "smoke"
    assert training.config_variant(training.make_config("mnist", "none", seed=2)) == "cpu-seed=2"
    assert training.profile_variant("cpu", 2) == "cpu-seed=2" and training.profile_variant("cpu") == ""
    long = training.config_variant(training.make_config("mnist", "cross_holder", mode="faithful", lam1=0.3))
    assert len(long) <= 64 and long.startswith("cpu-")
    assert training.registry_path("") == paths.results_dir() / "models.json"
    with pytest.raises(ValueError, match="variant='../x'"):
        store.variant_dirs("../x")


def test_fast_mode_directions_follow_their_examples():
    """Kept directions are indexed by the example's position, whatever the batch order."""
    torch.manual_seed(0)
    cfg = small("cross_holder")
    m = models.paper_cnn("mnist")
    x = torch.rand(12, 1, 28, 28)
    y = torch.randint(0, 10, (12,))
    store = regularizers.DirectionStore(12, 1, (1, 28, 28))
    perm = torch.randperm(12)
    gen = torch.Generator().manual_seed(0)
    *_, keep = training._step_loss(cfg, m, x[perm], y[perm], perm, store, gen)
    keep()
    v_all = store.get(torch.arange(12))
    assert torch.allclose(v_all.flatten(1).norm(dim=1), torch.ones(12), atol=2e-3)
    for i in [0, 5, 11]:                      # recompute each example alone with the direction it was given
        store_i = regularizers.DirectionStore(1, 1, (1, 28, 28))
        pos = int((perm == i).nonzero())
        v0 = torch.randn((12, 1, 1, 28, 28), generator=torch.Generator().manual_seed(0))[pos:pos + 1]
        out = regularizers.regularized_loss(m, x[i:i + 1], y[i:i + 1], lam1=cfg.lam1, lam2=cfg.lam2,
                                            classes="runner_up", v0=v0, inner="power", inner_iters=cfg.cold_iters)
        store_i.put(torch.tensor([0]), out.v_next, out.j)
        assert torch.allclose(store_i.get(torch.tensor([0])), v_all[i:i + 1], atol=3e-3)
        assert store.classes[i, 0] == out.j[0, 0]


@pytest.mark.parametrize("defense,kw,match", [
    ("dropout", {}, "defense='dropout'"),
    ("cross_lipschitz", {"lam1": -0.1}, "lam1=-0.1"),
    ("cross_holder", {"lam2": -0.5}, "lam2=-0.5"),
    ("adversarial", {"eps": 0.0}, "eps=0.0"),
    ("adversarial", {"eps": -1.0}, "eps=-1.0"),
    ("none", {"epochs": 0}, "epochs=0"),
    ("none", {"optimiser": "sgd"}, "unknown training parameter"),
    ("cross_holder", {"mode": "quick"}, "mode='quick'"),
    ("cross_holder", {"compiled": "yes"}, "compiled='yes'"),
    ("cross_holder", {"compiled": True, "mode": "faithful"}, "compiled=True supports mode='fast'"),
    ("cross_lipschitz", {"compiled": True, "cl_variant": "hein"}, "cl_variant='margin'"),
    ("cross_holder", {"warmup_epochs": -1}, "warmup_epochs=-1"),
    ("cross_holder", {"warmup_iters": 2.5}, "warmup_iters=2.5"),
    ("cross_holder", {"warmup_epochs": 2, "mode": "faithful"}, "warmup_epochs=2 applies to mode='fast'"),
    ("cross_holder", {"power_dtype": "float16"}, "power_dtype='float16'; allowed values: 'float32', 'bfloat16'"),
    ("cross_lipschitz", {"power_dtype": "bfloat16"}, "power_dtype='bfloat16' applies to cross_holder"),
    ("cross_holder", {"power_dtype": "bfloat16", "mode": "faithful"}, "power_dtype='bfloat16' applies to"),
    ("cross_holder_hg", {"lam2": 0.0}, "lam2=0.0: cross_holder_hg needs lam2 > 0"),
    ("cross_holder_hg", {"compiled": True}, "compiled=True is not supported for defense='cross_holder_hg'"),
    ("cure", {"gamma": 0.0}, "cure needs gamma > 0 and h > 0"),
    ("cure", {"h": -1.0}, "h=-1.0 must be a finite number >= 0"),
    ("cure", {"h_ramp_epochs": -1}, "h_ramp_epochs=-1"),
])
def test_bad_parameters(defense, kw, match):
    with pytest.raises(ValueError, match=match):
        training.make_config("mnist", defense, profile="smoke", **kw)


def test_warmup_schedule_sets_the_power_steps_per_epoch(monkeypatch, tmp_path):
    """warmup_iters for the first warmup_epochs epochs (also in the fidelity probe), inner_iters after."""
    plain = training.make_config("mnist", "cross_holder", profile="smoke")
    assert "warmup_epochs" not in plain.relevant()        # runs made before the option keep their ids
    cfg = training.make_config("mnist", "cross_holder", profile="smoke", epochs=3, warmup_epochs=2, warmup_iters=3,
                               cold_iters=2)
    assert cfg.relevant()["warmup_iters"] == 3 and cfg.run_id != plain.run_id
    assert [cfg.iters_at(e) for e in range(4)] == [3, 3, 1, 1]
    seen: list[tuple[str, int]] = []
    real_loss, real_probe = training.regularized_loss, training._fidelity_probe

    def spy_loss(*a, **k):
        seen.append(("step", k["inner_iters"]))
        return real_loss(*a, **k)

    def spy_probe(*a, **k):
        seen.append(("probe", k["inner_iters"]))
        return real_probe(*a, **k)

    monkeypatch.setattr(training, "regularized_loss", spy_loss)
    monkeypatch.setattr(training, "_fidelity_probe", spy_probe)
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    training.train(cfg, progress=False)
    steps = len(seen) // 3 - 1                           # steps per epoch (one probe per epoch)
    per_epoch = [seen[e * (steps + 1):(e + 1) * (steps + 1)] for e in range(3)]
    # epoch 1: every visit is a first visit -> max(cold_iters, warmup_iters) = 3; the probe uses the next epoch's
    assert per_epoch[0] == [("step", 3)] * steps + [("probe", 3)]
    assert per_epoch[1] == [("step", 3)] * steps + [("probe", 1)]
    assert per_epoch[2] == [("step", 1)] * steps + [("probe", 1)]


def test_compiled_is_part_of_the_identity_only_when_set():
    eager = training.make_config("mnist", "cross_holder", profile="smoke")
    assert "compiled" not in eager.relevant()            # runs made before the option keep their ids
    comp = training.make_config("mnist", "cross_holder", profile="smoke", compiled=True)
    assert comp.relevant()["compiled"] is True and comp.run_id != eager.run_id
    assert "compiled" not in training.make_config("mnist", "none", profile="smoke", compiled=True).relevant()


def test_power_dtype_is_part_of_the_identity_only_when_set(monkeypatch, tmp_path):
    plain = training.make_config("mnist", "cross_holder", profile="smoke")
    assert "power_dtype" not in plain.relevant()          # runs made before the option keep their ids
    bf = training.make_config("mnist", "cross_holder", profile="smoke", power_dtype="bfloat16", epochs=1,
                              n_train=256)
    assert bf.relevant()["power_dtype"] == "bfloat16" and bf.run_id != plain.run_id
    seen = []
    real = training.regularized_loss

    def spy(*a, **k):
        seen.append(k.get("power_dtype"))
        return real(*a, **k)

    monkeypatch.setattr(training, "regularized_loss", spy)
    monkeypatch.setattr(regularizers, "regularized_loss", spy)      # the fidelity probe (regularizers.warm_norm)
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    res = training.train(bf, progress=False)
    assert len(seen) == 256 // bf.batch_size + 1, "every step and the fidelity probe"
    assert set(seen) == {"bfloat16"}, "every step and the fidelity probe search in bfloat16"
    assert res.record["hyperparameters"]["power_dtype"] == "bfloat16"
    assert 0 < res.log["fidelity_median"].iloc[-1] <= 1.0 + 1e-6


def test_backward_step_run_keeps_the_backward_pass_direction(monkeypatch, tmp_path):
    """backward_step=True: part of the identity only when set; every fast step asks for it and the
    store receives next_directions() after the backward pass (unit vectors, H^2 v rather than H v)."""
    plain = training.make_config("mnist", "cross_holder", profile="smoke")
    assert "backward_step" not in plain.relevant()        # runs made before the option keep their ids
    cfg = training.make_config("mnist", "cross_holder", profile="smoke", backward_step=True, epochs=1, n_train=256)
    assert cfg.relevant()["backward_step"] is True and cfg.run_id != plain.run_id
    kept = []
    real = regularizers.DirectionStore.put

    def spy_put(self, idx, v, classes):
        kept.append(v.detach().clone())
        return real(self, idx, v, classes)

    outs = []
    real_loss = training.regularized_loss

    def spy_loss(*a, **k):
        o = real_loss(*a, **k)
        if k.get("backward_step"):
            outs.append(o)
        return o

    monkeypatch.setattr(regularizers.DirectionStore, "put", spy_put)
    monkeypatch.setattr(training, "regularized_loss", spy_loss)
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    res = training.train(cfg, progress=False)
    assert len(outs) == len(kept) == 256 // cfg.batch_size
    for o, v in zip(outs, kept):
        assert o.v_leaf.grad is not None and torch.equal(v, o.next_directions())
        assert not torch.allclose(v, o.v_next, atol=1e-3), "the kept direction is the backward pass's step"
    assert res.record["hyperparameters"]["backward_step"] is True
    with pytest.raises(ValueError, match="backward_step=True applies to cross_holder with mode='fast'"):
        training.make_config("mnist", "cross_lipschitz", profile="smoke", backward_step=True)


def test_bad_profile_and_dataset():
    with pytest.raises(ValueError, match="profile='gpu'"):
        training.make_config("mnist", "none", profile="gpu")
    with pytest.raises(ValueError, match="dataset='cifar'"):
        training.make_config("cifar", "none")


def test_paper_hyperparameters_and_faithful_mode():
    cfg = training.make_config("fashion_mnist", "cross_holder", profile="cpu")
    assert (cfg.lam1, cfg.lam2, cfg.mode, cfg.classes) == (0.2, 0.5, "fast", "runner_up")
    faithful = training.make_config("mnist", "cross_holder", profile="cpu", mode="faithful")
    assert (faithful.inner, faithful.inner_iters, faithful.step, faithful.classes) == ("ascent", 10, 0.1, "all")
    at = training.make_config("mnist", "adversarial")
    assert at.eps == 5.0 and at.eps_pixel == pytest.approx(5.0 * 0.3081)
    assert cfg.run_id != training.make_config("fashion_mnist", "cross_holder", profile="cpu", seed=1).run_id


def test_device_argument_checked():
    from crossholder import experiments

    assert experiments.check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device='tpu'"):
        experiments.check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda'.*no CUDA GPU"):
            experiments.check_device("cuda")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            training.train(training.make_config("mnist", "none", profile="smoke"), device="cuda")


def test_tune_allocator_applies_glibc_settings_once():
    import platform

    state = experiments.tune_allocator()
    assert experiments.tune_allocator() == state          # idempotent
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert state.startswith("glibc mallopt")
        for name in experiments.MALLOC_SETTINGS:
            assert name in state
    else:
        assert state == "default"


def test_atomic_writers_give_ordinary_file_permissions(tmp_path):
    """mkstemp's 0600 is not what a results file or checkpoint should keep."""
    import os
    import stat

    from crossholder import paths

    want = paths.default_file_mode()
    txt = store.atomic_write_text(tmp_path / "a.csv", "x\n")
    ckpt = models.atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "m.pt")
    for f in (txt, ckpt):
        assert stat.S_IMODE(os.stat(f).st_mode) == want
    old = os.umask(0o027)
    try:
        assert paths.default_file_mode() == 0o640
        assert stat.S_IMODE(os.stat(store.atomic_write_text(tmp_path / "b.csv", "y\n")).st_mode) == 0o640
    finally:
        os.umask(old)


def test_ablation_configs_identity_and_h_schedule():
    """|Hg| keeps Cross-Hölder's registered (λ1, λ2) by default; CURE's h ramps over h_ramp_epochs."""
    hg = training.make_config("mnist", "cross_holder_hg")
    assert (hg.lam1, hg.lam2) == (experiments.FINAL["mnist"]["cross_holder"]["lam1"],
                                  experiments.FINAL["mnist"]["cross_holder"]["lam2"])
    assert set(hg.relevant()) - {"dataset", "defense", "epochs", "batch_size", "lr", "n_train", "seed",
                                 "profile"} == {"lam1", "lam2", "classes"}
    cure = training.make_config("fashion_mnist", "cure", h=1.5, gamma=4.0)
    assert {"gamma", "h", "h_ramp_epochs"} <= set(cure.relevant()) and "lam1" not in cure.relevant()
    assert [cure.h_at(e) for e in range(5)] == [0.5, 1.0, 1.5, 1.5, 1.5]
    assert training.make_config("mnist", "cure", h_ramp_epochs=0).h_at(0) == 1.5
    assert cure.run_id != training.make_config("fashion_mnist", "cure", h=0.5, gamma=4.0).run_id


def test_cross_holder_with_its_hessian_term_off_is_a_run_of_its_own(tmp_path, monkeypatch):
    """Issue 32, item 2: lam2 = 0 is a value a researcher asks for (the ablation), never "not given"."""
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path))
    off = small("cross_holder", lam2=0.0, epochs=1)
    assert off.lam2 == 0.0 and off.run_id != small("cross_holder", epochs=1).run_id
    assert off.run_id != small("cross_lipschitz", lam1=off.lam1, epochs=1).run_id
    run = training.train(off, progress=False)
    assert run.record["hyperparameters"]["lam2"] == 0.0 and (run.log["hess_term"] == 0).all()
