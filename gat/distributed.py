"""Data parallelism for the GAT step: averaging gradients over ``torch.distributed`` workers.

DDP cannot wrap G and D here (D runs several times per step, G's step freezes D, the D step
runs G without gradients), so the trainer averages gradients itself, in one of two ways:

- ``flat``: after the backward, one all-reduce of a flat copy of every gradient (simple,
  one call per network; communication does not overlap compute);
- ``bucketed``: DDP's scheme. Parameters are grouped, in reverse registration order (about
  the order the backward produces their gradients), into buckets of ``bucket_mb``; a hook
  on each parameter copies its gradient into its bucket once autograd has accumulated it,
  and a complete bucket's all-reduce starts at once (asynchronous) while the backward goes
  on. :meth:`GradientReducer.finish` waits for every bucket before the optimizer step.

Both give the same averaged gradients (the sum over workers, divided by their number).
In one process (no initialised group) both are no-ops.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

AllReduce = Literal["flat", "bucketed"]
ALLREDUCE_MODES: tuple[str, ...] = ("flat", "bucketed")
BUCKET_MB = 25.0  # DDP's default bucket_cap_mb


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_module(module: nn.Module) -> None:
    """Make every worker start from rank 0's parameters and buffers."""
    if world()[1] == 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def average_tensor(tensor: torch.Tensor) -> None:
    """Average a tensor (e.g. a running-mean buffer) over the workers, in place."""
    _, size = world()
    if size > 1:
        dist.all_reduce(tensor)
        tensor /= size


def all_workers(flag: torch.Tensor) -> torch.Tensor:
    """A boolean 0-dim tensor that is True only where it is True on every worker (one MIN
    all-reduce, no host sync): a divergence on one rank stops every rank at the same step."""
    _, size = world()
    if size == 1:
        return flag
    value = flag.float()
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value > 0


def plan_buckets(params: list[nn.Parameter], bucket_bytes: float) -> list[list[int]]:
    """Indices into ``params`` grouped into buckets, DDP's way: walking the parameters in
    reverse order, a bucket closes once it holds ``bucket_bytes`` or more, or when the next
    parameter has another dtype or device (one flat buffer per bucket). So every bucket but
    the last is at least ``bucket_bytes``, and a larger parameter gets a bucket of its own."""
    buckets: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i in reversed(range(len(params))):
        p = params[i]
        if current and (p.dtype, p.device) != (params[current[0]].dtype,
                                                params[current[0]].device):
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += p.numel() * p.element_size()
        if size >= bucket_bytes:
            buckets.append(current)
            current, size = [], 0
    if current:
        buckets.append(current)
    return buckets


class GradientReducer:
    """Averages one module's gradients over the workers before its optimizer step.

    Usage per step: :meth:`arm` just before the backward of the step's last micro-batch
    (earlier micro-batches only accumulate), then :meth:`finish` before ``optimizer.step()``.
    ``calls`` counts the all-reduces this reducer launched (tests and benchmarks read it).

    Parameters whose ``requires_grad`` is off during the armed backward (D in G's step) get
    no hook call; a bucket with such parameters is still reduced at :meth:`finish` (zeros in
    their slots, so every worker issues the same collectives), and a parameter whose
    gradient is None stays None.
    """

    def __init__(self, module: nn.Module, mode: AllReduce = "flat",
                 bucket_mb: float = BUCKET_MB):
        if mode not in ALLREDUCE_MODES:
            raise ValueError(f"all-reduce mode {mode!r}: choose one of {ALLREDUCE_MODES}")
        if bucket_mb <= 0:
            raise ValueError(f"bucket_mb {bucket_mb} must be positive")
        self.mode, self.size = mode, world()[1]
        self.params = list(module.parameters())
        self.calls = 0
        self.armed = False
        self.buckets: list[list[int]] = []
        if mode == "bucketed" and self.size > 1:
            self._build_buckets(bucket_mb * 2**20)

    # ------------------------------------------------------------------ bucketed

    def _build_buckets(self, bucket_bytes: float) -> None:
        self.buckets = plan_buckets(self.params, bucket_bytes)
        self.flats = [torch.zeros(sum(self.params[i].numel() for i in b),
                                  dtype=self.params[b[0]].dtype, device=self.params[b[0]].device)
                      for b in self.buckets]
        self.slot: dict[int, tuple[int, int]] = {}  # param index -> (bucket, offset)
        for b, indices in enumerate(self.buckets):
            offset = 0
            for i in indices:
                self.slot[i] = (b, offset)
                offset += self.params[i].numel()
        for i, p in enumerate(self.params):
            p.register_post_accumulate_grad_hook(self._hook_for(i))

    def _hook_for(self, index: int):
        def hook(param: torch.Tensor) -> None:
            if self.armed:
                self._ready(index, param.grad)
        return hook

    def _slice(self, index: int) -> torch.Tensor:
        b, offset = self.slot[index]
        return self.flats[b][offset : offset + self.params[index].numel()]

    def _ready(self, index: int, grad: torch.Tensor) -> None:
        """Autograd has accumulated this parameter's gradient: copy it into its bucket and
        launch every complete bucket, in bucket order (workers must match collectives)."""
        if index in self.have:
            raise RuntimeError(
                f"parameter {index} got its gradient twice in one reduced backward: arm the "
                "reducer only for the last backward before the optimizer step")
        self.have.add(index)
        self._slice(index).copy_(grad.detach().flatten())
        b = self.slot[index][0]
        self.missing[b] -= 1
        while self.next < len(self.buckets) and self.missing[self.next] == 0:
            self._launch(self.next)
            self.next += 1

    def _launch(self, b: int) -> None:
        self.handles.append(dist.all_reduce(self.flats[b], async_op=True))
        self.calls += 1

    # ------------------------------------------------------------------ the interface

    def arm(self) -> None:
        """The next backward is the last before the optimizer step: reduce during it."""
        if self.size == 1 or self.mode == "flat":
            return
        self.armed, self.have, self.next, self.handles = True, set(), 0, []
        self.missing = [len(b) for b in self.buckets]

    def finish(self) -> None:
        """Every gradient of the module averaged over the workers (waits for the buckets)."""
        if self.size == 1:
            return
        if self.mode == "flat":
            self._flat_all_reduce()
            return
        if not self.armed:
            raise RuntimeError("GradientReducer.finish without arm() before the backward")
        for b in range(self.next, len(self.buckets)):  # parameters that got no gradient
            for i in self.buckets[b]:
                if i not in self.have:
                    self._slice(i).zero_()
            self._launch(b)
        for handle in self.handles:
            handle.wait()
        for flat in self.flats:
            flat /= self.size
        for i in self.have:
            self.params[i].grad.copy_(self._slice(i).view_as(self.params[i]))
        self.armed = False

    def _flat_all_reduce(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        self.calls += 1
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
