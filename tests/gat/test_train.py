"""The library's training step on CPU: smoke, overfit, guard, resume."""

from __future__ import annotations

import io

import pytest
import torch

from gat.io import load_generator, save_generator
from gat.train import GATTrainer, NonFiniteError, TrainConfig

TINY = dict(name="GAT-T1/2", channels=4, size=8, num_classes=4, teacher_dim=16)


def _batch(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g),
            torch.randn(n, 1 + 16, 16, generator=g))


def _taught_batch(seed: int):
    """A batch whose teacher tokens are a fixed function of the latents (learnable)."""
    x, c, _ = _batch(seed=seed)
    proj = torch.randn(16, 16, generator=torch.Generator().manual_seed(99))
    patches = x.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).reshape(16, 16, 16)
    tokens = patches @ proj
    return x, c, torch.cat([tokens.mean(1, keepdim=True), tokens], 1)


def test_fifty_steps_finite_and_ema_differs():
    # no augmentation: the release's targets do not follow D's translations and cutouts,
    # which on a 4x4 token grid leaves little to learn in 50 steps
    trainer = GATTrainer(**TINY, cfg=TrainConfig(lr_base=2e-3, c_base=32, ema_decay=0.9,
                                                 augment=False))
    keys = {"loss_d", "loss_g", "d_adv", "r1", "r2", "repa", "logit_gap",
            "grad_norm_d", "grad_norm_g"}
    repa = []
    for i in range(50):
        metrics = trainer.step(*_taught_batch(i))
        assert keys <= set(metrics)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
        repa.append(metrics["repa"])
    assert trainer.step_count == 50
    diffs = [(p - q).abs().max().item()
             for p, q in zip(trainer.G.parameters(), trainer.G_ema.parameters())]
    assert max(diffs) > 1e-4
    # REPA head learns the teacher tokens ([cls] + patch mean: 2 at chance)
    assert sum(repa[-5:]) / 5 < 0.7 * sum(repa[:5]) / 5, repa


def test_overfit_moves_generated_statistics_toward_data():
    """Fixed data with mean 1.5 and std 0.5: G's samples must move toward both."""
    torch.manual_seed(0)
    data = 1.5 + 0.5 * torch.randn(32, 4, 8, 8)
    labels = torch.arange(32) % 4
    cfg = TrainConfig(lr_base=4e-3, c_base=32, ema_decay=0.0, augment=False, repa_weight=0.0)
    trainer = GATTrainer(**TINY, cfg=cfg)

    def gap() -> float:
        with torch.no_grad():
            x = trainer.G(torch.randn(256, 64), torch.arange(256) % 4)[-1]
        return abs(x.mean().item() - 1.5) + abs(x.std().item() - 0.5)

    before = gap()
    for _ in range(120):
        trainer.step(data, labels)
    after = gap()
    assert after < 0.5 * before, (before, after)


def test_divergence_guard_names_the_step():
    trainer = GATTrainer(**TINY, cfg=TrainConfig(c_base=32))
    trainer.step(*_batch())

    def nan_logits(module, inputs, out):
        return (out[0] * float("nan"), out[1]) if isinstance(out, tuple) else out * float("nan")

    hook = trainer.D.register_forward_hook(nan_logits)
    with pytest.raises(NonFiniteError, match="at step 2"):
        trainer.step(*_batch())
    hook.remove()


def test_state_dict_roundtrip_resumes_identically():
    cfg = TrainConfig(c_base=32)
    a = GATTrainer(**TINY, cfg=cfg, seed=3)
    for i in range(3):
        a.step(*_batch(seed=i))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    ma = a.step(*_batch(seed=7))
    buf.seek(0)
    b = GATTrainer(**TINY, cfg=cfg, seed=99)
    b.load_state_dict(torch.load(buf, weights_only=True))  # restores the RNG too
    assert b.step_count == 3
    mb = b.step(*_batch(seed=7))
    assert ma["loss_d"] == pytest.approx(mb["loss_d"], rel=1e-5)
    for p, q in zip(a.G.parameters(), b.G.parameters()):
        torch.testing.assert_close(p, q)


def test_gradient_accumulation_matches_full_batch():
    """Two half-batches accumulate to the full batch's D gradient (same noise draws)."""
    x, c, t = _batch(16)
    grads = []
    for accum in (1, 2):
        trainer = GATTrainer(**TINY, cfg=TrainConfig(c_base=32, augment=False, agp_weight=0.0),
                             seed=0, grad_accum=accum)
        trainer.opt_d.step = lambda: None  # inspect the gradient only
        torch.manual_seed(5)
        z = torch.randn(16, 64)
        trainer._d_step(list(zip(x.chunk(accum), c.chunk(accum), z.chunk(accum),
                                 t.chunk(accum))))
        grads.append(trainer.D.head.weight.grad.clone())
    # Noise draws differ between the two splits, so compare statistically, not exactly.
    cos = torch.nn.functional.cosine_similarity(grads[0].flatten(), grads[1].flatten(), dim=0)
    assert cos > 0.5


def test_generator_save_load_roundtrip(tmp_path):
    trainer = GATTrainer(**TINY, cfg=TrainConfig(c_base=32))
    trainer.step(*_batch())
    save_generator(tmp_path / "g", trainer.G_ema, {"name": TINY["name"]})
    gen, meta = load_generator(tmp_path / "g")
    z, c = torch.randn(3, 64), torch.tensor([0, 1, 2])
    torch.testing.assert_close(gen.sample(z, c), trainer.G_ema.sample(z, c))
    assert meta["num_classes"] == 4 and meta["size"] == 8
    with pytest.raises(FileNotFoundError, match=r"generator\.pt"):
        load_generator(tmp_path)


def test_gradient_checkpointing_gives_same_gradients():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        trainer = GATTrainer(**TINY, cfg=TrainConfig(c_base=32), grad_checkpointing=ckpt)
        torch.manual_seed(1)
        out = torch.cat(trainer.G(torch.randn(4, 64), torch.arange(4)), 1)
        logit = trainer.D(out, torch.arange(4))
        logit.sum().backward()
        grads.append([p.grad.clone() for p in trainer.G.parameters() if p.grad is not None])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_unconditional_training_steps_whatever_the_labels():
    trainer = GATTrainer(**{**TINY, "num_classes": 0}, cfg=TrainConfig(lr_base=2e-3, c_base=32))
    for i in range(3):
        latents, labels, teacher = _batch(seed=i)  # labels 0..3: an unconditional G sees 0
        metrics = trainer.step(latents, labels, teacher)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert trainer.G_ema.w_avg.abs().sum() > 0  # its one truncation centre moved


def _linear_output_dtypes(module: torch.nn.Module) -> tuple[set[torch.dtype], list]:
    """Records the dtype of every nn.Linear output of ``module`` while the hooks live."""
    dtypes: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
             for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return dtypes, hooks


@pytest.mark.parametrize("precision, expected", [("bf16", torch.bfloat16),
                                                 ("auto", torch.float32)])
def test_precision_on_cpu(precision, expected):
    """bf16 autocast really runs G's and D's matmuls in bf16 on CPU; ``auto`` is fp32 there.
    Parameters and the returned losses stay fp32 and finite."""
    trainer = GATTrainer(**TINY, cfg=TrainConfig(c_base=32), precision=precision)
    g_dtypes, g_hooks = _linear_output_dtypes(trainer.G)
    d_dtypes, d_hooks = _linear_output_dtypes(trainer.D)
    metrics = trainer.step(*_batch())
    for hook in g_hooks + d_hooks:
        hook.remove()
    assert g_dtypes == {expected} and d_dtypes == {expected}
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    params = [*trainer.G.parameters(), *trainer.D.parameters()]
    assert {p.dtype for p in params} == {torch.float32}
    assert {p.grad.dtype for p in params if p.grad is not None} == {torch.float32}


def test_bad_precision_is_refused():
    with pytest.raises(ValueError, match=r"precision 'fp16'.*bf16"):
        GATTrainer(**TINY, precision="fp16")


@pytest.mark.slow  # inductor compiles ~8 graph variants: 335 s on 2 cores at load 10
def test_compiled_step_matches_eager():
    """torch.compile (inductor, CPU) of G's and D's blocks: the same losses and updates as
    eager, up to float reassociation; checkpoints keep their keys; the EMA copy stays eager."""
    batch = _batch()
    runs = []
    for compiled in (False, True):
        trainer = GATTrainer(**TINY, cfg=TrainConfig(c_base=32), seed=0,
                             compile_models=compiled)
        runs.append((trainer, [trainer.step(*batch) for _ in range(2)]))
    (eager, eager_metrics), (comp, comp_metrics) = runs
    for a, b in zip(eager_metrics, comp_metrics):
        for key in ("loss_d", "loss_g", "r1", "repa"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), key
    for p, q in zip(eager.G.parameters(), comp.G.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5)
    assert comp.G.blocks[0]._compiled_call_impl is not None
    assert comp.G_ema.blocks[0]._compiled_call_impl is None
    assert set(comp.G.state_dict()) == set(eager.G.state_dict())
