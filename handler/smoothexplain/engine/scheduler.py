"""Many explain jobs → bounded chunks of model rows → one forward + backward each → per-job results.

A job is one input with its own spec, target, seed and baseline. Its rows are laid out
sample-major (sample s, then IG step k), drawn lazily so that memory stays O(chunk + jobs × input).
Jobs whose rows can share a model call (same input shape/dtype, same backward rule) are packed
into the same chunks. Each job draws its noise from its own generator in sample order, so its
answer depends neither on the chunk size nor on its batch-mates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import InvalidArgument, ModelOutputError, ResourceExhausted
from ..spec import ExplainSpec, Method, NtType
from .aggregate import Moments
from .methods import finish_sample, guided_relus
from .noise import make_generator, noise_scale
from .quadrature import path_points

__all__ = ["ExplainJob", "JobResult", "Scheduler", "SchedulerStats"]

Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ExplainJob:
    """One input (no batch dimension) to explain for `target` under `spec`."""

    inputs: torch.Tensor
    target: int
    spec: ExplainSpec
    seed: int
    baseline: torch.Tensor | None = None


@dataclass(frozen=True)
class JobResult:
    attribution: torch.Tensor  # float32, shape of the job's input
    convergence_delta: float | None  # mean over samples, IG with return_convergence_delta only
    rows: int  # model rows spent on this job


@dataclass
class SchedulerStats:
    """What the last `Scheduler.run` did (read by the serving layer for metrics)."""

    chunk_rows: list[int] = field(default_factory=list)  # rows of each model call
    oom_splits: int = 0  # chunks halved after an out-of-memory error

    @property
    def rows(self) -> int:
        return sum(self.chunk_rows)


class _Run:
    """Mutable progress of one job: which row comes next, and what has been accumulated."""

    def __init__(self, job: ExplainJob) -> None:
        spec = job.spec
        x = job.inputs.detach()
        self.job, self.spec, self.x = job, spec, x
        self.steps, self.total_rows, self.next_row = spec.steps, spec.rows, 0
        self.sigma = noise_scale(x, spec)
        self.generator = make_generator(job.seed, x.device)
        self.moments = Moments(second_moment=spec.nt_type in (NtType.SMOOTHGRAD_SQ, NtType.VARGRAD))
        self.noisy: torch.Tensor = x
        self.baseline: torch.Tensor | None = None
        self.alphas = self.weights = torch.ones(1, dtype=torch.float64, device=x.device)
        if spec.method is Method.INTEGRATED_GRADIENTS:
            base = job.baseline if job.baseline is not None else torch.zeros_like(x)
            self.baseline = base.detach().to(x.device, x.dtype).expand_as(x)
            alphas, weights = path_points(spec.ig_rule, spec.n_steps)
            self.alphas, self.weights = alphas.to(x.device), weights.to(x.device)
        self.path_sum: torch.Tensor | None = None  # Σₖ wₖ·grad for the sample in progress
        self.attr_total = 0.0  # Σ over samples of Σᵢ attrᵢ (convergence delta)
        self.endpoint_total = 0.0  # Σ over samples of F(x̃)
        self.baseline_score: float | None = None

    @property
    def remaining(self) -> int:
        return self.total_rows - self.next_row

    def draw_sample(self) -> torch.Tensor:
        if self.sigma is None:
            return self.x
        noise = torch.randn(
            self.x.shape, generator=self.generator, dtype=self.x.dtype, device=self.x.device
        )
        return noise.mul_(self.sigma).add_(self.x)

    def draw_block(self, count: int) -> torch.Tensor:
        """`count` samples written straight into one (count, ...) tensor: the same numbers as
        `count` calls of `draw_sample`, without a stack copy."""
        block = torch.empty((count, *self.x.shape), dtype=self.x.dtype, device=self.x.device)
        if self.sigma is None:
            return block.copy_(self.x.expand_as(block))
        for row in block:
            torch.randn(
                self.x.shape,
                generator=self.generator,
                dtype=self.x.dtype,
                device=self.x.device,
                out=row,
            )
        return block.mul_(self.sigma).add_(self.x)

    def take(self, count: int) -> tuple[torch.Tensor, list[_Piece]]:
        """The next `count` rows and the pieces (per sample, or per block of samples) they form."""
        if self.baseline is None:  # one row per sample: the noisy inputs are the rows
            block = self.draw_block(count)
            self.next_row += count
            return block, [_Piece(self, block, 0, 1, count)]
        rows: list[torch.Tensor] = []
        pieces: list[_Piece] = []
        end = self.next_row + count
        while self.next_row < end:
            step = self.next_row % self.steps
            if step == 0:
                self.noisy = self.draw_sample()
            upto = min(self.steps, step + end - self.next_row)
            a = self.alphas[step:upto].to(self.x.dtype).view(-1, *([1] * self.x.dim()))
            rows.append(self.baseline + a * (self.noisy - self.baseline))
            pieces.append(_Piece(self, self.noisy, step, upto, upto - step))
            self.next_row += upto - step
        return torch.cat(rows), pieces


@dataclass
class _Piece:
    """Rows of one run, contiguous within a chunk: IG steps [first_step, end_step) of one noisy
    sample, or (one row per sample) a block of `size` noisy samples stacked in `noisy`."""

    run: _Run
    noisy: torch.Tensor
    first_step: int
    end_step: int
    size: int


class Scheduler:
    """Runs explain jobs through `model` in chunks of at most `chunk_rows` rows (None: no bound).

    A chunk that runs out of memory is halved and retried (down to one row), and the smaller
    size is kept for every later chunk of this scheduler.
    """

    def __init__(self, model: Model, chunk_rows: int | None = None) -> None:
        if chunk_rows is not None and (isinstance(chunk_rows, bool) or chunk_rows < 1):
            raise InvalidArgument(
                f"nt_samples_batch_size must be >= 1, got {chunk_rows}",
                field="nt_samples_batch_size",
            )
        self.model = model
        self.chunk_rows = chunk_rows
        self.stats = SchedulerStats()

    def run(self, jobs: Sequence[ExplainJob]) -> list[JobResult]:
        self.stats = SchedulerStats()
        runs = [_Run(job) for job in jobs]
        for group in _groups(runs):
            guided = group[0].spec.method is Method.GUIDED_BACKPROP
            gate = (
                guided_relus(self.model)
                if guided and isinstance(self.model, nn.Module)
                else nullcontext()
            )
            with gate:
                for pieces, rows in self._chunks(group):
                    self._process(pieces, rows)
        return [_result(run) for run in runs]

    def _chunks(self, group: list[_Run]) -> Iterator[tuple[list[_Piece], torch.Tensor]]:
        total = sum(run.total_rows for run in group)
        pending = iter(group)
        current = next(pending, None)
        while current is not None:
            rows: list[torch.Tensor] = []
            pieces: list[_Piece] = []
            space = self.chunk_rows or total  # read per chunk: an OOM split may shrink it
            while space and current is not None:
                block, taken = current.take(min(space, current.remaining))
                rows.append(block)
                pieces.extend(taken)
                space -= block.shape[0]
                if current.remaining == 0:
                    current = next(pending, None)
            yield pieces, rows[0] if len(rows) == 1 else torch.cat(rows)

    def _process(self, pieces: list[_Piece], rows: torch.Tensor) -> None:
        targets = torch.tensor(
            [p.run.job.target for p in pieces for _ in range(p.size)], device=rows.device
        )
        grads = self._gradients(rows, targets)
        offset = 0
        for piece in pieces:
            _accumulate(piece, grads[offset : offset + piece.size])
            offset += piece.size
        self._endpoints([p for p in pieces if p.run.spec.return_convergence_delta])

    def _gradients(self, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """∂F_target/∂row for every row, in model calls of at most `chunk_rows` rows."""
        parts: list[torch.Tensor] = []
        start, count = 0, rows.shape[0]
        while start < count:
            size = min(self.chunk_rows or count, count - start)
            grads = self._try_gradients(rows[start : start + size], targets[start : start + size])
            if grads is None:  # out of memory: halve, remember, retry the same rows
                if size == 1:
                    raise ResourceExhausted(
                        "out of memory on a single row; the input is too large for this device"
                    )
                self.chunk_rows = (size + 1) // 2
                self.stats.oom_splits += 1
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            parts.append(grads)
            self.stats.chunk_rows.append(size)
            start += size
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _try_gradients(self, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        try:
            leaf = rows.detach().requires_grad_(True)  # the pieces keep the plain rows
            (grads,) = torch.autograd.grad(self._scores(leaf, targets).sum(), leaf)
        except torch.OutOfMemoryError:
            return None  # the caller retries once this frame (and its tensors) is gone
        return grads

    def _scores(self, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = self.model(rows)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != rows.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelOutputError(
                f"model must return scores of shape (rows, classes) = ({rows.shape[0]}, C), "
                f"got {shape}"
            )
        bad = targets >= out.shape[1]
        if bool(bad.any()):
            raise InvalidArgument(
                f"target must be in [0, {out.shape[1] - 1}], got {int(targets[bad][0])}",
                field="target",
            )
        return out.gather(1, targets.view(-1, 1)).squeeze(1)

    def _endpoints(self, pieces: list[_Piece]) -> None:
        """F(x̃) of each sample finished here and F(x') once per job, for the convergence delta."""
        finished = [p for p in pieces if p.end_step == p.run.steps]
        if not finished:
            return
        with torch.no_grad():
            ends = torch.stack([p.noisy for p in finished])
            targets = torch.tensor([p.run.job.target for p in finished], device=ends.device)
            scores = self._scores(ends, targets)
            for piece, score in zip(finished, scores.tolist(), strict=True):
                piece.run.endpoint_total += score
                run = piece.run
                if run.baseline_score is None and run.baseline is not None:
                    base_target = torch.tensor([run.job.target], device=ends.device)
                    base_scores = self._scores(run.baseline.unsqueeze(0), base_target)
                    run.baseline_score = float(base_scores[0])


def _groups(runs: list[_Run]) -> list[list[_Run]]:
    """Runs that may share a model call: same row shape, dtype, device and backward rule."""
    groups: dict[tuple[object, ...], list[_Run]] = {}
    for run in runs:
        key = (
            tuple(run.x.shape),
            run.x.dtype,
            run.x.device,
            run.spec.method is Method.GUIDED_BACKPROP,
        )
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def _accumulate(piece: _Piece, grads: torch.Tensor) -> None:
    run = piece.run
    if run.baseline is None:  # one row per sample: the rows are the samples
        run.moments.add(finish_sample(run.spec.method, grads, piece.noisy, None))
        return
    w = run.weights[piece.first_step : piece.end_step].view(-1, *([1] * run.x.dim()))
    partial = (grads.to(torch.float64) * w).sum(dim=0)
    run.path_sum = (
        partial if piece.first_step == 0 or run.path_sum is None else run.path_sum + partial
    )
    if piece.end_step == run.steps:
        attribution = finish_sample(
            run.spec.method,
            run.path_sum,
            piece.noisy.to(torch.float64),
            run.baseline.to(torch.float64),
        )
        run.moments.add(attribution.unsqueeze(0))
        run.attr_total += float(attribution.sum())
        run.path_sum = None


def _result(run: _Run) -> JobResult:
    attribution = run.moments.result(run.spec.nt_type).to(torch.float32)
    delta: float | None = None
    if run.spec.return_convergence_delta:
        samples = run.spec.samples
        base = run.baseline_score if run.baseline_score is not None else 0.0
        delta = (run.attr_total - run.endpoint_total) / samples + base
    return JobResult(attribution=attribution, convergence_delta=delta, rows=run.total_rows)
