"""Gradient averaging over real gloo workers: the bucketed (overlapped) all-reduce gives the
flat one's result, with the number of collectives it says, and the average is the gradient
of the concatenated batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gat.distributed import GradientReducer, plan_buckets
from gat.models import build_models
from gat.train import GATTrainer, NonFiniteError, TrainConfig

TINY = dict(name="GAT-T1/2", channels=4, size=8, num_classes=4, teacher_dim=16)
WORLD = 2
# (name, allreduce, grad_accum, bucket_mb): 1e-9 MB puts every parameter in its own bucket
STEP_RUNS = [("flat", "flat", 1, 25.0), ("bucketed", "bucketed", 1, 25.0),
             ("flat-accum2", "flat", 2, 25.0), ("bucketed-accum2", "bucketed", 2, 25.0),
             ("bucketed-per-param", "bucketed", 1, 1e-9)]


def _batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g),
            torch.randn(n, 1 + 16, 16, generator=g))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, out: str) -> None:
    """One gloo worker: every run of STEP_RUNS (2 steps, the second without teacher tokens
    so D's REPA head gets no gradient), then the averaged gradient of a fixed D loss."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    calls = [0]
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):  # wraps the real collective: counts, then runs
        calls[0] += 1
        return real_all_reduce(*args, **kwargs)

    dist.all_reduce = counting_all_reduce
    results = {}
    for name, mode, accum, bucket_mb in STEP_RUNS:
        trainer = GATTrainer(**TINY, cfg=TrainConfig(c_base=32), seed=0, grad_accum=accum,
                             allreduce=mode, bucket_mb=bucket_mb)
        per_step = []
        for step in range(2):
            x, c, t = _batch(8, seed=100 * step + rank)  # different data on every worker
            calls[0] = 0
            trainer.step(x, c, t if step == 0 else None)
            per_step.append(calls[0])
        results[name] = {
            "G": {k: v.clone() for k, v in trainer.G.state_dict().items()},
            "D": {k: v.clone() for k, v in trainer.D.state_dict().items()},
            "calls": per_step, "reducer_calls": trainer.reduce_d.calls + trainer.reduce_g.calls,
            "buckets": (len(trainer.reduce_d.buckets), len(trainer.reduce_g.buckets)),
            "repa_grad_none": all(p.grad is None for p in trainer.D.repa.parameters()),
        }
    # Divergence on one rank only: rank 1's second batch is NaN. Every rank must stop at
    # that step, with the same error, instead of rank 1 raising while rank 0 waits.
    trainer = GATTrainer(**TINY, cfg=TrainConfig(c_base=32), seed=0)
    stopped = None
    for step in range(1, 4):
        x, c, t = _batch(8, seed=step)
        if rank == 1 and step == 2:
            x = torch.full_like(x, float("nan"))
        try:
            trainer.step(x, c, t)
        except NonFiniteError as err:
            stopped = (step, err.here, str(err))
            break
    results["diverged"] = {"stopped": stopped}
    x, c, _ = _batch(2 * 4, seed=7)
    for mode in ("flat", "bucketed"):
        torch.manual_seed(0)
        _, disc = build_models(**TINY)
        reducer = GradientReducer(disc, mode, bucket_mb=0.01)
        reducer.arm()
        disc(x.repeat(1, 4, 1, 1)[rank::WORLD], c[rank::WORLD]).square().mean().backward()
        reducer.finish()
        results[f"grad-{mode}"] = {n: p.grad.clone() for n, p in disc.named_parameters()
                                   if p.grad is not None}
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of 2 real gloo processes computed (one spawn for all the tests below)."""
    out = tmp_path_factory.mktemp("gloo")
    mp.spawn(_rank_main, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("accum", [1, 2])
def test_bucketed_step_gives_the_flat_parameters(ranks, accum):
    suffix = "" if accum == 1 else f"-accum{accum}"
    for rank in ranks:
        for net in ("G", "D"):
            flat, bucketed = rank[f"flat{suffix}"][net], rank[f"bucketed{suffix}"][net]
            for key in flat:
                torch.testing.assert_close(bucketed[key], flat[key], rtol=1e-5, atol=1e-7)
    for net in ("G", "D"):  # and the workers stay in sync
        for key, value in ranks[0][f"bucketed{suffix}"][net].items():
            torch.testing.assert_close(ranks[1][f"bucketed{suffix}"][net][key], value)
    per_param = ranks[0]["bucketed-per-param"]
    for key, value in ranks[0]["flat"]["D"].items():
        torch.testing.assert_close(per_param["D"][key], value, rtol=1e-5, atol=1e-7)


def test_allreduce_calls_per_step(ranks):
    """Per step: one per D bucket, one per G bucket, one for G's w_avg buffer, one finite
    flag per network; the same with
    grad_accum 2 (only the last micro-batch is reduced) and when D's REPA head has no
    gradient (its bucket is reduced with zeros, so every worker matches collectives)."""
    gen, disc = build_models(**TINY)
    n_g, n_d = len(list(gen.parameters())), len(list(disc.parameters()))
    for rank in ranks:
        assert rank["flat"]["calls"] == [5, 5] and rank["flat-accum2"]["calls"] == [5, 5]
        # the tiny model is far below 25 MB: one bucket per network, as many calls as flat
        assert rank["bucketed"]["buckets"] == (1, 1)
        assert rank["bucketed"]["calls"] == rank["bucketed-accum2"]["calls"] == [5, 5]
        per_param = rank["bucketed-per-param"]
        assert per_param["buckets"] == (n_d, n_g)
        assert per_param["calls"] == [n_d + n_g + 3] * 2
        assert per_param["reducer_calls"] == 2 * (n_d + n_g)
        assert per_param["repa_grad_none"]  # no gradient stays no gradient


def test_average_is_the_concatenated_batch_gradient(ranks):
    """Each worker's loss is the mean over its half: the average of the two gradients is
    the gradient of the mean over the whole batch in one process."""
    x, c, _ = _batch(2 * 4, seed=7)
    torch.manual_seed(0)
    _, disc = build_models(**TINY)
    disc(x.repeat(1, 4, 1, 1), c).square().mean().backward()
    for mode in ("flat", "bucketed"):
        for rank in ranks:
            grads = rank[f"grad-{mode}"]
            assert set(grads) == {n for n, p in disc.named_parameters() if p.grad is not None}
            for name, p in disc.named_parameters():
                if p.grad is not None:
                    torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6)


def test_bucket_plan_follows_ddp():
    """Reverse order, every bucket but the last at least the cap, dtypes never mixed."""
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (10, 300, 5, 5, 40)]
    params.insert(2, torch.nn.Parameter(torch.zeros(7, dtype=torch.float64)))
    buckets = plan_buckets(params, bucket_bytes=100 * 4)
    assert [i for b in buckets for i in b] == list(reversed(range(len(params))))
    assert buckets == [[5, 4, 3], [2], [1], [0]]  # 50 floats, then the float64 alone
    assert plan_buckets(params, 1) == [[i] for i in reversed(range(len(params)))]


def test_one_process_reducer_is_a_no_op():
    _, disc = build_models(**TINY)
    reducer = GradientReducer(disc, "bucketed")
    disc(torch.randn(2, 16, 8, 8), torch.tensor([0, 1])).sum().backward()
    before = [p.grad.clone() for p in disc.parameters() if p.grad is not None]
    reducer.arm()
    reducer.finish()
    after = [p.grad for p in disc.parameters() if p.grad is not None]
    assert reducer.calls == 0 and all(torch.equal(a, b) for a, b in zip(before, after))
    with pytest.raises(ValueError, match="all-reduce mode 'ring'"):
        GradientReducer(disc, "ring")


def test_divergence_on_one_rank_stops_every_rank_at_that_step(ranks):
    stops = [rank["diverged"]["stopped"] for rank in ranks]
    assert stops[0][0] == stops[1][0] == 2, stops  # the same step on both
    assert (stops[0][1], stops[1][1]) == (False, True)  # it began on rank 1
    assert "non-finite" in stops[1][2] and "of another worker" in stops[0][2]
