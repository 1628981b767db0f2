"""Latent walks and edit directions: endpoints are the endpoint samples, PCA directions are
orthonormal, an edit of 0 standard deviations changes nothing, bad input is refused."""

from __future__ import annotations

import pytest
import torch

from gat import walk
from gat.models import build_models
from gat.sample import seed_z


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    g, _ = build_models("GAT-T1/2", 4, 8, 4, 8)
    g.eval()
    z, c = torch.randn(64, 64), torch.arange(64) % 4
    g.update_w_avg(g.mapping(z, c), c, beta=0.0)  # truncation centres away from 0
    return g


def _image(g, w: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return g.synthesize(w)[-1]


def test_slerp_and_lerp_hit_their_endpoints_exactly():
    a, b, t = seed_z(0), seed_z(1), walk.positions(5)
    for path in (walk.slerp(a, b, t), walk.lerp(a, b, t)):
        assert path.shape == (5, 64)
        assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    norms = walk.slerp(a, a * 2, t).norm(dim=1)  # parallel: falls back to a straight line
    torch.testing.assert_close(norms, torch.linspace(1, 2, 5) * a.norm())
    mid = walk.slerp(a, b, torch.tensor([0.5]))[0]
    assert abs(mid.norm() - a.norm()) < 0.1 * a.norm()  # stays near the Gaussian's shell


@pytest.mark.parametrize("psi, guidance", [(1.0, 1.0), (0.7, 1.5)])
def test_interpolation_endpoints_equal_the_endpoint_samples(gen, psi, guidance):
    z0, z1 = seed_z(3), seed_z(4)

    def sample(z: torch.Tensor, c: int) -> torch.Tensor:
        return gen.sample(z[None], torch.tensor([c]), psi, guidance)[0]

    for styles in (walk.z_walk(gen, z0, z1, 2, 6, psi, guidance),
                   walk.w_walk(gen, z0, z1, 2, 6, psi, guidance)):
        images = _image(gen, styles)
        assert images.shape == (6, 4, 8, 8)
        torch.testing.assert_close(images[0], sample(z0, 2), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(images[-1], sample(z1, 2), atol=1e-5, rtol=1e-5)
    images = _image(gen, walk.class_walk(gen, z0, 1, 3, 6, psi, guidance))
    torch.testing.assert_close(images[0], sample(z0, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(images[-1], sample(z0, 3), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(images[2], images[0], atol=1e-4)  # the middle is neither


def test_walks_refuse_bad_input(gen):
    z = seed_z(0)
    with pytest.raises(ValueError, match="at least 2 frames"):
        walk.z_walk(gen, z, z, 0, 1)
    with pytest.raises(ValueError, match=r"out of range.*0\.\.3"):
        walk.class_walk(gen, z, 0, 9, 4)
    with pytest.raises(ValueError, match=r"psi -0\.5: truncation must be >= 0"):
        walk.w_walk(gen, z, z, 0, 4, psi=-0.5)
    torch.manual_seed(0)
    unconditional, _ = build_models("GAT-T1/2", 4, 8, 0, 8)
    with pytest.raises(ValueError, match="unconditional"):
        walk.class_walk(unconditional, z, 0, 1, 4)
    assert walk.z_walk(unconditional, z, seed_z(1), 0, 3).shape == (3, 32)


def test_pca_directions_orthonormal_and_zero_edit_returns_the_input(gen, tmp_path):
    directions = walk.pca_directions(gen, num=512, k=5, batch=200)
    d = directions.components
    torch.testing.assert_close(d @ d.T, torch.eye(5), atol=1e-5, rtol=0)
    assert (directions.stdev[:-1] >= directions.stdev[1:]).all() and directions.stdev[-1] > 0
    again = walk.pca_directions(gen, num=512, k=5, batch=512)  # signs fixed, batch-free
    torch.testing.assert_close(again.components, d, atol=1e-4, rtol=0)

    w = gen.style(seed_z(7)[None], torch.tensor([1]), psi=0.8)[0]
    edited = walk.edit(w, directions, 0, torch.tensor([-2.0, 0.0, 2.0]))
    assert torch.equal(edited[1], w)  # sigma 0: the input itself
    torch.testing.assert_close(_image(gen, edited[1:2])[0],
                               gen.sample(seed_z(7)[None], torch.tensor([1]), psi=0.8)[0])
    moved = (edited[2] - w) @ d.T  # along component 0 only, by 2 standard deviations
    torch.testing.assert_close(moved, torch.tensor([2 * directions.stdev[0], 0, 0, 0, 0]),
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"component 5: the directions hold 0\.\.4"):
        walk.edit(w, directions, 5, torch.zeros(1))

    walk.save_directions(tmp_path / "d.pt", directions, {"name": "GAT-T1/2"})
    loaded, meta = walk.load_directions(tmp_path / "d.pt")
    assert meta == {"name": "GAT-T1/2"} and torch.equal(loaded.components, d)
    loaded.check(gen)
