"""gat.analysis on constructed cases: what each measurement must give when the answer is known."""

from __future__ import annotations

import pytest
import torch

from gat import analysis as ga
from gat.models import MNG_LEVELS, Z_DIM, Generator, build_models, model_config


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(model_config("GAT-T2/4"), channels=4, size=16, num_classes=4).eval()


def inputs(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, Z_DIM, generator=g), torch.arange(n) % 4


def make_identity(gen: Generator, index: int) -> None:
    """Zero block ``index``'s two residual gates: the block then returns its input exactly."""
    width = gen.cfg.width
    mod = gen.blocks[index].modulation[-1]  # SiLU, then this Linear
    with torch.no_grad():
        for chunk in (1, 3):  # (scale1, gate1, scale2, gate2): the gates
            mod.weight[chunk * width:(chunk + 1) * width] = 0
            mod.bias[chunk * width:(chunk + 1) * width] = 0


def test_capture_gives_each_blocks_input_and_output_and_the_same_latents():
    gen = tiny_generator()
    z, c = inputs()
    cap = ga.capture_blocks(gen, z, c)
    assert cap.depth == len(gen.blocks) == 3
    assert torch.equal(cap.inputs[0], gen.tokens.expand(len(z), -1, -1))  # no image input
    for i in range(cap.depth - 1):
        assert torch.equal(cap.inputs[i + 1], cap.outputs[i])
    assert cap.outputs[0].shape == (6, 16, 48)  # 16x16 latents, patch 4: a 4x4 grid
    with torch.no_grad():
        expected = gen(z, c)
    assert len(cap.latents) == MNG_LEVELS
    assert all(torch.equal(a, b) for a, b in zip(cap.latents, expected))
    assert not any(b._forward_hooks for b in gen.blocks)  # hooks are gone afterwards


def test_skipping_an_identity_block_changes_nothing_and_other_blocks_something():
    gen = tiny_generator()
    make_identity(gen, 1)
    z, c = inputs()
    contributions = ga.block_contributions(gen, z, c)
    assert contributions.shape == (3, 6)
    assert torch.all(contributions[1] == 0)
    assert torch.all(contributions[[0, 2]] > 0)
    cap = ga.capture_blocks(gen, z, c)
    assert torch.allclose(ga.token_cosine(cap.inputs[1], cap.outputs[1]), torch.ones(6))
    with torch.no_grad():
        unablated = gen(z, c)[-1]
        with ga.skip_blocks(gen, [0]):
            ablated = gen(z, c)[-1]
        assert not torch.equal(ablated, unablated)
        assert torch.equal(gen(z, c)[-1], unablated)  # the skip ends with the block
    with pytest.raises(IndexError, match=r"0\.\.2"):
        with ga.skip_blocks(gen, [3]):
            pass


def test_the_distance_gets_one_reference_object_per_call():
    gen = tiny_generator()
    z, c = inputs(4)
    seen = []

    def distance(ablated, reference):
        seen.append(reference)
        return torch.full((len(ablated),), 2.0)

    out = ga.block_contributions(gen, z, c, distance)
    assert torch.equal(out, torch.full((3, 4), 2.0))
    assert len(seen) == 3 and all(r is seen[0] for r in seen)  # a distance may cache it


def test_token_cosine_of_known_pairs():
    a = torch.randn(3, 5, 8)
    assert torch.allclose(ga.token_cosine(a, 2 * a), torch.ones(3))
    assert torch.allclose(ga.token_cosine(a, -a), -torch.ones(3))


def test_cross_z_cosine_matches_the_pairwise_definition():
    tokens = torch.randn(5, 7, 6, generator=torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    pairs = [(unit[i] * unit[j]).sum(-1).mean() for i in range(5) for j in range(5) if i != j]
    assert ga.cross_z_cosine(tokens) == pytest.approx(float(torch.stack(pairs).mean()), abs=1e-6)
    same = tokens[:1].expand(4, -1, -1) * torch.tensor([1.0, 2, 3, 4]).view(4, 1, 1)
    assert ga.cross_z_cosine(same) == pytest.approx(1.0)  # z changes nothing: 1
    assert abs(ga.cross_z_cosine(torch.randn(64, 16, 256))) < 0.01  # unrelated: ~0
    with pytest.raises(ValueError, match=">= 2"):
        ga.cross_z_cosine(tokens[:1])


def test_pca_images_show_the_dominant_direction_on_the_grid():
    g = 4
    rows = torch.arange(g).repeat_interleave(g).float()  # token n = (row, col), row-major
    cols = torch.arange(g).repeat(g).float()
    basis = torch.linalg.qr(torch.randn(16, 16))[0]
    tokens = (10 * rows[:, None] * basis[0] + 3 * cols[:, None] * basis[1]
              + 0.01 * torch.randn(g * g, 16))[None]
    img = ga.pca_images(tokens)
    assert img.shape == (1, 3, g, g) and img.dtype == torch.uint8
    red, green = img[0, 0].float(), img[0, 1].float()
    # The first component is the row (strongest variation), the second the column; each
    # stretched to 0..255; the sign is fixed, so the order is monotone one way or the other.
    assert red.min() == 0 and red.max() == 255 and green.min() == 0 and green.max() == 255
    assert (red.std(1) < 5).all() and (green.std(0) < 5).all()
    assert ga.pca_images(tokens.repeat(2, 1, 1), joint=True).shape == (2, 3, g, g)
    flat = ga.pca_images(torch.ones(1, 9, 8))  # no variation at all: mid-grey
    assert torch.all(flat == 128)
    with pytest.raises(ValueError, match="square"):
        ga.pca_images(torch.randn(1, 8, 4))


def test_cknna_identical_rotated_scaled_and_unrelated():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 32, generator=g)
    assert ga.cknna(a, a) == pytest.approx(1.0, abs=1e-9)
    rotation = torch.linalg.qr(torch.randn(32, 32, generator=g))[0]
    for normalize in (True, False):
        assert ga.cknna(a, 7.5 * a @ rotation, normalize=normalize) == pytest.approx(1.0,
                                                                                   abs=1e-6)
    # Another width: CKNNA compares kernels, not coordinates.
    assert ga.cknna(a, torch.cat([a, a], 1) @ torch.linalg.qr(torch.randn(64, 64,
                                                               generator=g))[0]) == \
        pytest.approx(1.0, abs=1e-6)
    unrelated = ga.cknna(a, torch.randn(200, 48, generator=g))
    assert abs(unrelated) < 0.15
    related = ga.cknna(a, a + 0.5 * torch.randn(200, 32, generator=g))
    assert unrelated < related < 1.0
    with pytest.raises(ValueError, match="samples"):
        ga.cknna(a, a[:100])
    with pytest.raises(ValueError, match="k < n"):
        ga.cknna(a[:5], a[:5], k=5)


def test_discriminator_tokens_per_block_with_cls_first():
    torch.manual_seed(0)
    _, disc = build_models("GAT-T1/4", channels=4, size=16, num_classes=4, teacher_dim=8)
    x = torch.randn(3, 4 * MNG_LEVELS, 16, 16)
    tokens = ga.discriminator_tokens(disc.eval(), x, torch.arange(3))
    assert len(tokens) == len(disc.blocks)
    assert all(t.shape == (3, 1 + 16, disc.cfg.width) for t in tokens)
