"""Admission by cost, and failures kept inside their own answers (issue 18, items 2 and 6)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.engine import ExplainJob, SchedulerStats
from smoothexplain.engine.spec import make_spec
from smoothexplain.protocol.errors import InvalidArgument
from smoothexplain.serving.admission import COST_MARGIN, MAX_SIZES, CostModel, admit_cheapest_first
from smoothexplain.serving.codec import tensor_to_message
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.metrics import ServiceMetrics
from smoothexplain.serving.service import ExplainService, Incoming, Outgoing, _learn_cost

from .analytic import small_cnn

RAW: dict[str, Any] = {
    "model_class": "tests.unit.analytic:small_cnn",
    "nt_samples_batch_size": 8,
    "auto_memory_budget": False,  # its memory probe's model calls would be counted too
    "preprocess": {"size": 8, "resize": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    "defaults": {"nt_samples": 8},
}
CPU = torch.device("cpu")


class RowTimed(nn.Module):
    """small_cnn that takes `per_row` seconds per row and counts the rows it is given."""

    def __init__(self, per_row: float) -> None:
        super().__init__()
        self.net, self.per_row, self.rows = small_cnn(), per_row, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        time.sleep(self.per_row * x.shape[0])
        out: torch.Tensor = self.net(x)
        return out


def _service(model: nn.Module, **limits: Any) -> ExplainService:
    config = parse_config({**RAW, "limits": limits})
    service = ExplainService(model, config, {}, CPU)
    service.probe_cost()
    return service


def _request(nt_samples: int, **options: Any) -> pb.Request:
    return pb.Request(
        input=pb.Input(tensor=tensor_to_message(torch.rand(3, 8, 8))),
        explain=True,
        options=pb.ExplainOptions(seed=3, nt_samples=nt_samples, **options),
    )


def _grpc(service: ExplainService, *requests: pb.Request) -> list[pb.Response]:
    answers = service.handle([Incoming(r.SerializeToString(), from_grpc=True) for r in requests])
    return [pb.Response.FromString(a.body) for a in answers]  # type: ignore[arg-type]


# -- the cost model and the admission rule ---------------------------------------------------


def test_a_probe_seeds_the_rate_and_the_first_run_replaces_it() -> None:
    costs = CostModel()
    assert costs.estimate(10, 100, "fp32") is None  # unknown until measured
    costs.observe(1, 100, 1.0, "fp32", probe=True)
    assert costs.estimate(10, 100, "fp32") == pytest.approx(10.0)
    costs.observe(10, 100, 1.0, "fp32")  # a real run, 10× cheaper per unit than the probe
    assert costs.estimate(10, 100, "fp32") == pytest.approx(1.0)
    costs.observe(10, 100, 3.0, "fp32")  # later runs move the average part of the way
    assert 1.0 < costs.estimate(10, 100, "fp32") < 3.0  # type: ignore[operator]


def test_a_probe_never_overrides_a_measured_rate() -> None:
    costs = CostModel()
    costs.observe(1, 100, 1.0, "fp32")
    costs.observe(1, 100, 50.0, "fp32", probe=True)
    assert costs.estimate(1, 100, "fp32") == pytest.approx(1.0)


def test_tiny_inputs_do_not_teach_the_rate_of_large_ones() -> None:
    costs = CostModel()
    costs.observe(2, 10_000, 0.02, "fp32", probe=True)  # 1e-6 s per row-feature
    for _ in range(20):  # tiny tensors: per-call overhead, 1e-3 s per row-feature
        costs.observe(100, 10, 1.0, "fp32")
    assert costs.estimate(100, 10_000, "fp32") == pytest.approx(1.0)  # the probe's rate
    assert costs.estimate(100, 10, "fp32") == pytest.approx(1.0)  # its own size's rate
    assert costs.estimate(100, 1_000, "fp32") == pytest.approx(0.1)  # nearest larger size
    assert costs.estimate(100, 50_000, "fp32") is None  # nothing as large measured


def test_a_precision_never_run_borrows_half_the_fp32_rate() -> None:
    costs = CostModel()
    assert costs.estimate(10, 100, "bf16") is None
    costs.observe(1, 100, 1.0, "fp32")
    assert costs.estimate(10, 100, "bf16") == pytest.approx(5.0)
    costs.observe(1, 100, 4.0, "bf16")  # once run, its own rate
    assert costs.estimate(10, 100, "bf16") == pytest.approx(40.0)
    assert costs.estimate(10, 100, "fp32") == pytest.approx(10.0)


def test_the_table_of_sizes_is_bounded_and_keeps_the_probe() -> None:
    costs = CostModel()
    costs.observe(1, 10**6, 1.0, "fp32", probe=True)
    for features in range(1, 2 * MAX_SIZES):
        costs.observe(1, features, 1.0, "fp32")
    assert len(costs.rates["fp32"]) == MAX_SIZES
    assert 10**6 in costs.rates["fp32"] and 1 not in costs.rates["fp32"]


def test_a_set_up_cost_is_per_request_and_per_sampling_scheme() -> None:
    costs = CostModel()
    costs.observe(rows=10, features=100, seconds=1.0, precision="fp32")  # 1e-3 s/row-feature
    costs.observe_setup("qmc", features=100, seconds=2.0)
    assert costs.estimate(10, 100, "fp32") == pytest.approx(1.0)  # iid: rows only
    assert costs.estimate(10, 100, "fp32", "qmc") == pytest.approx(3.0)
    assert costs.estimate(1000, 100, "fp32", "qmc") == pytest.approx(102.0)
    costs.observe_setup("qmc", features=100, seconds=4.0)  # averaged like the rates
    assert costs.setup["qmc"] == pytest.approx((0.7 * 2.0 + 0.3 * 4.0) / 100)


def test_a_costly_set_up_does_not_poison_the_rate_of_rows() -> None:
    """A 1-row QMC request whose Sobol engines took 1 s: the rows' rate learns only the 0.01 s
    after the set-up, so a later 300-row iid request of that size is judged by its rows."""
    costs = CostModel()
    features = 3 * 64 * 64
    iid = ExplainJob(torch.zeros(3, 64, 64), 0, make_spec(nt_samples=300), seed=1)
    costs.observe(300, features, 3.0, "fp32")
    qmc = ExplainJob(
        torch.zeros(3, 64, 64), 0, make_spec(nt_samples=1, noise_sampling="qmc"), seed=1
    )
    _learn_cost(costs, [qmc], SchedulerStats(chunk_rows=[1], setup_seconds=1.0), 1.01)
    before = 3.0 / (300 * features)
    assert costs.rates["fp32"][features].seconds_per_unit == pytest.approx(
        0.7 * before + 0.3 * 0.01 / features
    )
    # Unpoisoned: 0.01 s for the QMC request's one row, where 1.01 s would read 100x dearer.
    assert costs.estimate(iid.spec.rows, features, "fp32") == pytest.approx(
        0.7 * 3.0 + 0.3 * 0.01 * 300
    )
    assert costs.estimate(1, features, "fp32", "qmc") == pytest.approx(
        1.0 + 0.7 * 3.0 / 300 + 0.3 * 0.01
    )


@pytest.mark.parametrize(
    ("costs", "seconds", "admitted"),
    [
        ([5.0, 1.0, 2.0], 3.0 * COST_MARGIN, [False, True, True]),  # cheapest first
        ([5.0, 5.0, 5.0], 12.0 * COST_MARGIN, [True, True, False]),  # ties: arrival order
        ([None, 9.0, 1.0], 2.0 * COST_MARGIN, [True, False, True]),  # unknown costs run
        ([4.0], 3.0 * COST_MARGIN, [False]),  # alone and too dear
        ([3.5], 3.0 * COST_MARGIN, [True]),  # alone, its plain cost fits: it runs
        ([2.0, 2.0], 2.0 * COST_MARGIN, [True, False]),  # the margin counts
        ([3.5, 0.1], 3.6, [False, True]),  # the cheapest runs; the margin holds the next
        ([], 3.0, []),
    ],
)
def test_admission_takes_the_cheapest_until_the_time_is_spent(
    costs: list[float | None], seconds: float, admitted: list[bool]
) -> None:
    assert admit_cheapest_first(costs, seconds) == admitted


# -- the data plane ----------------------------------------------------------------------------


def test_an_explanation_dearer_than_a_batch_may_be_is_refused_before_any_row() -> None:
    model = RowTimed(0.002)
    service = _service(model, max_batch_seconds=1.0)
    model.rows = 0
    huge, small = _grpc(service, _request(500), _request(4))
    assert huge.error.http_status == 400 and huge.error.grpc_code == "INVALID_ARGUMENT"
    assert huge.error.field == "options.nt_samples"
    assert "max_batch_seconds=1" in huge.error.message and "500 rows" in huge.error.message
    assert not small.HasField("error") and small.rows == 4
    # The two predictions, a fresh probe (two calls of 2 rows: the start-up probe alone never
    # refuses) and the small one's rows; nothing of the huge one.
    assert model.rows == 2 + 2 * 2 + 4


def test_a_size_is_probed_again_once_not_on_every_refusal() -> None:
    """Truly too dear requests of one size, sent again and again, cost one fresh probe in all
    (two calls of 2 rows), not one per refusal."""
    model = RowTimed(0.002)
    service = _service(model, max_batch_seconds=1.0)
    model.rows = 0
    for _ in range(3):
        (huge,) = _grpc(service, _request(500))
        assert huge.error.field == "options.nt_samples"
    assert model.rows == 3 * 1 + 2 * 2  # three predictions, one re-probe


def test_a_probe_slowed_by_start_up_contention_refuses_nothing() -> None:
    """The start-up probe ran while other workers loaded and read 100 times slow: a request
    it would refuse is probed again first, and runs on the fresh figure."""
    model = RowTimed(0.002)
    service = _service(model, max_batch_seconds=1.0)
    features = 3 * 8 * 8
    (rate,) = [r.seconds_per_unit for r in service.costs.rates["fp32"].values()]
    service.costs.rates["fp32"][features].seconds_per_unit = 100 * rate  # as if contended
    (answer,) = _grpc(service, _request(100))  # ~0.2 s of rows, not ~20 s
    assert not answer.HasField("error") and answer.rows == 100
    assert service.costs.measured(features, "fp32")
    assert service.costs.rates["fp32"][features].seconds_per_unit < 10 * rate


def test_the_dearest_batch_mates_get_503_at_once_and_the_small_one_is_answered() -> None:
    model = RowTimed(0.004)
    service = _service(model)
    _grpc(service, _request(8))  # one real run teaches the rate
    big, small = (service.costs.estimate(rows, 3 * 8 * 8, "fp32") or 0 for rows in (120, 4))
    limits = replace(service.config.limits, max_batch_seconds=1.5 * big + small)
    service.config = replace(service.config, limits=limits)  # room for one big and the small
    model.rows = 0
    answers = _grpc(service, _request(120), _request(120), _request(120), _request(4))
    refused = [a for a in answers if a.HasField("error")]
    served = [a for a in answers if not a.HasField("error")]
    assert answers[3] in served and len(served) == 2  # the small one and one big one
    assert len(refused) == 2
    for answer in refused:
        assert (answer.error.http_status, answer.error.grpc_code) == (503, "UNAVAILABLE")
        assert "send it again" in answer.error.message
    assert model.rows == 4 + 120 + 4  # predictions, then only the admitted rows


def test_an_explanation_that_cannot_end_before_its_deadline_is_answered_at_once() -> None:
    model = RowTimed(0.004)
    service = _service(model)
    _grpc(service, _request(8))
    late = _request(200)
    late.deadline_unix_ms = int(1000 * (time.time() + 0.3))
    model.rows = 0
    (answer,) = _grpc(service, late)
    assert (answer.error.http_status, answer.error.grpc_code) == (504, "DEADLINE_EXCEEDED")
    assert answer.error.field == "deadline_unix_ms"
    assert model.rows == 1  # its prediction only


def test_the_response_timeout_share_bounds_admission_too() -> None:
    model = RowTimed(0.004)
    service = ExplainService(model, parse_config(RAW), {}, CPU, response_timeout=1.0)
    _grpc(service, _request(8))
    (answer,) = _grpc(service, _request(400))
    assert (answer.error.http_status, answer.error.grpc_code) == (504, "DEADLINE_EXCEEDED")
    assert "responseTimeout" in answer.error.message


# -- failures stay inside their own answer -------------------------------------------------------


def _rest(service: ExplainService, *bodies: dict[str, Any]) -> list[Outgoing]:
    return service.handle([Incoming(json.dumps(b).encode(), explain_path=True) for b in bodies])


def _tensor_json(values: torch.Tensor) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(tensor_to_message(values))


@pytest.mark.parametrize("baseline", [1e39, -1e39, 3.5e38])
def test_a_baseline_beyond_float32_is_refused_and_its_batch_mate_answered(baseline: float) -> None:
    service = _service(small_cnn())
    good = _request(4)
    bad = _request(4, method=pb.METHOD_INTEGRATED_GRADIENTS, n_steps=4, baseline=baseline)
    refused, answered = _grpc(service, bad, good)
    assert refused.error.http_status == 400 and refused.error.field == "options.baseline"
    assert not answered.HasField("error") and answered.rows == 4
    tensor = _tensor_json(torch.rand(3, 8, 8))
    rest = _rest(
        service,
        {
            "input": {"tensor": tensor},
            "options": {
                "method": "METHOD_INTEGRATED_GRADIENTS",
                "baseline": baseline,
                "n_steps": 4,
            },
        },
        {"input": {"tensor": tensor}, "options": {"nt_samples": 4}},
    )
    assert [a.status for a in rest] == [400, 200]


def test_scores_that_overflow_are_a_400_naming_the_tensor() -> None:
    service = _service(small_cnn())
    huge = pb.Request(input=pb.Input(tensor=tensor_to_message(torch.full((3, 8, 8), 3e38))))
    fine = pb.Request(input=pb.Input(tensor=tensor_to_message(torch.rand(3, 8, 8))))
    refused, answered = _grpc(service, huge, fine)
    assert refused.error.http_status == 400 and refused.error.field == "input.tensor.data"
    assert not answered.HasField("error") and answered.top_k


def test_a_failure_outside_every_guard_answers_each_request_and_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = ServiceMetrics("tiny", CPU)
    service = ExplainService(small_cnn(), parse_config(RAW), {}, CPU, "tiny", metrics)

    def broken(works: object) -> None:
        raise RuntimeError("a bug between the steps")

    monkeypatch.setattr(service, "_predict", broken)
    answers = service.handle(
        [Incoming(_request(4).SerializeToString(), from_grpc=True) for _ in range(3)]
    )
    assert [a.status for a in answers] == [500, 500, 500]
    for answer in answers:
        response = pb.Response.FromString(answer.body)  # type: ignore[arg-type]
        assert response.error.grpc_code == "INTERNAL"
    labels = {"model": "tiny", "kind": "explain", "method": "gradient", "nt_type": "smoothgrad"}
    count = metrics.registry.get_sample_value(
        "smoothexplain_requests_total", {**labels, "status_class": "5xx"}
    )
    assert count == 3


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan"), True, "60"])
def test_max_batch_seconds_must_be_a_positive_number(value: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_config({**RAW, "limits": {"max_batch_seconds": value}})
    assert caught.value.field == "limits.max_batch_seconds"


@pytest.mark.parametrize("grpc_transport", [True, False])
def test_an_error_quoting_a_lone_surrogate_is_still_answered(
    monkeypatch: pytest.MonkeyPatch, grpc_transport: bool
) -> None:
    service = _service(small_cnn())

    def quoting(work: object) -> None:
        raise InvalidArgument("bad key '\ud800'", field="options.\udc00")

    monkeypatch.setattr(service, "_decode", quoting)
    payload = _request(4).SerializeToString()
    incoming = Incoming(payload, from_grpc=True) if grpc_transport else Incoming(b"{}")
    (answer,) = service.handle([incoming])
    assert answer.status == 400
    if grpc_transport:
        error = pb.Response.FromString(answer.body).error  # type: ignore[arg-type]
        assert error.field == "options.\\udc00" and "\\ud800" in error.message
    else:
        assert "\\\\ud800" in str(answer.body)
