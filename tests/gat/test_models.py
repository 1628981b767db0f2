"""Architecture facts: sizes, parameter counts, GFLOPs, lr rule, RoPE, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gat.flops import generator_gflops
from gat.models import GAT_MODELS, apply_rope, build_models, count_params, rope_2d
from gat.optim import width_aware_lr

# Paper Table 2 / SPEC 1 and SPEC 6 (GFLOPs in the DiT convention).
PAPER = {
    "S": dict(g=29.36e6, d=39.21e6, lr=4e-4, width=384),
    "B": dict(g=116.75e6, d=104.68e6, lr=2e-4, width=768),
    "L": dict(g=408.75e6, d=323.04e6, lr=1.5e-4, width=1024),
    "XL": dict(g=602.25e6, d=467.68e6, lr=1.333e-4, width=1152),
}
GFLOPS = {"S/2": 6.06, "B/2": 23.01, "L/2": 80.71, "XL/2": 118.64, "S/4": 1.41, "B/4": 5.56}


def test_size_table_has_paper_sizes_patches_and_cpu_ladder():
    for size in ("S", "B", "L", "XL"):
        for patch in (2, 4, 8):
            assert f"GAT-{size}/{patch}" in GAT_MODELS
    ladder = [GAT_MODELS[f"GAT-T{i}/2"] for i in range(1, 5)]
    assert [c.width for c in ladder] == sorted({c.width for c in ladder})


@pytest.mark.parametrize("size", list(PAPER))
def test_parameter_counts_match_paper(size):
    with torch.device("meta"):
        gen, disc = build_models(f"GAT-{size}/2", channels=4, size=32, num_classes=1000,
                                 teacher_dim=768)
    assert count_params(gen) == pytest.approx(PAPER[size]["g"], rel=0.01)
    assert count_params(disc) == pytest.approx(PAPER[size]["d"], rel=0.02)


@pytest.mark.parametrize("size", list(PAPER))
def test_width_aware_lr_reproduces_paper_table(size):
    lr = width_aware_lr(4e-4, 384, PAPER[size]["width"])
    assert lr == pytest.approx(PAPER[size]["lr"], rel=1e-3)


@pytest.mark.parametrize("name", list(GFLOPS))
def test_generator_gflops_match_dit_convention(name):
    with torch.device("meta"):
        gen, _ = build_models(f"GAT-{name}", 4, 32, 1000, 8)
    assert generator_gflops(gen) == pytest.approx(GFLOPS[name], rel=0.02)


def test_gflops_same_on_meta_and_cpu():
    with torch.device("meta"):
        meta_gen, _ = build_models("GAT-T2/2", 4, 16, 10, 8)
    cpu_gen, _ = build_models("GAT-T2/2", 4, 16, 10, 8)
    assert generator_gflops(meta_gen) == pytest.approx(generator_gflops(cpu_gen))


def test_gflops_grow_with_model_size_on_ladder():
    flops = [generator_gflops(build_models(f"GAT-T{i}/2", 4, 16, 10, 8)[0]) for i in range(1, 5)]
    assert flops == sorted(flops) and flops[-1] > 5 * flops[0]


def test_shapes_of_outputs_and_logits():
    gen, disc = build_models("GAT-T1/2", channels=4, size=16, num_classes=10, teacher_dim=24)
    z, c = torch.randn(3, 64), torch.tensor([0, 4, 9])
    outs = gen(z, c)
    assert len(outs) == 4 and all(o.shape == (3, 4, 16, 16) for o in outs)
    logit, tokens = disc(torch.cat(outs, 1), c, repa_first=2)
    assert logit.shape == (3,) and tokens.shape == (2, 1 + 8 * 8, 24)


@pytest.mark.parametrize("name", ["GAT-T1/2", "GAT-T3/2", "GAT-S/8"])
def test_mng_heads_accumulate(name):
    gen, _ = build_models(name, 4, 16, 10, 8)
    assert len(set(gen.head_after)) == min(4, gen.cfg.depth) and gen.head_after[-1] == len(
        gen.blocks) - 1
    for head in gen.heads:  # make every head's contribution visible
        torch.nn.init.normal_(head.linear.weight)
    z, c = torch.randn(2, 64), torch.tensor([1, 2])
    w = gen.mapping(z, c)
    outs = gen.synthesize(w)
    assert not torch.allclose(outs[0], outs[1])
    # x_k - x_{k-1} is the k-th head alone: re-run the blocks and compare.
    x = gen.tokens.expand(2, -1, -1)
    singles = []
    for i, block in enumerate(gen.blocks):
        x = block(x, w, gen.rope)
        singles += [head(x, w) for head, after in zip(gen.heads, gen.head_after) if after == i]
    torch.testing.assert_close(outs[-1], sum(singles), rtol=1e-4, atol=1e-5)


def test_rope_scores_invariant_to_common_shift():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 16, 32), torch.randn(1, 2, 16, 32)
    base = rope_2d(32, 4)
    shifted = rope_2d(32, 4, offset=(3.0, -5.0))
    s0 = apply_rope(q, base) @ apply_rope(k, base).transpose(-1, -2)
    s1 = apply_rope(q, shifted) @ apply_rope(k, shifted).transpose(-1, -2)
    torch.testing.assert_close(s0, s1, rtol=1e-4, atol=1e-4)
    # and it does encode position: scores change when only k moves
    s2 = apply_rope(q, base) @ apply_rope(k, shifted).transpose(-1, -2)
    assert not torch.allclose(s0, s2, atol=1e-3)


def test_rope_leaves_cls_token_unrotated():
    x = torch.randn(1, 1, 5, 8)
    out = apply_rope(x, rope_2d(8, 2))
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0])


def test_same_seed_same_samples():
    def sample(seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        gen, _ = build_models("GAT-T1/2", 4, 16, 10, 8)
        g = torch.Generator().manual_seed(seed)
        return gen.sample(torch.randn(4, 64, generator=g), torch.arange(4))

    torch.testing.assert_close(sample(1), sample(1))
    assert not torch.allclose(sample(1), sample(2))


def test_truncation_and_guidance_in_w_space():
    torch.manual_seed(0)
    gen, _ = build_models("GAT-T1/2", 4, 16, 10, 8)
    gen.eval()
    z, c = torch.randn(4, 64), torch.tensor([3, 3, 3, 3])
    gen.update_w_avg(gen.mapping(z, c), c, beta=0.0)  # w_avg[3] = this batch's mean
    full = gen.sample(z, c, psi=1.0)
    collapsed = gen.sample(z, c, psi=0.0)  # every sample becomes the class mean
    assert collapsed.std(0).max() < 1e-5 < full.std(0).max()
    assert not torch.allclose(gen.sample(z, c, guidance=2.0), full)


def test_sdpa_matches_explicit_attention():
    from gat.models import Attention, Rope

    attn = Attention(32, 2)
    with torch.no_grad():  # learned qk scales away from 1, so the test sees them
        attn.q_norm.weight.uniform_(0.5, 2.0)
        attn.k_norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(2, 16, 32)
    out = attn(x, Rope(16, 4))
    b, n, c = x.shape
    q, k, v = attn.qkv(x).view(b, n, 3, 2, 16).permute(2, 0, 3, 1, 4)
    angles = rope_2d(16, 4)
    q = apply_rope(F.rms_norm(q, (16,)) * attn.q_norm.weight, angles)
    k = apply_rope(F.rms_norm(k, (16,)) * attn.k_norm.weight, angles)
    ref = F.softmax(q @ k.transpose(-1, -2) / 4.0, -1) @ v
    torch.testing.assert_close(out, attn.proj(ref.transpose(1, 2).reshape(b, n, c)),
                               rtol=1e-4, atol=1e-5)


def test_g_and_d_can_differ_in_size():
    """The paper's Fig. 7a scales G and D apart: D takes its own size and its own lr."""
    from gat.train import GATTrainer, TrainConfig

    gen, disc = build_models("GAT-T2/4", 4, 16, 10, 8, d_name="GAT-T3/4")
    assert gen.cfg.width == 48 and disc.cfg.width == 64
    trainer = GATTrainer("GAT-T2/4", 4, 16, 10, 8, TrainConfig(c_base=32), d_name="GAT-T3/4")
    assert trainer.lr == pytest.approx(4e-4 * 32 / 48)
    assert trainer.lr_d == pytest.approx(4e-4 * 32 / 64)
    assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(trainer.lr_d)
    with pytest.raises(ValueError, match="GAT-T3/8's patch"):
        build_models("GAT-T2/4", 4, 12, 10, 8, d_name="GAT-T3/8")


def test_unconditional_models_ignore_classes():
    from gat.models import conditioning_classes

    assert conditioning_classes(1) == 0 and conditioning_classes(10) == 10
    torch.manual_seed(0)
    gen, disc = build_models("GAT-T1/2", 4, 16, 0, 8)
    gen.eval()
    z = torch.randn(3, 64)
    plain = gen.sample(z, None)
    torch.testing.assert_close(gen.sample(z, torch.tensor([0, 5, 9])), plain)  # c unused
    torch.testing.assert_close(gen.sample(z, None, guidance=3.0), plain)  # w_null is w
    assert gen.w_avg.shape == (1, 32) and plain.shape == (3, 4, 16, 16)
    assert disc(torch.randn(3, 16, 16, 16), None).shape == (3,)
