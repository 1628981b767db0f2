"""The training-time FD proxy split among workers: 2 real gloo processes give the value one
process gets, each drawing and decoding only its share of the samples."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.layout import Layout

SAMPLES = 101  # odd: the two shares differ in size; above the classifier's 32 features


@pytest.fixture(scope="module")
def layout(parts, tmp_path_factory) -> Layout:
    """A checkout with what the proxy reads: tokenizer, classifier, reference statistics."""
    from pipeline.fidelity import evaluator, reference_path, reference_statistics, save_reference
    from tests.eval_helpers import checkout_with_parts, synthetic_images

    layout = checkout_with_parts(parts, tmp_path_factory.mktemp("proxy"))
    ev = evaluator("train", str(layout.classifier))
    save_reference(reference_statistics(ev, [synthetic_images(128)[0]]), reference_path(layout))
    return layout


def _proxy(generator: Path, layout: Layout, rank: int, world: int, samples: int = SAMPLES
           ) -> float:
    from gat.io import load_generator
    from pipeline.evaluation import generator_fd
    from pipeline.pretrained.tokenizer import load_tokenizer

    gen, meta = load_generator(generator)
    tokenizer = load_tokenizer(meta["tokenizer"], "cpu", meta["scale_factor"], layout)
    return generator_fd(gen, tokenizer, samples, layout, rank, world)


def _worker(rank: int, world: int, generator: Path, layout: Layout, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank,
                            world_size=world)
    try:
        (out / f"fd_rank{rank}.json").write_text(json.dumps(
            _proxy(generator, layout, rank, world)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes that import torch, diffusers, torch-fidelity
def test_two_gloo_workers_give_the_one_process_proxy(parts, layout, tmp_path):
    alone = _proxy(parts["generator"], layout, 0, 1)
    mp.spawn(_worker, args=(2, parts["generator"], layout, tmp_path), nprocs=2, join=True)
    values = [json.loads((tmp_path / f"fd_rank{r}.json").read_text()) for r in (0, 1)]
    assert values[0] == values[1], "every worker returns the same value"
    assert values[0] == pytest.approx(alone, rel=1e-6)
    # Not a constant: one worker's share alone gives another value.
    half = _proxy(parts["generator"], layout, 0, 1, samples=SAMPLES // 2)
    assert half != pytest.approx(alone, rel=1e-3)


def test_a_run_with_the_proxy_but_no_reference_is_refused_before_any_work(tmp_path):
    from pipeline.training.driver import check_proxy
    from pipeline.training.job import make_job
    from tests.helpers import synthetic_root, tiny_params

    layout = Layout(*(2 * [synthetic_root(tmp_path / "root")]))
    params = tiny_params(tmp_path, "sqlite:///unused.db", fd_every=4)
    with pytest.raises(FileNotFoundError, match=r"reference/stats.npz: missing, and "
                       r"runtime.fd_every is 4 .*dvc repro reference"):
        check_proxy(make_job(params, "GAT-T1/4", 0, layout))
    check_proxy(make_job(dataclasses.replace(
        params, runtime=dataclasses.replace(params.runtime, fd_every=0)), "GAT-T1/4", 0, layout))
