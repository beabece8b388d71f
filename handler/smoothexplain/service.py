"""The data plane: one TorchServe batch of raw requests in, one answer per request out.

Free of TorchServe imports, so it is tested directly and can sit behind any server. A request
that fails (bad field, bad image, target out of range, a crash in its own explanation) gets its
own error answer; its batch-mates are still answered.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch

from ._proto.smoothexplain.v1 import explain_pb2 as pb
from .admission import CostModel, admit_cheapest_first
from .budget import RESPONSE_TIMEOUT_SHARE, Budgeted
from .codec import (
    decode_request,
    encode_response,
    image_to_tensor,
    tensor_from_message,
    tensor_to_message,
)
from .config import ServingConfig
from .engine import ExplainJob, JobResult, Scheduler, SchedulerStats, guided_refusal
from .errors import (
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    LimitExceeded,
    ModelOutputError,
    Overloaded,
    ResourceExhausted,
    SmoothExplainError,
    status_of,
)
from .heatmap import heatmap_png
from .memory import serving_memory_budget
from .metrics import ServiceMetrics
from .options import enum_from_proto, enum_to_proto
from .spec import MAX_SEED, ExplainSpec, Method, finite_float32, make_spec

__all__ = ["ExplainService", "Incoming", "Outgoing"]

log = logging.getLogger(__name__)

# Engine arguments that are request options under another name (e.g. guided backprop refused).
_ENGINE_FIELDS = {"method": "options.method"}


@dataclass(frozen=True)
class Incoming:
    payload: object  # gRPC bytes, REST body bytes, or a JSON body TorchServe already parsed
    from_grpc: bool = False
    explain_path: bool = False  # REST /explanations/{model}


@dataclass(frozen=True)
class Outgoing:
    status: int  # HTTP status of this request's answer
    body: bytes | str  # serialized Response (gRPC) or its JSON mapping (REST)
    message: str = ""  # error text for TorchServe's status line; "" when OK


@dataclass
class _Work:
    incoming: Incoming
    response: pb.Response = field(default_factory=pb.Response)
    request: pb.Request | None = None
    inputs: torch.Tensor | None = None
    spec: ExplainSpec | None = None
    seed: int = 0
    job: ExplainJob | None = None
    cost: float | None = None  # estimated seconds of its explanation (admission.py)
    error: SmoothExplainError | None = None
    started: float = field(default_factory=time.perf_counter)  # its decode starts now

    @property
    def ok(self) -> bool:
        return self.error is None


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
    ) -> None:
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
        self.scheduler = Scheduler(
            self.budget,
            config.nt_samples_batch_size,
            memory_budget,
            tune_pass_rows=config.tune_pass_rows,
            refuse_over_budget=hard,
        )
        self.costs = CostModel()  # seconds per row-feature, for admission by cost
        self._reprobed: set[int] = set()  # input sizes probed again before a refusal

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
            for _ in range(2):
                started = time.perf_counter()
                rows_in = x.clone().requires_grad_(True)
                torch.autograd.grad(self.model(rows_in).amax(dim=1).sum(), rows_in)
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
            self._guard(work, self._decode)
        started = time.perf_counter()
        _expire(works)
        self._predict([w for w in works if w.ok])
        predict_ms = 1000 * (time.perf_counter() - started)
        started = time.perf_counter()
        _expire(works)
        explained = [w for w in works if w.ok and w.request is not None and w.request.explain]
        for work in explained:
            self._guard(work, self._prepare_job)
        explained = self._admit([w for w in explained if w.ok], batch_started)
        self.budget.start(*self._time_left(explained, batch_started))
        try:
            self._explain(explained)
        finally:
            self.budget.start(None, "")
        explain_ms = 1000 * (time.perf_counter() - started)
        for work in works:
            work.response.timings.predict_ms = predict_ms
            work.response.timings.explain_ms = explain_ms if work in explained else 0.0
            work.response.timings.batch_size = len(works)
        return explained, explain_ms / 1000

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
                client_deadline=_client_deadline(work),
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

    def _guard(self, work: _Work, step: Callable[[_Work], None]) -> _Work:
        try:
            step(work)
        except SmoothExplainError as error:
            work.error = error
        except (MemoryError, torch.OutOfMemoryError):  # this request's own allocation failed
            work.error = ResourceExhausted("out of memory while serving this request")
        except Exception:  # one request's crash must not take its batch-mates down
            log.exception("request failed unexpectedly")
            work.error = InternalError("internal error while serving this request")
        return work

    def _decode(self, work: _Work) -> None:
        started = time.perf_counter()
        limits, incoming = self.config.limits, work.incoming
        request = decode_request(
            incoming.payload,
            from_grpc=incoming.from_grpc,
            explain_path=incoming.explain_path,
            limits=limits,
        )
        work.request = request
        source = request.input.WhichOneof("source")
        if source == "image":
            x = image_to_tensor(request.input.image, self.config.preprocess, limits)
            pre = self.config.preprocess
            work.response.crop.resize, work.response.crop.size = pre.resize, pre.size
        elif source == "tensor":
            x = tensor_from_message(request.input.tensor, self.config.preprocess, limits)
        else:
            raise InvalidArgument("input must hold an image or a tensor", field="input")
        work.inputs = x.to(self.device)
        top_k = request.top_k if request.HasField("top_k") else self.config.defaults.top_k
        if not 1 <= top_k <= limits.max_top_k:
            raise LimitExceeded(
                f"top_k must be in [1, {limits.max_top_k}] (server limit max_top_k), got {top_k}",
                field="top_k",
            )
        if request.explain:
            work.spec = self._spec(request.options)
            if work.spec.method is Method.GUIDED_BACKPROP and self.guided_refusal:
                # Known not to apply to this model: refused before it can fail a shared run
                # (which would send every batch-mate through a run of its own).
                raise InvalidArgument(self.guided_refusal, field="options.method")
            work.seed = _seed(request.options)
        work.response.model = self.model_name
        work.response.timings.decode_ms = 1000 * (time.perf_counter() - started)

    def _spec(self, options: pb.ExplainOptions) -> ExplainSpec:
        d, limits = self.config.defaults, self.config.limits
        if options.HasField("baseline"):
            finite_float32(options.baseline, "options.baseline")
        nt_samples = options.nt_samples if options.HasField("nt_samples") else d.nt_samples
        n_steps = options.n_steps if options.HasField("n_steps") else d.n_steps
        if nt_samples > limits.max_nt_samples:
            raise LimitExceeded(
                f"options.nt_samples must be <= {limits.max_nt_samples} (server "
                f"limit max_nt_samples), got {nt_samples}",
                field="options.nt_samples",
            )
        if n_steps > limits.max_n_steps:
            raise LimitExceeded(
                f"options.n_steps must be <= {limits.max_n_steps} (server "
                f"limit max_n_steps), got {n_steps}",
                field="options.n_steps",
            )
        method = enum_from_proto("method", options.method)
        try:
            spec = make_spec(
                method=method or d.method,
                nt_type=enum_from_proto("nt_type", options.nt_type) or d.nt_type,
                noise=enum_from_proto("noise", options.noise) or d.noise,
                nt_samples=nt_samples,
                stdevs=options.stdevs if options.HasField("stdevs") else None,
                sigma=options.sigma if options.HasField("sigma") else d.sigma,
                bounds=self.bounds,
                confidence=options.confidence if options.HasField("confidence") else d.confidence,
                n_steps=n_steps,
                ig_rule=enum_from_proto("ig_rule", options.ig_rule) or d.ig_rule,
                return_convergence_delta=options.return_convergence_delta,
                ig_sampling=enum_from_proto("ig_sampling", options.ig_sampling) or d.ig_sampling,
                noise_sampling=enum_from_proto("noise_sampling", options.noise_sampling)
                or d.noise_sampling,
                tolerance=options.tolerance if options.HasField("tolerance") else None,
                precision=enum_from_proto("precision", options.precision) or d.precision,
            )
        except InvalidArgument as error:
            if error.field.startswith("options."):  # an enum above, already named in full
                raise
            raise type(error)(f"options.{error.message}", field=f"options.{error.field}") from None
        if spec.rows > limits.max_rows:
            raise LimitExceeded(
                f"options.nt_samples × options.n_steps = {spec.rows} rows, above "
                f"the server limit max_rows={limits.max_rows}",
                field="options.nt_samples",
            )
        enum_from_proto("encoding", options.encoding)
        return spec

    def _predict(self, works: list[_Work]) -> None:
        groups: dict[tuple[int, ...], list[_Work]] = {}
        for work in works:
            assert work.inputs is not None
            groups.setdefault(tuple(work.inputs.shape), []).append(work)
        for group in groups.values():
            try:
                probabilities = self._probabilities(group)
            except Exception as error:  # an input shape the model cannot take fails alone
                for work in group:
                    work.error = _refused(work, error)
                continue
            for work, row in zip(group, probabilities, strict=True):
                self._guard(work, partial(self._rank, probabilities=row))

    def _probabilities(self, group: list[_Work]) -> torch.Tensor:
        with torch.no_grad():
            scores = self.model(torch.stack([w.inputs for w in group if w.inputs is not None]))
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or len(scores) != len(group):
            raise ModelOutputError(
                f"model must return (rows, classes) scores for {len(group)} rows"
            )
        return torch.softmax(scores.float(), dim=1).cpu()

    def _rank(self, work: _Work, probabilities: torch.Tensor) -> None:
        assert work.request is not None
        classes = probabilities.shape[0]
        top_k = work.request.top_k if work.request.HasField("top_k") else self.config.defaults.top_k
        if not bool(torch.isfinite(probabilities).all()):
            raise _not_finite(work, "scores")
        values, indices = probabilities.topk(min(top_k, classes))
        for p, i in zip(values.tolist(), indices.tolist(), strict=True):
            work.response.top_k.add(index=i, label=self.labels.get(i, str(i)), probability=p)
        target = work.request.target if work.request.HasField("target") else int(indices[0])
        if not 0 <= target < classes:
            raise InvalidArgument(
                f"target must be in [0, {classes - 1}], got {target}", field="target"
            )
        work.response.target = target

    def _time_left(self, works: list[_Work], batch_started: float) -> tuple[float | None, str, str]:
        """When the engine must stop (time.monotonic()), why, and the request field that set
        it: the batch's share of responseTimeout, or the latest client deadline when every
        request carries one."""
        until: float | None = None
        reason = field = ""
        if self.response_timeout is not None:
            until = batch_started + RESPONSE_TIMEOUT_SHARE * self.response_timeout
            reason = (
                f"the batch used its {RESPONSE_TIMEOUT_SHARE:.0%} share of the model's "
                f"responseTimeout ({self.response_timeout:g} s) before this explanation was done"
            )
        deadlines = [
            w.request.deadline_unix_ms
            for w in works
            if w.request is not None and w.request.HasField("deadline_unix_ms")
        ]
        if works and len(deadlines) == len(works):
            client = time.monotonic() + max(deadlines) / 1000 - time.time()
            if until is None or client < until:
                until, field = client, "deadline_unix_ms"
                reason = "deadline_unix_ms passed while computing; the rest was not computed"
        return until, reason, field

    def _explain(self, works: list[_Work]) -> None:
        if not works:
            return
        jobs = [w.job for w in works if w.job is not None]
        try:
            results = self._run(jobs)
        except Exception:
            # Isolate the request that broke the shared run; the others are recomputed alone.
            for work, job in zip(works, jobs, strict=True):
                self._guard(work, partial(self._run_alone, job=job))
            return
        for work, result in zip(works, results, strict=True):
            self._guard(work, partial(self._finish, result=result))

    def _run_alone(self, work: _Work, job: ExplainJob) -> None:
        try:
            result = self._run([job])[0]
        except InvalidArgument as error:  # the engine names its argument; answer the field
            if error.field not in _ENGINE_FIELDS:
                raise
            if job.spec.method is Method.GUIDED_BACKPROP and error.field == "method":
                self.guided_refusal = error.message  # a property of the model: remember it
            raise type(error)(error.message, field=_ENGINE_FIELDS[error.field]) from None
        self._finish(work, result)

    def _prepare_job(self, work: _Work) -> None:
        """The engine job of an explanation and its estimated cost (a guarded step)."""
        assert work.inputs is not None and work.spec is not None and work.request is not None
        baseline = None
        if work.request.options.HasField("baseline"):
            baseline = torch.full_like(work.inputs, work.request.options.baseline)
        work.job = ExplainJob(
            inputs=work.inputs,
            target=work.response.target,
            spec=work.spec,
            seed=work.seed,
            baseline=baseline,
        )
        work.cost = self._estimate(work)
        limit = self.config.limits.max_batch_seconds
        spec = work.spec
        if work.cost is not None and work.cost > limit:
            raise LimitExceeded(
                f"this explanation would take about {work.cost:.0f} s of compute "
                f"({spec.rows} rows), above the server limit max_batch_seconds={limit:g}; "
                "lower options.nt_samples or options.n_steps",
                field="options.nt_samples",
            )

    def _estimate(self, work: _Work) -> float | None:
        """Estimated seconds of `work`'s explanation. One that a probe alone says is over a
        bound is probed again first (once per input size, at request time, when start-up
        contention is over): a start-up probe taken beside loading workers reads many times
        slow."""
        assert work.inputs is not None and work.spec is not None
        spec, features = work.spec, work.inputs.numel()
        precision, sampling = spec.precision.value, spec.noise_sampling.value
        cost = self.costs.estimate(spec.rows, features, precision, sampling)
        bound = self.config.limits.max_batch_seconds
        if self.response_timeout is not None:
            bound = min(bound, RESPONSE_TIMEOUT_SHARE * self.response_timeout)
        unmeasured = not self.costs.measured(features, precision)
        if cost is not None and cost > bound and unmeasured and features not in self._reprobed:
            self._reprobed.add(features)  # once per size: a refused request teaches nothing
            self.probe_cost(shape=work.inputs.shape)
            cost = self.costs.estimate(spec.rows, features, precision, sampling)
        return cost

    def _admit(self, works: list[_Work], batch_started: float) -> list[_Work]:
        """The explanations to compute now; the others are answered at once: 504 for one
        that cannot end in the time it has (its own deadline, the batch's share of
        responseTimeout), 503 for one that does not fit beside its cheaper batch-mates (not
        computed: safe to send again)."""
        now = time.monotonic()
        seconds = self.config.limits.max_batch_seconds
        if self.response_timeout is not None:
            share = RESPONSE_TIMEOUT_SHARE * self.response_timeout
            seconds = min(seconds, batch_started + share - now)
        for work in works:
            left, why = _time_for(work, seconds, now)
            if work.cost is not None and work.cost > left:
                work.error = DeadlineExceeded(
                    f"this explanation would take about {work.cost:.1f} s of compute, more "
                    f"than the {max(left, 0.0):.1f} s {why}; it was not computed",
                    field="deadline_unix_ms" if "deadline" in why else "",
                )
        pending = [w for w in works if w.ok]
        admitted = admit_cheapest_first([w.cost for w in pending], seconds)
        for work, runs in zip(pending, admitted, strict=True):
            if not runs:
                work.error = Overloaded(
                    f"this explanation (about {work.cost or 0:.1f} s of compute) does not fit "
                    f"beside its batch-mates in the {seconds:.1f} s one batch may take; it was "
                    "not computed: send it again"
                )
        return [w for w, runs in zip(pending, admitted, strict=True) if runs]

    def _finish(self, work: _Work, result: JobResult) -> None:
        assert work.request is not None and work.spec is not None
        response, encoding = (
            work.response,
            work.request.options.encoding
            or pb.Encoding.Value(f"ENCODING_{self.config.defaults.encoding.upper()}"),
        )
        started = time.perf_counter()
        if not bool(torch.isfinite(result.attribution).all()):
            raise _not_finite(work, "attribution")
        if encoding in (pb.ENCODING_FLOAT32, pb.ENCODING_FLOAT32_AND_PNG):
            response.attribution.CopyFrom(tensor_to_message(result.attribution, pb.DTYPE_FLOAT32))
        elif encoding == pb.ENCODING_FLOAT16:
            response.attribution.CopyFrom(tensor_to_message(result.attribution, pb.DTYPE_FLOAT16))
        if encoding in (pb.ENCODING_PNG, pb.ENCODING_FLOAT32_AND_PNG):
            response.heatmap_png = heatmap_png(result.attribution)
        if result.convergence_delta is not None:
            if not math.isfinite(result.convergence_delta):  # F(baseline) overflowed
                raise _not_finite(work, "convergence delta")
            response.convergence_delta = result.convergence_delta
        response.options.CopyFrom(_applied(work.spec, work.seed, work.request.options, encoding))
        if result.relative_error is not None and math.isfinite(result.relative_error):
            response.relative_error = result.relative_error
        response.seed, response.nt_samples, response.rows = (
            work.seed,
            result.samples or work.spec.samples,
            result.rows,
        )
        response.timings.encode_ms = 1000 * (time.perf_counter() - started)

    def _answer(self, work: _Work) -> Outgoing:
        as_json = not work.incoming.from_grpc
        if work.error is None:
            body = encode_response(work.response, as_json=as_json)
            size = len(body.encode() if isinstance(body, str) else body)
            if size <= self.config.limits.max_response_bytes:
                return Outgoing(200, body)
            limit = self.config.limits.max_response_bytes
            work.error = LimitExceeded(
                f"the answer would be {size} bytes, above the server limit max_response_bytes="
                f"{limit}; ask for ENCODING_FLOAT16 or ENCODING_PNG",
                field="options.encoding",
            )
        status = status_of(work.error)
        failed = pb.Response(model=self.model_name, timings=work.response.timings)
        failed.error.http_status, failed.error.grpc_code = status.http, status.grpc
        # Lone surrogates (from a request) would make the answer itself fail to serialize.
        failed.error.message = _utf8(work.error.message)
        failed.error.field = _utf8(work.error.field)
        return Outgoing(status.http, encode_response(failed, as_json=as_json), work.error.message)


def _utf8(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _not_finite(work: _Work, what: str) -> SmoothExplainError:
    """The model's scores or the map came out NaN or infinite: the tensor's values overflow
    the model (the client's to change), or the model broke on a decoded image (ours)."""
    assert work.request is not None
    options = work.request.options
    if what != "scores" and options.HasField("baseline"):  # checked first: the map uses both
        return InvalidArgument(
            f"options.baseline {options.baseline:g} makes the model's {what} NaN or infinite: "
            "the model's output along the path overflows; choose a baseline in the model's "
            "input range",
            field="options.baseline",
        )
    if work.request.input.WhichOneof("source") == "tensor":
        return InvalidArgument(
            f"input.tensor.data makes the model's {what} NaN or infinite: its values overflow "
            "the model; send values in the model's input range",
            field="input.tensor.data",
        )
    return ModelOutputError(f"the model's {what} for this image are not finite (NaN or infinite)")


def _time_for(work: _Work, seconds: float, now: float) -> tuple[float, str]:
    """Seconds `work` may compute from `now` (monotonic), and what sets that bound."""
    why = "its batch may take (limits.max_batch_seconds, or 80 % of the model's responseTimeout)"
    request = work.request
    if request is not None and request.HasField("deadline_unix_ms"):
        own = request.deadline_unix_ms / 1000 - time.time()
        if own < seconds:
            return own, "left before its deadline_unix_ms"
    return seconds, why


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


def _refused(work: _Work, error: Exception) -> SmoothExplainError:
    """The error of a request whose prediction failed in the model itself."""
    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return ResourceExhausted("out of memory while predicting")
    tensor = work.request is not None and work.request.input.WhichOneof("source") == "tensor"
    if tensor and work.inputs is not None and not isinstance(error, SmoothExplainError):
        return InvalidArgument(
            f"input.tensor.shape {tuple(work.inputs.shape)} is not accepted by the model "
            f"({type(error).__name__})",
            field="input.tensor.shape",
        )
    if isinstance(error, SmoothExplainError):
        return error
    log.error("the model failed on a preprocessed image: %s", type(error).__name__)
    return InternalError("internal error while predicting")


def _expire(works: list[_Work]) -> None:
    """Requests whose client deadline has passed get DEADLINE_EXCEEDED instead of our time."""
    now_ms = time.time() * 1000
    for work in works:
        request = work.request
        if (
            work.ok
            and request is not None
            and request.HasField("deadline_unix_ms")
            and request.deadline_unix_ms <= now_ms
        ):
            work.error = DeadlineExceeded(
                "deadline_unix_ms passed before this request's turn; it was not computed",
                field="deadline_unix_ms",
            )


def _client_deadline(work: _Work) -> bool:
    """Whether the request failed on its own deadline_unix_ms (the client's choice, not a
    server failure: counted apart so that a past deadline cannot fire the 5xx alert)."""
    error = work.error
    return isinstance(error, DeadlineExceeded) and error.field == "deadline_unix_ms"


def _labels(work: _Work) -> tuple[str, str, str]:
    """(kind, method, nt_type) metric labels; method and nt_type are "" for predictions and
    for requests that failed before their options were read."""
    explain = work.request.explain if work.request is not None else work.incoming.explain_path
    if work.spec is None:
        return ("explain" if explain else "predict"), "", ""
    return "explain", work.spec.method.value, work.spec.nt_type.value


def _seed(options: pb.ExplainOptions) -> int:
    """The request's seed, within the Python API's range (the proto field is a uint64), or a
    fresh one."""
    if not options.HasField("seed"):
        return secrets.randbits(62)
    if options.seed > MAX_SEED:
        raise InvalidArgument(
            f"options.seed must be in [0, {MAX_SEED}], got {options.seed}", field="options.seed"
        )
    return options.seed


def _applied(
    spec: ExplainSpec, seed: int, asked: pb.ExplainOptions, encoding: pb.Encoding.ValueType
) -> pb.ExplainOptions:
    """The request's options with every default filled in, as the engine ran them."""
    applied = pb.ExplainOptions(
        nt_samples=spec.nt_samples,
        sigma=spec.sigma,
        confidence=spec.confidence,
        seed=seed,
        return_convergence_delta=spec.return_convergence_delta,
        encoding=encoding,
    )
    enums = {
        "method": spec.method.value,
        "nt_type": spec.nt_type.value,
        "noise": spec.noise.value,
        "noise_sampling": spec.noise_sampling.value,
        "precision": spec.precision.value,
    }
    if spec.method is Method.INTEGRATED_GRADIENTS:
        enums["ig_rule"] = spec.ig_rule.value
        enums["ig_sampling"] = "joint" if spec.joint_ig else "grid"  # plain IG: the grid
    for name, value in enums.items():
        setattr(applied, name, enum_to_proto(name, value))
    if spec.tolerance is not None:
        applied.tolerance = spec.tolerance
    if spec.stdevs is not None:
        applied.stdevs = spec.stdevs
    if spec.method is Method.INTEGRATED_GRADIENTS:
        applied.n_steps = spec.n_steps
        if asked.HasField("baseline"):
            applied.baseline = asked.baseline
    return applied
