"""The cached, resumable runner: a resumed or cached evaluation refuses rows of other images."""

from __future__ import annotations

import pytest
import torch

from crossholder import evaluation

from test_attacks import linear_case  # noqa: F401  (the fixture: a linear model with closed-form distances)


def _kw(**extra):
    return dict(dataset="mnist", defense="lin", eps_list=[0.0, 0.2, 0.4], steps=5, restarts=2, seed=1,
                profile="smoke", model_id="m", chunk=4, progress=False, protocol="paper-v1", **extra)


@pytest.mark.filterwarnings("ignore:APGD-T is not run")
def test_resumed_evaluation_refuses_other_images(linear_case, tmp_path, monkeypatch):  # noqa: F811
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
def test_cached_evaluation_refuses_other_images(linear_case, tmp_path, monkeypatch):  # noqa: F811
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
    from test_attacks import linear_multiclass

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
