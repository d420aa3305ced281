from __future__ import annotations

import pytest
import torch

from crossholder import data, models


@pytest.mark.parametrize("dataset", data.DATASETS)
def test_paper_cnn_shapes_and_size(dataset):
    m = models.paper_cnn(dataset)
    out = m(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 10)
    n = sum(p.numel() for p in m.parameters())
    assert n == 320 + 9248 + 18496 + 36928 + 205000 + 40200 + 2010
    mean, std = data.MEAN_STD[dataset]
    assert m[0].mean.item() == pytest.approx(mean) and m[0].std.item() == pytest.approx(std)
    convs = [l for l in m if isinstance(l, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (1, 1), (2, 2)]
    assert not any(isinstance(l, (torch.nn.ReLU, torch.nn.MaxPool2d)) for l in m)


def test_standardization_is_first_layer():
    m = models.paper_cnn("mnist")
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(m[0](x), (x - 0.1307) / 0.3081)


def test_twice_differentiable_input_hvp_nonzero():
    m = models.paper_cnn("mnist").double()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(m(x)[:, 3].sum(), x, create_graph=True)
    (hv,) = torch.autograd.grad(g, x, grad_outputs=torch.randn_like(x))
    assert hv.abs().max() > 0 and torch.isfinite(hv).all()


def test_save_load_roundtrip(tmp_path):
    m = models.paper_cnn("fashion_mnist")
    path = models.save(m, tmp_path / "m.pt", meta={"seed": 3})
    m2, meta = models.load(path, with_meta=True)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(m.eval()(x), m2(x)) and meta == {"seed": 3}
    assert m2[0].mean.item() == pytest.approx(0.2860)
    assert not m2.training
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_load_is_weights_only(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"format": models.CHECKPOINT_FORMAT, "x": Evil()}, bad)
    with pytest.raises(pickle.UnpicklingError):
        models.load(bad)


def test_load_rejects_foreign_checkpoint(tmp_path):
    p = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, p)
    with pytest.raises(ValueError, match="not a crossholder checkpoint"):
        models.load(p)


def test_build_unknown_arch():
    with pytest.raises(ValueError, match="arch='resnet'"):
        models.build("resnet")


def test_short_training_reaches_well_above_chance():
    torch.manual_seed(0)
    x, y = data.tensors("mnist", "train")
    xt, yt = data.tensors("mnist", "test")
    m = models.paper_cnn("mnist")
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, x.shape[0], (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(m(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        acc = (m(xt[:2000]).argmax(1) == yt[:2000]).float().mean().item()
    assert acc > 0.9, acc
