"""The data plane: one TorchServe batch of raw requests in, one answer per request out.

Free of TorchServe imports, so it is tested directly and can sit behind any server. A request
that fails (bad field, bad image, target out of range, a crash in its own explanation) gets its
own error answer; its batch-mates are still answered.

`ExplainService` runs the steps in order: decode (decode.py), predict, plan and admit the
explanations (admission.py, deadline.py), explain, encode (encode.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import torch
from torch import nn

from .._proto.smoothexplain.v1 import explain_pb2 as pb
from ..engine import ExplainJob, JobResult, Scheduler, SchedulerStats, guided_refusal
from ..engine.cpu import cpu_support, slow_precision_reason
from ..engine.layout import rows_in
from ..engine.spec import ExplainSpec, Method, Precision
from ..protocol.errors import (
    InternalError,
    InvalidArgument,
    LimitExceeded,
    ModelOutputError,
    Overloaded,
    ResourceExhausted,
    SmoothExplainError,
)
from .admission import CostModel, admit_cheapest_first
from .budget import Budgeted
from .codec import encode_response
from .config import ServingConfig
from .deadline import (
    batch_seconds,
    client_deadline,
    cost_bound,
    expired,
    stop_at,
    time_for,
    too_late,
)
from .decode import Decoded, Incoming, decode, parse, seeded
from .encode import Outgoing, explanation, failed, not_finite, too_big
from .memory import serving_memory_budget
from .metrics import ServiceMetrics
from .models import SelectOutput

__all__ = ["ExplainService", "Incoming", "Outgoing"]

log = logging.getLogger(__name__)

# Engine arguments that are request options under another name (e.g. guided backprop refused).
_ENGINE_FIELDS = {
    "method": "options.method",
    "layer": "options.layer",
    "cam_resolution": "options.cam_resolution",
}


@dataclass(eq=False)
class _Work:
    """One request's answer in the making."""

    incoming: Incoming
    response: pb.Response = field(default_factory=pb.Response)
    request: pb.Request | None = None  # once its payload parsed (metrics labels)
    decoded: Decoded | None = None  # once its input and options were read
    error: SmoothExplainError | None = None
    started: float = field(default_factory=time.perf_counter)  # its decode starts now

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(eq=False)
class _Task:
    """A decoded request on its way through prediction and explanation."""

    work: _Work
    decoded: Decoded
    job: ExplainJob | None = None  # its explanation, once planned
    cost: float | None = None  # estimated seconds of that explanation (admission.py)


class ExplainService:
    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        config: ServingConfig,
        labels: dict[int, str],
        device: torch.device,
        model_name: str = "",
        metrics: ServiceMetrics | None = None,
        response_timeout: float | None = None,  # TorchServe's, seconds: explanations stop in time
        layers: nn.Module | None = None,  # the unfolded model, for CAMs (models.Served)
    ) -> None:
        slow = slow_precision_reason(Precision(str(config.defaults["precision"])), device)
        if slow:  # the model's own default: refused at load, not on every request
            raise InvalidArgument(f"defaults.{slow}", field="defaults.precision")
        log.info("%s", cpu_support().describe() if device.type == "cpu" else device)
        self.model, self.config, self.labels = model, config, labels
        self.device, self.model_name, self.metrics = device, model_name, metrics
        self.response_timeout = response_timeout
        low, high = config.preprocess.bounds()
        self.bounds = (torch.tensor(low).view(-1, 1, 1), torch.tensor(high).view(-1, 1, 1))
        memory_budget, hard = serving_memory_budget(
            config.memory_budget_mb, config.auto_memory_budget, device
        )
        self.budget = Budgeted(model)  # the engine's model calls stop once the time is up
        self.guided_refusal = guided_refusal(model)  # TorchScript: known before any request
        # CAMs read the model as the archive defines it (see models.Served), under a budget
        # of their own that starts and stops with the other.
        root: object = model.inner if isinstance(model, SelectOutput) else model
        self.cam_budget = self.budget
        if layers is not None:
            root = layers  # layer names as the user's model has them
            self.cam_budget = Budgeted(
                SelectOutput(layers, config.output) if config.output else layers
            )
        self.scheduler = Scheduler(
            self.budget,
            config.nt_samples_batch_size,
            memory_budget,
            tune_pass_rows=config.tune_pass_rows,
            refuse_over_budget=hard,
            memory_format=config.memory_format,
            cam_model=self.cam_budget,
            layer_root=root,
        )
        self._default_layer: tuple[str | None] | None = None  # found on first use
        self.costs = CostModel()  # seconds per row-feature, for admission by cost
        self._reprobed: set[int] = set()  # input sizes probed again before a refusal

    @property
    def default_layer(self) -> str | None:
        """The CAM layer a request that names none reads, found once by a forward on an input
        of the served shape (the worker asks at load, after `probe_cost`); None where no CAM
        applies (requests are then told why)."""
        if self._default_layer is None:
            self._default_layer = (self._find_default_layer(),)
        return self._default_layer[0]

    def _find_default_layer(self) -> str | None:
        cams = self.scheduler.cams
        if cams.refusal is not None:
            return None
        pre = self.config.preprocess
        row = torch.zeros(pre.channels, pre.size, pre.size, device=self.device)
        try:
            layer = cams.census(row).default()
        except Exception:  # a model that cannot take the served shape: its requests say so
            log.exception("no class-activation layer found")
            return None
        log.info("class-activation maps read layer %s by default", layer)
        return layer

    def probe_cost(self, rows: int = 2, shape: Sequence[int] | None = None) -> None:
        """Seed the cost model with two timed forward + backward calls on an input of `shape`
        (default: the preprocessed image's), so that the first explanations after start-up
        are judged too (the adapter calls it once the model is loaded; without it costs are
        learned from runs only). Probing again keeps the lower figure."""
        pre = self.config.preprocess
        one = tuple(shape) if shape is not None else (pre.channels, pre.size, pre.size)
        x = torch.zeros(rows, *one, device=self.device)
        best = math.inf
        try:
            layout = self.scheduler.choose_layout(x[0])  # `auto` measures it here, once
            log.info("memory layout %s for inputs of shape %s", layout.value, one)
            x = rows_in(layout, x)
            for _ in range(2):
                started = time.perf_counter()
                leaf = x.clone().requires_grad_(True)
                torch.autograd.grad(self.model(leaf).amax(dim=1).sum(), leaf)
                best = min(best, time.perf_counter() - started)
        except Exception as error:  # a model for other input shapes: learn from runs only
            log.info(
                "no start-up cost probe (%s); costs are learned from runs", type(error).__name__
            )
            return
        self.costs.observe(rows, x[0].numel(), best, "fp32", probe=True)

    def handle(self, batch: Sequence[Incoming]) -> list[Outgoing]:
        """One answer per request, always: a failure outside every per-request guard fails
        the requests still pending with INTERNAL, never the call (TorchServe would answer the
        whole batch 503 and our metrics would not see it)."""
        if self.metrics is not None:
            self.metrics.batch_started()
        works = [_Work(incoming) for incoming in batch]
        explained: list[_Work] = []
        explain_seconds = 0.0
        try:
            explained, explain_seconds = self._serve(works)
        except Exception:
            log.exception("batch failed outside the per-request guards")
            for work in works:
                if work.ok:
                    work.error = InternalError("internal error while serving this batch")
        answers = [self._answer(w) for w in works]
        if self.metrics is not None:
            self._observe(self.metrics, works, answers, explained, explain_seconds)
        return answers

    def _serve(self, works: list[_Work]) -> tuple[list[_Work], float]:
        """Decode, predict and explain `works` in place: the ones explained, and the seconds
        their explanation took."""
        batch_started = time.monotonic()
        for work in works:
            self._guard(work, partial(self._decode, work))
        tasks = [_Task(w, w.decoded) for w in works if w.ok and w.decoded is not None]
        started = time.perf_counter()
        _expire(tasks)
        self._predict([t for t in tasks if t.work.ok])
        predict_ms = 1000 * (time.perf_counter() - started)
        started = time.perf_counter()
        _expire(tasks)
        planned: list[_Task] = []
        for task in tasks:
            if task.work.ok and (spec := task.decoded.spec) is not None:
                self._guard(task.work, partial(self._plan, task, spec))
                planned.append(task)
        explained = self._admit([t for t in planned if t.work.ok], batch_started)
        requests = [t.decoded.request for t in explained]
        stop = stop_at(requests, batch_started, self.response_timeout)
        self.budget.start(*stop)
        self.cam_budget.start(*stop)
        try:
            self._explain(explained)
        finally:
            self.budget.start(None, "")
            self.cam_budget.start(None, "")
        explain_ms = 1000 * (time.perf_counter() - started)
        explained_works = [t.work for t in explained]
        for work in works:
            work.response.timings.predict_ms = predict_ms
            work.response.timings.explain_ms = explain_ms if work in explained_works else 0.0
            work.response.timings.batch_size = len(works)
        return explained_works, explain_ms / 1000

    def _observe(
        self,
        metrics: ServiceMetrics,
        works: list[_Work],
        answers: list[Outgoing],
        explained: list[_Work],
        explain_seconds: float,
    ) -> None:
        done = time.perf_counter()
        for work, answer in zip(works, answers, strict=True):
            kind, method, nt_type = _labels(work)
            metrics.request_answered(
                kind,
                method,
                nt_type,
                answer.status,
                done - work.started,
                client_deadline=client_deadline(work.error),
            )
            if work in explained:
                metrics.request_explained(method, nt_type, work.response.rows, explain_seconds)
        metrics.batch_finished(len(works))

    def _run(self, jobs: list[ExplainJob]) -> list[JobResult]:
        """`scheduler.run`, reporting what it did (also when it fails) to the metrics, and
        teaching the cost model how long its rows took."""
        started = time.perf_counter()
        try:
            return self.scheduler.run(jobs)
        finally:
            _learn_cost(self.costs, jobs, self.scheduler.stats, time.perf_counter() - started)
            if self.metrics is not None:
                stats = self.scheduler.stats
                self.metrics.engine_run(
                    stats.chunk_rows, stats.oom_splits, self.scheduler.chunk_rows
                )

    # -- steps -------------------------------------------------------------------------------

    def _guard(self, work: _Work, step: Callable[[], None]) -> None:
        try:
            step()
        except SmoothExplainError as error:
            work.error = error
        except (MemoryError, torch.OutOfMemoryError):  # this request's own allocation failed
            work.error = ResourceExhausted("out of memory while serving this request")
        except Exception:  # one request's crash must not take its batch-mates down
            log.exception("request failed unexpectedly")
            work.error = InternalError("internal error while serving this request")

    def _decode(self, work: _Work) -> None:
        started = time.perf_counter()
        work.request = parse(work.incoming, self.config.limits)
        work.decoded = decode(work.request, self.config, self.device, self.bounds)
        work.decoded = seeded(work.decoded, self.guided_refusal)
        if work.decoded.spec is not None and work.decoded.spec.cam:
            work.decoded = self._with_layer(work.decoded, work.decoded.spec)
        if work.decoded.crop is not None:
            work.response.crop.resize, work.response.crop.size = work.decoded.crop
        work.response.model = self.model_name
        work.response.timings.decode_ms = 1000 * (time.perf_counter() - started)

    def _with_layer(self, decoded: Decoded, spec: ExplainSpec) -> Decoded:
        """A CAM request with its layer: asked, the model-config's, else the default for its
        input's shape (the served shape's found at load; echoed in the answer), refused
        before any pass when unusable (options.layer) or when the model cannot take the
        input at all (a raw tensor: input.tensor.shape)."""
        try:
            layer = self.scheduler.cams.resolve(spec, decoded.inputs, "options.")
        except SmoothExplainError:
            raise
        except Exception as error:  # the census forward failed in the model itself
            raise _refused(decoded, error) from None
        return replace(decoded, spec=replace(spec, layer=layer))

    def _predict(self, tasks: list[_Task]) -> None:
        groups: dict[tuple[int, ...], list[_Task]] = {}
        for task in tasks:
            groups.setdefault(tuple(task.decoded.inputs.shape), []).append(task)
        for group in groups.values():
            try:
                probabilities = self._probabilities(group)
            except Exception as error:  # an input shape the model cannot take fails alone
                for task in group:
                    task.work.error = _refused(task.decoded, error)
                continue
            for task, row in zip(group, probabilities, strict=True):
                self._guard(task.work, partial(self._rank, task, row))

    def _probabilities(self, group: list[_Task]) -> torch.Tensor:
        with torch.no_grad():
            scores = self.model(torch.stack([t.decoded.inputs for t in group]))
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or len(scores) != len(group):
            raise ModelOutputError(
                f"model must return (rows, classes) scores for {len(group)} rows"
            )
        return torch.softmax(scores.float(), dim=1).cpu()

    def _rank(self, task: _Task, probabilities: torch.Tensor) -> None:
        request, response = task.decoded.request, task.work.response
        classes = probabilities.shape[0]
        if not bool(torch.isfinite(probabilities).all()):
            raise not_finite(request, "scores")
        values, indices = probabilities.topk(min(task.decoded.top_k, classes))
        for p, i in zip(values.tolist(), indices.tolist(), strict=True):
            response.top_k.add(index=i, label=self.labels.get(i, str(i)), probability=p)
        target = request.target if request.HasField("target") else int(indices[0])
        if not 0 <= target < classes:
            raise InvalidArgument(
                f"target must be in [0, {classes - 1}], got {target}", field="target"
            )
        response.target = target

    def _plan(self, task: _Task, spec: ExplainSpec) -> None:
        """The engine job of an explanation and its estimated cost (a guarded step)."""
        inputs, options = task.decoded.inputs, task.decoded.request.options
        baseline = None
        if options.HasField("baseline"):
            baseline = torch.full_like(inputs, options.baseline)
        task.job = ExplainJob(
            inputs=inputs,
            target=task.work.response.target,
            spec=spec,
            seed=task.decoded.seed,
            baseline=baseline,
        )
        task.cost = self._estimate(task.job)
        limit = self.config.limits.max_batch_seconds
        if task.cost is not None and task.cost > limit:
            raise LimitExceeded(
                f"this explanation would take about {task.cost:.0f} s of compute "
                f"({spec.rows} rows), above the server limit max_batch_seconds={limit:g}; "
                "lower options.nt_samples or options.n_steps",
                field="options.nt_samples",
            )

    def _estimate(self, job: ExplainJob) -> float | None:
        """Estimated seconds of `job`. One that a probe alone says is over a bound is probed
        again first (once per input size, at request time, when start-up contention is
        over): a start-up probe taken beside loading workers reads many times slow."""
        spec, features = job.spec, job.inputs.numel()
        precision, sampling = spec.precision.value, spec.noise_sampling.value
        cost = self.costs.estimate(spec.rows, features, precision, sampling)
        bound = cost_bound(self.config.limits.max_batch_seconds, self.response_timeout)
        unmeasured = not self.costs.measured(features, precision)
        if cost is not None and cost > bound and unmeasured and features not in self._reprobed:
            self._reprobed.add(features)  # once per size: a refused request teaches nothing
            self.probe_cost(shape=job.inputs.shape)
            cost = self.costs.estimate(spec.rows, features, precision, sampling)
        return cost

    def _admit(self, tasks: list[_Task], batch_started: float) -> list[_Task]:
        """The explanations to compute now; the others are answered at once: 504 for one
        that cannot end in the time it has (its own deadline, the batch's share of
        responseTimeout), 503 for one that does not fit beside its cheaper batch-mates (not
        computed: safe to send again)."""
        limit = self.config.limits.max_batch_seconds
        seconds = batch_seconds(limit, self.response_timeout, batch_started, time.monotonic())
        for task in tasks:
            left, why = time_for(task.decoded.request, seconds)
            if task.cost is not None and task.cost > left:
                task.work.error = too_late(task.cost, left, why)
        pending = [t for t in tasks if t.work.ok]
        admitted = admit_cheapest_first([t.cost for t in pending], seconds)
        for task, runs in zip(pending, admitted, strict=True):
            if not runs:
                task.work.error = Overloaded(
                    f"this explanation (about {task.cost or 0:.1f} s of compute) does not fit "
                    f"beside its batch-mates in the {seconds:.1f} s one batch may take; it was "
                    "not computed: send it again"
                )
        return [t for t, runs in zip(pending, admitted, strict=True) if runs]

    def _explain(self, tasks: list[_Task]) -> None:
        if not tasks:
            return
        jobs = [t.job for t in tasks if t.job is not None]
        try:
            results = self._run(jobs)
        except Exception:
            # Isolate the request that broke the shared run; the others are recomputed alone.
            for task, job in zip(tasks, jobs, strict=True):
                self._guard(task.work, partial(self._run_alone, task, job))
            return
        for task, job, result in zip(tasks, jobs, results, strict=True):
            self._guard(task.work, partial(self._finish, task, job, result))

    def _run_alone(self, task: _Task, job: ExplainJob) -> None:
        try:
            result = self._run([job])[0]
        except InvalidArgument as error:  # the engine names its argument; answer the field
            if error.field not in _ENGINE_FIELDS:
                raise
            if job.spec.method is Method.GUIDED_BACKPROP and error.field == "method":
                self.guided_refusal = error.message  # a property of the model: remember it
            raise type(error)(error.message, field=_ENGINE_FIELDS[error.field]) from None
        self._finish(task, job, result)

    def _finish(self, task: _Task, job: ExplainJob, result: JobResult) -> None:
        encoding = str(self.config.defaults["encoding"])
        explanation(task.work.response, task.decoded.request, job, result, encoding)

    def _answer(self, work: _Work) -> Outgoing:
        as_json = not work.incoming.from_grpc
        if work.error is None:
            body = encode_response(work.response, as_json=as_json)
            work.error = too_big(body, self.config.limits.max_response_bytes)
            if work.error is None:
                return Outgoing(200, body)
        return failed(work.error, work.response.timings, self.model_name, as_json)


def _expire(tasks: list[_Task]) -> None:
    """Requests whose client deadline has passed get DEADLINE_EXCEEDED instead of our time."""
    now_ms = time.time() * 1000
    for task in tasks:
        if task.work.ok and (error := expired(task.decoded.request, now_ms)) is not None:
            task.work.error = error


def _learn_cost(
    costs: CostModel, jobs: Sequence[ExplainJob], stats: SchedulerStats, seconds: float
) -> None:
    """Teach `costs` a run (finished or cut short): its set-up when the jobs share one noise
    sampling and input size, its model rows (the time after the set-up) when they share one
    input size and precision."""
    if not jobs:
        return
    setups = {(job.spec.noise_sampling.value, job.inputs.numel()) for job in jobs}
    if len(setups) == 1:
        sampling, features = setups.pop()
        costs.observe_setup(sampling, features, stats.setup_seconds / len(jobs))
    sizes = {(job.inputs.numel(), job.spec.precision.value) for job in jobs}
    if len(sizes) == 1:
        features, precision = sizes.pop()
        costs.observe(stats.rows, features, seconds - stats.setup_seconds, precision)


def _refused(decoded: Decoded, error: Exception) -> SmoothExplainError:
    """The error of a request whose prediction failed in the model itself."""
    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return ResourceExhausted("out of memory while predicting")
    if decoded.from_tensor and not isinstance(error, SmoothExplainError):
        return InvalidArgument(
            f"input.tensor.shape {tuple(decoded.inputs.shape)} is not accepted by the model "
            f"({type(error).__name__})",
            field="input.tensor.shape",
        )
    if isinstance(error, SmoothExplainError):
        return error
    log.error("the model failed on a preprocessed image: %s", type(error).__name__)
    return InternalError("internal error while predicting")


def _labels(work: _Work) -> tuple[str, str, str]:
    """(kind, method, nt_type) metric labels; method and nt_type are "" for predictions and
    for requests that failed before their options were read."""
    explain = work.request.explain if work.request is not None else work.incoming.explain_path
    spec = work.decoded.spec if work.decoded is not None else None
    if spec is None:
        return ("explain" if explain else "predict"), "", ""
    return "explain", spec.method.value, spec.nt_type.value
