"""Chunking, seeding and batch-mates: a job's answer depends only on its own request."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothexplain import ExplainJob, Scheduler, explain, make_spec
from smoothexplain.protocol.errors import ModelOutputError, ResourceExhausted

from .analytic import small_cnn

METHODS = ["gradient", "input_x_gradient", "integrated_gradients", "guided_backprop"]


def _x(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_result_does_not_depend_on_chunk_size(method: str, nt_type: str) -> None:
    model, x = small_cnn(), _x()
    kw = {
        "method": method,
        "nt_type": nt_type,
        "nt_samples": 7,
        "seed": 42,
        "n_steps": 5,
        "stdevs": 0.3,
    }
    results = [
        explain(model, x, [1, 2], nt_samples_batch_size=size, **kw)  # type: ignore[arg-type]
        for size in (1, 3, 7, 64, None)
    ]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-6, atol=1e-9)


def test_same_seed_same_answer_other_seed_other_answer() -> None:
    model, x = small_cnn(), _x()
    first = explain(model, x, 0, nt_samples=5, seed=1)
    assert torch.equal(first, explain(model, x, 0, nt_samples=5, seed=1))
    assert not torch.allclose(first, explain(model, x, 0, nt_samples=5, seed=2))


def test_unseeded_calls_follow_torch_manual_seed() -> None:
    model, x = small_cnn(), _x()
    torch.manual_seed(5)
    first = explain(model, x, 0, nt_samples=4)
    torch.manual_seed(5)
    assert torch.equal(first, explain(model, x, 0, nt_samples=4))


def test_a_job_ignores_its_batch_mates() -> None:
    """Mixed methods, sizes and settings in one scheduler call; each equals its solo run."""
    model, x = small_cnn(), _x(3)
    specs = [
        make_spec(method="gradient", nt_samples=5, stdevs=0.2),
        make_spec(
            method="integrated_gradients",
            nt_samples=3,
            n_steps=4,
            nt_type="vargrad",
            return_convergence_delta=True,
        ),
        make_spec(method="guided_backprop", nt_samples=2, noise="adaptive", bounds=(-3.0, 3.0)),
        make_spec(method="input_x_gradient", nt_type="none"),
    ]
    jobs = [
        ExplainJob(inputs=x[i % 3], target=i, spec=spec, seed=100 + i)
        for i, spec in enumerate(specs)
    ]
    together = Scheduler(model, chunk_rows=4).run(jobs)
    for job, mixed in zip(jobs, together, strict=True):
        (alone,) = Scheduler(model, chunk_rows=3).run([job])
        torch.testing.assert_close(mixed.attribution, alone.attribution, rtol=1e-6, atol=1e-9)
        assert mixed.rows == job.spec.rows
    assert together[1].convergence_delta is not None
    assert together[0].convergence_delta is None


def test_rows_of_different_jobs_share_model_calls() -> None:
    calls: list[int] = []
    model = small_cnn()
    model.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    jobs = [ExplainJob(inputs=x, target=0, spec=make_spec(nt_samples=3), seed=0) for x in _x(4)]
    Scheduler(model, chunk_rows=5).run(jobs)
    assert calls == [5, 5, 2]  # 12 rows of 4 jobs in 3 calls, never more than 5 rows


def test_model_is_left_as_it_was() -> None:
    model = small_cnn(inplace=True)
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    hooks = [(len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()]
    for method in METHODS:
        explain(model, _x(), 0, method=method, nt_samples=3, n_steps=3)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [(len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()] == hooks
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_guided_backprop_with_inplace_relus_equals_out_of_place() -> None:
    x = _x()
    inplace = explain(small_cnn(inplace=True), x, 1, method="guided_backprop", nt_samples=4, seed=3)
    plain = explain(small_cnn(inplace=False), x, 1, method="guided_backprop", nt_samples=4, seed=3)
    torch.testing.assert_close(inplace, plain)
    gradient = explain(small_cnn(), x, 1, nt_samples=4, seed=3)
    assert not torch.allclose(plain, gradient)  # the ReLU rule really was applied


def test_guided_backprop_hooks_do_not_leak_into_later_gradient_calls() -> None:
    model, x = small_cnn(), _x()
    before = explain(model, x, 2, nt_type="none")
    explain(model, x, 2, method="guided_backprop", nt_type="none")
    torch.testing.assert_close(explain(model, x, 2, nt_type="none"), before)


def test_result_is_float32_with_the_input_shape() -> None:
    model = small_cnn().double()
    x = _x().double()
    attr = explain(model, x, 0, nt_samples=2)
    assert attr.dtype == torch.float32 and attr.shape == x.shape


def test_a_model_with_the_wrong_output_is_reported() -> None:
    with pytest.raises(ModelOutputError, match=r"\(rows, classes\)"):
        explain(nn.Flatten(0), _x(), 0, nt_samples=2)


def test_inputs_of_different_shapes_run_in_one_call() -> None:
    model = small_cnn()
    small, big = _x(1)[0], torch.randn(3, 12, 12)
    jobs = [
        ExplainJob(inputs=t, target=0, spec=make_spec(nt_samples=2), seed=1) for t in (small, big)
    ]
    results = Scheduler(model, chunk_rows=8).run(jobs)
    assert results[0].attribution.shape == small.shape
    assert results[1].attribution.shape == big.shape


class _RunsOutOfMemory(nn.Module):
    """Raises torch.OutOfMemoryError for any call with more than `limit` rows."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("injected: too many rows")
        out: torch.Tensor = self.inner(x)
        return out


def test_out_of_memory_halves_the_chunk_retries_and_remembers() -> None:
    inner, x = small_cnn(), _x()
    model = _RunsOutOfMemory(inner, limit=3)
    scheduler = Scheduler(model, chunk_rows=8)
    jobs = [ExplainJob(inputs=t, target=1, spec=make_spec(nt_samples=10), seed=5) for t in x]
    results = scheduler.run(jobs)
    assert scheduler.chunk_rows == 2  # 8 → 4 → 2, kept for later chunks
    assert scheduler.stats.oom_splits == 2 and scheduler.stats.rows == 20
    assert max(scheduler.stats.chunk_rows) <= 3
    expected = Scheduler(inner, chunk_rows=8).run(jobs)
    for got, want in zip(results, expected, strict=True):
        torch.testing.assert_close(got.attribution, want.attribution, rtol=1e-6, atol=1e-9)


def test_out_of_memory_on_one_row_is_resource_exhausted() -> None:
    model = _RunsOutOfMemory(small_cnn(), limit=0)
    with pytest.raises(ResourceExhausted, match="single row"):
        Scheduler(model, chunk_rows=4).run(
            [ExplainJob(inputs=_x(1)[0], target=0, spec=make_spec(nt_samples=2), seed=0)]
        )
