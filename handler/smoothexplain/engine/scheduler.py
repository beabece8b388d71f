"""Many explain jobs → bounded chunks of model rows → one forward + backward each → per-job results.

A job is one input with its own spec, target, seed and baseline. Its rows are laid out
sample-major (sample s, then IG step k), drawn lazily so that memory stays O(chunk + jobs × input).
Jobs whose rows can share a model call (same input shape/dtype, same backward rule) are packed
into the same chunks. Each job draws its noise from its own generator in sample order, so its
answer depends neither on the chunk size nor on its batch-mates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from ..protocol.checks import check_option
from ..protocol.errors import InvalidArgument, LimitExceeded, ModelOutputError, ResourceExhausted
from ..protocol.options import MemoryFormat, option
from .aggregate import Moments
from .cam import LayerReader, layer_maps, upsample
from .cam_layers import CamLayers
from .guided import GuidedModel
from .joint import joint_alphas, joint_rows, point_attributions
from .layout import LayoutChooser, rows_in
from .methods import finish_sample
from .noise import NoiseStream, make_generator, noise_scale
from .pass_tuning import PassTuner
from .quadrature import path_points
from .spec import (
    MIN_SAMPLES_FOR_STOPPING,
    CamReshape,
    CamResolution,
    ExplainSpec,
    Method,
    NtType,
    Precision,
    check_integer,
)
from .stopping import relative_standard_error

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
    samples: int = 0  # noise samples aggregated (fewer than asked when a tolerance stopped it)
    relative_error: float | None = None  # estimated relative standard error of the mean map


@dataclass
class SchedulerStats:
    """What the last `Scheduler.run` did (read by the serving layer for metrics)."""

    chunk_rows: list[int] = field(default_factory=list)  # rows of each model call
    oom_splits: int = 0  # chunks halved after an out-of-memory error
    # Seconds spent setting the jobs up before any model call (QMC's scrambled Sobol engines
    # take seconds for a large image, whatever the number of rows)
    setup_seconds: float = 0.0

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
        self.stream = NoiseStream(x.shape, spec.noise_sampling, self.generator, x.dtype, x.device)
        self.moments = Moments(
            second_moment=spec.tolerance is not None
            or spec.nt_type in (NtType.SMOOTHGRAD_SQ, NtType.VARGRAD)
        )
        self.noisy: torch.Tensor = x
        self.baseline: torch.Tensor | None = None
        self.alphas = self.weights = torch.ones(1, dtype=torch.float64, device=x.device)
        if spec.method is Method.INTEGRATED_GRADIENTS:
            base = job.baseline if job.baseline is not None else torch.zeros_like(x)
            self.baseline = base.detach().to(x.device, x.dtype).expand_as(x)
            alphas, weights = path_points(spec.ig_rule, spec.n_steps)
            self.alphas, self.weights = alphas.to(x.device), weights.to(x.device)
        # Joint IG: every sample's path positions, drawn before any row (chunk-size invariant).
        self.joint_alphas = (
            joint_alphas(job.seed, spec.samples, spec.steps) if spec.joint_ig else None
        )
        self.layer: str | None = None  # CAMs: the layer read, resolved before any pass
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
        noise = self.stream.fill(torch.empty_like(self.x))
        return noise.mul_(self.sigma).add_(self.x)

    def draw_block(self, count: int) -> torch.Tensor:
        """`count` samples written straight into one (count, ...) tensor: the same numbers as
        `count` calls of `draw_sample`, without a stack copy."""
        block = torch.empty((count, *self.x.shape), dtype=self.x.dtype, device=self.x.device)
        if self.sigma is None:
            return block.copy_(self.x.expand_as(block))
        for row in block:
            self.stream.fill(row)
        return block.mul_(self.sigma).add_(self.x)

    def take(self, count: int) -> tuple[torch.Tensor, list[_Piece]]:
        """The next `count` rows and the pieces (per sample, or per block of samples) they form."""
        if self.baseline is None:  # one row per sample: the noisy inputs are the rows
            block = self.draw_block(count)
            self.next_row += count
            return block, [_Piece(self, block, 0, 1, count)]
        if self.joint_alphas is not None:
            return self._take_joint(count)
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

    def _take_joint(self, count: int) -> tuple[torch.Tensor, list[_Piece]]:
        """Joint IG rows: whole samples as one block piece; a sample cut by the chunk's end
        (two rows per sample only) as one-row pieces, its noise kept for the next chunk."""
        assert self.joint_alphas is not None and self.baseline is not None
        rows: list[torch.Tensor] = []
        pieces: list[_Piece] = []
        end = self.next_row + count
        while self.next_row < end:
            sample, step = divmod(self.next_row, self.steps)
            whole = (end - self.next_row) // self.steps if step == 0 else 0
            if whole:
                noisy, first, upto = self.draw_block(whole), 0, self.steps
            else:
                if step == 0:
                    self.noisy = self.draw_sample()
                noisy, whole, first = self.noisy.unsqueeze(0), 1, step
                upto = min(self.steps, step + end - self.next_row)
            alphas = self.joint_alphas[sample : sample + whole, first:upto]
            rows.append(joint_rows(self.baseline, noisy, alphas))
            size = whole * (upto - first)
            pieces.append(_Piece(self, noisy, first, upto, size, block=True))
            self.next_row += size
        return rows[0] if len(rows) == 1 else torch.cat(rows), pieces


@dataclass
class _Piece:
    """Rows of one run, contiguous within a chunk: IG steps [first_step, end_step) of one noisy
    sample, or (one row per sample) a block of `size` noisy samples stacked in `noisy`, or
    (joint IG, `block`) steps [first_step, end_step) of each of the samples stacked in `noisy`."""

    run: _Run
    noisy: torch.Tensor
    first_step: int
    end_step: int
    size: int
    block: bool = False  # joint IG: `noisy` is a (samples, ...) stack


class Scheduler:
    """Runs explain jobs through `model` in chunks of at most `chunk_rows` rows (None: no bound).

    A chunk that runs out of memory is halved and retried (down to one row), and the smaller
    size is kept for every later chunk of this scheduler. With `tune_pass_rows` the rows of
    each model call are the size (`chunk_rows` or one of its halvings) measured fastest per row
    for that kind of row (`PassTuner`); a long-lived scheduler learns it once.

    `memory_budget` (bytes) lowers the rows per call to fit; a row that alone costs more is run
    one row a call, or, with `refuse_over_budget`, refused (`LimitExceeded`, field "input")
    before any pass of the run: the budget is then what the process can afford, not a target.

    Class-activation maps run through `cam_model` (default: `model`) with their layer named
    in `layer_root` (default: `model` itself): a server reads the layers of the model as its
    user wrote it, while the input methods run a BatchNorm-folded copy.
    """

    def __init__(
        self,
        model: Model,
        chunk_rows: int | None = None,
        memory_budget: int | None = None,
        tune_pass_rows: bool = False,
        refuse_over_budget: bool = False,
        memory_format: object = "contiguous",
        cam_model: Model | None = None,
        layer_root: object = None,
    ) -> None:
        # Named as explain() names them (the server checks its config keys at load).
        if chunk_rows is not None:
            check_integer("nt_samples_batch_size", chunk_rows, 1)
        if memory_budget is not None:
            check_integer("memory_budget", memory_budget, 1)  # bytes
        self.model = model
        self._call: Model = model  # for the group being run: the model, or it under GuidedModel
        self.chunk_rows = chunk_rows
        self.memory_budget = memory_budget  # bytes of activations + rows per model call
        self.refuse_over_budget = refuse_over_budget
        self.stats = SchedulerStats()
        self.row_bytes: dict[tuple[object, ...], int] = {}  # probed cost per row, by row kind
        self._precision = Precision.FP32
        self._kind: tuple[object, ...] = ()  # the group being run, for the pass tuner
        self.tuner = PassTuner() if tune_pass_rows else None
        layout = check_option(option("memory_format"), memory_format, "memory_format")
        assert isinstance(layout, MemoryFormat)
        self.layouts = LayoutChooser(layout, model)  # per input shape; the weights follow
        self._rows_layout = MemoryFormat.CONTIGUOUS
        cam_call = cam_model if cam_model is not None else model
        self.cams = CamLayers(layer_root if layer_root is not None else cam_call, cam_call)
        self._reader: LayerReader | None = None  # the CAM group being run: its layer
        self._guided_cam: Model | None = None  # guided_grad_cam: its guided pass
        self._reshape: CamReshape | None = None  # the CAM group's token grid

    def _row_limit(self, run: _Run) -> int | None:
        """Rows per call: `chunk_rows`, lowered to fit `memory_budget` when one is set."""
        if self.memory_budget is None:
            return self.chunk_rows
        fit = max(1, self.memory_budget // self._row_cost(run))
        return fit if self.chunk_rows is None else min(fit, self.chunk_rows)

    def _admit(self, run: _Run) -> None:
        """With `refuse_over_budget`: refuse a row kind one row of which exceeds the budget,
        judged by the row's own tensors before anything is probed, then by the probed cost."""
        if self.memory_budget is None or not self.refuse_over_budget:
            return
        cost = _row_tensor_bytes(run)
        if cost <= self.memory_budget:
            cost = self._row_cost(run)
        if cost > self.memory_budget:
            raise LimitExceeded(
                f"input of shape {tuple(run.x.shape)} needs about {_mib(cost)} MiB a model row, "
                f"above this worker's memory budget of {_mib(self.memory_budget)} MiB a model "
                "call; send a smaller input",
                field="input",
            )

    def _row_cost(self, run: _Run) -> int:
        """Bytes one more row costs in a model call, probed once per row kind and cached.

        Counts the tensors autograd saves for backward in a 1-row and a 2-row forward (weights
        cancel in the difference), plus the row, its gradient and its noise.
        """
        key = _group_key(run)  # shape, dtype, device, backward rule, precision
        if key not in self.row_bytes:
            saved = [_saved_bytes(self, run, count) for count in (1, 2)]
            self.row_bytes[key] = max(saved[1] - saved[0], 0) + _row_tensor_bytes(run)
        return self.row_bytes[key]

    def run(self, jobs: Sequence[ExplainJob]) -> list[JobResult]:
        self.stats = SchedulerStats()
        started = time.perf_counter()
        runs = [_Run(job) for job in jobs]
        for run in runs:  # an unusable layer is refused before any pass
            if run.spec.cam:
                run.layer = self.cams.resolve(run.spec, run.x)
                _check_cam_input(run)
        self.stats.setup_seconds = time.perf_counter() - started
        # Built first: a model guided backprop cannot serve is refused before any pass.
        guided = GuidedModel(self.model) if any(_guided(run) for run in runs) else None
        guided_cam = any(r.spec.method is Method.GUIDED_GRAD_CAM for r in runs)
        self._guided_cam = GuidedModel(self.cams.model) if guided_cam else None
        groups = _groups(runs)
        for group in groups:  # a row kind over the budget is refused before any pass
            self._enter(group, guided)
            self._admit(group[0])
        for group in groups:
            self._enter(group, guided)
            for pieces, rows in self._chunks(group):
                self._process(pieces, rows)
        return [_result(run) for run in runs]

    def _enter(self, group: list[_Run], guided: GuidedModel | None) -> None:
        """Make `group` the one being run: its model (guided or not), precision, kind and
        memory layout."""
        self._call = guided if guided is not None and _guided(group[0]) else self.model
        layer = group[0].layer
        self._reader = None if layer is None else self.cams.reader(layer)
        if self._reader is not None:
            self._call, self._reshape = self._reader, group[0].spec.cam_reshape
        self._precision = group[0].spec.precision
        self._kind = _group_key(group[0])
        self._rows_layout = self.layouts.layout(group[0].x, self._probe)
        self.layouts.apply(self._rows_layout)

    def choose_layout(self, x: torch.Tensor) -> MemoryFormat:
        """The layout rows shaped like `x` will run in (measured now under `auto`, so that a
        server pays the probe at start-up rather than in its first request)."""
        self._call, self._precision = self.model, Precision.FP32
        layout = self.layouts.layout(x, self._probe)
        self.layouts.apply(layout)
        return layout

    def _probe(self, rows: torch.Tensor) -> None:
        """One timed pass for the layout choice: forward + backward to the rows."""
        leaf = rows.requires_grad_(True)
        with _autocast(self._precision, leaf.device):
            out = self._call(leaf)
        torch.autograd.grad(out.float().sum(), leaf)

    def _chunks(self, group: list[_Run]) -> Iterator[tuple[list[_Piece], torch.Tensor]]:
        total = sum(run.total_rows for run in group)
        pending = iter(group)
        current = next(pending, None)
        while current is not None:
            rows: list[torch.Tensor] = []
            pieces: list[_Piece] = []
            space = self._row_limit(current) or total  # per chunk: an OOM split may shrink it
            while space and current is not None:
                if current.remaining:  # 0 when adaptive stopping ended it early
                    block, taken = current.take(min(space, current.remaining))
                    rows.append(block)
                    pieces.extend(taken)
                    space -= block.shape[0]
                if current.remaining == 0:
                    current = next(pending, None)
            if rows:
                yield pieces, rows[0] if len(rows) == 1 else torch.cat(rows)

    def _process(self, pieces: list[_Piece], rows: torch.Tensor) -> None:
        targets = torch.tensor(
            [p.run.job.target for p in pieces for _ in range(p.size)], device=rows.device
        )
        methods = [p.run.spec.method for p in pieces for _ in range(p.size)]
        grads = self._gradients(rows, targets, methods)
        offset = 0
        for piece in pieces:
            _accumulate(piece, grads[offset : offset + piece.size])
            offset += piece.size
        _stop_converged({id(p.run): p.run for p in pieces}.values())
        self._endpoints([p for p in pieces if p.run.spec.return_convergence_delta])

    def _gradients(
        self, rows: torch.Tensor, targets: torch.Tensor, methods: list[Method]
    ) -> torch.Tensor:
        """∂F_target/∂row for every row (CAMs: each row's map), in model calls of at most
        `chunk_rows` rows."""
        parts: list[torch.Tensor] = []
        start, count = 0, rows.shape[0]
        while start < count:
            size = min(self._call_rows(count - start), count - start)
            began = time.perf_counter()
            part = slice(start, start + size)
            grads = self._try_gradients(rows[part], targets[part], methods[part])
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
            if self.tuner is not None:
                if grads.is_cuda:
                    torch.cuda.synchronize(grads.device)
                self.tuner.record(self._kind, size, time.perf_counter() - began)
            parts.append(grads)
            self.stats.chunk_rows.append(size)
            start += size
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _call_rows(self, rows_left: int) -> int:
        """Rows for the next model call: `chunk_rows`, or the tuner's pick below it."""
        if self.chunk_rows is None:
            return rows_left
        if self.tuner is None:
            return self.chunk_rows
        return self.tuner.choose(self._kind, self.chunk_rows, rows_left)

    def _try_gradients(
        self, rows: torch.Tensor, targets: torch.Tensor, methods: list[Method]
    ) -> torch.Tensor | None:
        try:
            # The pieces keep the plain rows; the model sees them in the group's layout.
            leaf = rows_in(self._rows_layout, rows.detach())
            guided = self._guided_cam is not None and methods[0] is Method.GUIDED_GRAD_CAM
            if self._reader is None or guided:  # a CAM alone needs no graph below its layer
                leaf.requires_grad_(True)
            if self._reader is not None:
                return self._cam_maps(leaf, targets, methods, self._reader)
            with _autocast(self._precision, leaf.device):
                scores = self._scores(leaf, targets)
            (grads,) = torch.autograd.grad(scores.float().sum(), leaf)
        except torch.OutOfMemoryError:
            return None  # the caller retries once this frame (and its tensors) is gone
        return grads

    def _cam_maps(
        self, leaf: torch.Tensor, targets: torch.Tensor, methods: list[Method], reader: LayerReader
    ) -> torch.Tensor:
        """Each row's layer map (rows, 1, h, w); guided_grad_cam: guided backprop times the
        upsampled Grad-CAM, shaped like the rows (a second, guided pass)."""
        with _autocast(self._precision, leaf.device):
            scores = self._scores(leaf, targets)
        activation = reader.activation
        assert activation is not None
        reader.activation = None
        (gradient,) = torch.autograd.grad(scores.float().sum(), activation)
        maps = layer_maps(methods, activation.detach(), gradient, self._reshape)
        if self._guided_cam is None or methods[0] is not Method.GUIDED_GRAD_CAM:
            return maps
        with _autocast(self._precision, leaf.device):
            guided_scores = self._scores(leaf, targets, self._guided_cam)
        (guided,) = torch.autograd.grad(guided_scores.float().sum(), leaf)
        return guided.float() * upsample(maps, leaf.shape[-2:])

    def _scores(
        self, rows: torch.Tensor, targets: torch.Tensor, call: Model | None = None
    ) -> torch.Tensor:
        out = (call or self._call)(rows)
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
            ends = torch.cat([p.noisy if p.block else p.noisy.unsqueeze(0) for p in finished])
            owners = [p.run for p in finished for _ in range(p.noisy.shape[0] if p.block else 1)]
            targets = torch.tensor([run.job.target for run in owners], device=ends.device)
            scores = self._scores(ends, targets)
            for run, score in zip(owners, scores.tolist(), strict=True):
                run.endpoint_total += score
                if run.baseline_score is None and run.baseline is not None:
                    base_target = torch.tensor([run.job.target], device=ends.device)
                    base_scores = self._scores(run.baseline.unsqueeze(0), base_target)
                    run.baseline_score = float(base_scores[0])


def _stop_converged(runs: Iterable[_Run]) -> None:
    """Adaptive stopping, checked after every chunk at sample boundaries: a job whose mean has
    reached its relative-standard-error tolerance draws no more samples."""
    for run in runs:
        tolerance = run.spec.tolerance
        if tolerance is None or run.remaining == 0 or run.next_row % run.steps:
            continue
        if run.moments.count < MIN_SAMPLES_FOR_STOPPING:
            continue
        error = relative_standard_error(run.moments)
        if error is not None and error <= tolerance:
            run.total_rows = run.next_row


def _guided(run: _Run) -> bool:
    return run.spec.method is Method.GUIDED_BACKPROP


def _check_cam_input(run: _Run) -> None:
    """A CAM at input resolution (and guided_grad_cam) needs an image input (C, H, W)."""
    at_input = run.spec.cam_resolution is CamResolution.INPUT
    if (at_input or run.spec.method is Method.GUIDED_GRAD_CAM) and run.x.dim() != 3:
        raise InvalidArgument(
            f"a class-activation map upsampled to the input needs inputs of shape (N, C, H, W), "
            f"got an input of shape {tuple(run.x.shape)}; ask for cam_resolution='layer'",
            field="cam_resolution",
        )


def _group_key(run: _Run) -> tuple[object, ...]:
    """Rows of one key share model calls: the same row shape, dtype, device, backward rule
    (CAMs: the layer and its reshape; guided_grad_cam's second pass) and precision."""
    return (
        tuple(run.x.shape),
        run.x.dtype,
        run.x.device,
        _guided(run),
        run.spec.precision,
        run.layer,
        run.spec.cam_reshape if run.layer is not None else None,
        run.spec.method is Method.GUIDED_GRAD_CAM,
    )


def _groups(runs: list[_Run]) -> list[list[_Run]]:
    """Runs that may share a model call (`_group_key`)."""
    groups: dict[tuple[object, ...], list[_Run]] = {}
    for run in runs:
        groups.setdefault(_group_key(run), []).append(run)
    return list(groups.values())


def _autocast(precision: Precision, device: torch.device) -> AbstractContextManager[object]:
    if precision is Precision.FP32:
        return nullcontext()
    dtype = torch.bfloat16 if precision is Precision.BF16 else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _row_tensor_bytes(run: _Run) -> int:
    """What a model row costs besides the model's activations: the row, its gradient and its
    noise, with room to spare (four row sizes)."""
    return 4 * run.x.numel() * run.x.element_size()


def _mib(count: int) -> int:
    return -(-count // 2**20)  # rounded up: a small budget does not read as 0 MiB


def _saved_bytes(scheduler: Scheduler, run: _Run, count: int) -> int:
    """Bytes autograd would keep for backward in a forward over `count` copies of the run's
    input. Counted, not kept (no backward follows): the probe costs a forward without grad,
    so probing an input too big for the budget does not itself exhaust memory."""
    total = 0

    def pack(tensor: torch.Tensor) -> int:
        nonlocal total
        size = tensor.numel() * tensor.element_size()
        total += size
        return size

    def unpack(_size: int) -> torch.Tensor:
        raise AssertionError("the memory probe never runs backward")

    rows = run.x.detach().expand(count, *run.x.shape).clone().requires_grad_(True)
    targets = torch.zeros(count, dtype=torch.long, device=rows.device)
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, unpack),
        _autocast(run.spec.precision, rows.device),
    ):
        scheduler._scores(rows, targets)
    return total


def _accumulate(piece: _Piece, grads: torch.Tensor) -> None:
    run = piece.run
    if run.baseline is None:  # one row per sample: the rows are the samples
        run.moments.add(finish_sample(run.spec.method, grads, piece.noisy, None))
        return
    if piece.block:
        _accumulate_joint(piece, grads)
        return
    # The few path points of a piece are summed in the gradients' precision (one matrix
    # product, no float64 copy of every row); pieces and samples add up in float64.
    w = run.weights[piece.first_step : piece.end_step].to(grads.dtype)
    partial = torch.tensordot(w, grads, dims=1).to(torch.float64)
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


def _accumulate_joint(piece: _Piece, grads: torch.Tensor) -> None:
    """One-point IG estimates into the moments: singles, or (a, b) pairs per sample (a pair
    cut by a chunk's end waits in `path_sum` for its second row)."""
    run = piece.run
    assert run.baseline is not None
    points = point_attributions(grads, piece.noisy, run.baseline)  # (samples, rows each, ...)
    if run.steps == 1:
        done = points[:, 0]
        run.moments.add(done)
    elif piece.end_step - piece.first_step == 2:
        done = points.mean(dim=1)
        run.moments.add_pairs(points[:, 0], points[:, 1])
    elif piece.first_step == 0:
        run.path_sum = points[0, 0]
        return
    else:
        assert run.path_sum is not None
        first, run.path_sum = run.path_sum.unsqueeze(0), None
        done = (first + points[:, 0]) / 2
        run.moments.add_pairs(first, points[:, 0])
    if run.spec.return_convergence_delta:  # per sample, in order: chunk-size invariant
        for total in done.flatten(1).sum(dim=1).tolist():
            run.attr_total += total


def _result(run: _Run) -> JobResult:
    attribution = run.moments.result(run.spec.nt_type).to(torch.float32)
    spec = run.spec
    layer_map = spec.cam and spec.method is not Method.GUIDED_GRAD_CAM
    if layer_map and spec.cam_resolution is CamResolution.INPUT:
        # Aggregated at the layer (NoiseTunnel over a layer CAM), then upsampled once.
        attribution = upsample(attribution.unsqueeze(0), run.x.shape[-2:])[0]
    delta: float | None = None
    if run.spec.return_convergence_delta:
        samples = run.moments.count
        base = run.baseline_score if run.baseline_score is not None else 0.0
        delta = (run.attr_total - run.endpoint_total) / samples + base
    return JobResult(
        attribution=attribution,
        convergence_delta=delta,
        rows=run.total_rows,
        samples=run.moments.count,
        relative_error=relative_standard_error(run.moments),
    )
