"""The memory layout of the model passes (issue 17): contiguous, channels_last or auto."""

from __future__ import annotations

import pytest
import torch

from smoothexplain import ExplainJob, Scheduler, explain, make_spec
from smoothexplain.protocol.errors import InvalidArgument
from smoothexplain.protocol.options import MemoryFormat
from smoothexplain.serving.config import parse_config

from .analytic import small_cnn


def _weights_channels_last(model: torch.nn.Module) -> list[bool]:
    return [
        p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in model.parameters()
        if p.dim() == 4
    ]


def test_channels_last_stays_within_kernel_rounding_of_nchw() -> None:
    model, x = small_cnn(), torch.rand(2, 3, 16, 16)
    kw = {"nt_samples": 6, "seed": 4, "bounds": (0.0, 1.0)}
    plain = explain(model, x, 1, **kw)  # type: ignore[arg-type]
    nhwc = explain(model, x, 1, memory_format="channels_last", **kw)  # type: ignore[arg-type]
    assert float((nhwc - plain).norm() / plain.norm()) < 1e-4
    assert nhwc.is_contiguous()  # answers come back in the usual layout


def test_explain_leaves_the_model_in_the_layout_it_found() -> None:
    model, x = small_cnn(), torch.rand(1, 3, 16, 16)
    assert not any(_weights_channels_last(model))
    explain(model, x, 0, nt_samples=2, seed=0, memory_format="channels_last")
    assert not any(_weights_channels_last(model))
    model.to(memory_format=torch.channels_last)
    explain(model, x, 0, nt_samples=2, seed=0)  # contiguous: nothing to convert
    explain(model, x, 0, nt_samples=2, seed=0, memory_format="auto")
    assert all(_weights_channels_last(model))


def _pointwise_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 1),  # 1x1: "contiguous" in both layouts, told apart by its strides
        nn.BatchNorm2d(8).eval(),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def test_a_channels_last_run_leaves_no_strides_behind() -> None:
    """`Module.to(channels_last)` gives a 1x1 kernel NHWC strides that `is_contiguous()`
    cannot see and `.contiguous()` does not undo; the convolution follows those strides, so
    a leak would make later NCHW runs partly NHWC (bench/engine.py's map change read 0)."""
    model, x = _pointwise_cnn(), torch.rand(1, 3, 12, 12)
    strides = [t.stride() for t in model.parameters() if t.dim() == 4]
    kw = {"nt_samples": 4, "seed": 1, "stdevs": 0.1}
    before = explain(model, x, 2, **kw)  # type: ignore[arg-type]
    explain(model, x, 2, memory_format="channels_last", **kw)  # type: ignore[arg-type]
    assert [t.stride() for t in model.parameters() if t.dim() == 4] == strides
    assert torch.equal(explain(model, x, 2, **kw), before)  # type: ignore[arg-type]
    scheduler = Scheduler(model, chunk_rows=4, memory_format="channels_last")
    scheduler.layouts.apply(MemoryFormat.CHANNELS_LAST)
    assert all(t.stride()[1] == 1 for t in model.parameters() if t.dim() == 4)
    Scheduler(model, chunk_rows=4, memory_format="auto").layouts.apply(MemoryFormat.CONTIGUOUS)
    assert [t.stride() for t in model.parameters() if t.dim() == 4] == strides


def test_auto_measures_once_per_shape_and_keeps_its_choice() -> None:
    model = small_cnn()
    scheduler = Scheduler(model, chunk_rows=4, memory_format="auto")
    spec = make_spec(nt_samples=6, stdevs=0.2)
    x = torch.rand(3, 16, 16)
    first = scheduler.run([ExplainJob(inputs=x, target=1, spec=spec, seed=3)])[0]
    again = scheduler.run([ExplainJob(inputs=x, target=1, spec=spec, seed=3)])[0]
    assert torch.equal(first.attribution, again.attribution)  # same kernels: bit-identical
    (key,) = scheduler.layouts.chosen
    assert scheduler.layouts.chosen[key] in (MemoryFormat.CONTIGUOUS, MemoryFormat.CHANNELS_LAST)
    assert set(scheduler.layouts.seconds[key]) == {"contiguous", "channels_last"}
    scheduler.run([ExplainJob(inputs=torch.rand(3, 12, 12), target=0, spec=spec, seed=1)])
    assert len(scheduler.layouts.chosen) == 2  # one choice per input shape


def test_inputs_without_a_channels_last_form_run_contiguous() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(5, 3))
    attr = explain(model, torch.rand(2, 5), 0, nt_samples=2, seed=0, memory_format="channels_last")
    assert attr.shape == (2, 5)


def test_bad_layouts_name_their_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        explain(small_cnn(), torch.rand(1, 3, 8, 8), 0, memory_format="nhwc")
    assert caught.value.field == "memory_format"
    with pytest.raises(InvalidArgument) as caught:
        parse_config({"model_class": "m:M", "memory_format": "nhwc"})
    assert caught.value.field == "memory_format"
    assert parse_config({"model_class": "m:M"}).memory_format == "channels_last"


def test_chunk_sizes_agree_to_rounding_in_both_layouts() -> None:
    """The chunk-size invariance test_scheduler pins for NCHW holds for NHWC too."""
    model, x = small_cnn(), torch.rand(2, 3, 16, 16)
    kw = {"nt_samples": 8, "seed": 2, "bounds": (0.0, 1.0)}
    for layout in ("contiguous", "channels_last"):
        maps = [
            explain(model, x, [0, 1], nt_samples_batch_size=size, memory_format=layout, **kw)  # type: ignore[arg-type]
            for size in (1, 3, 8, None)
        ]
        for other in maps[1:]:
            torch.testing.assert_close(other, maps[0], rtol=1e-6, atol=1e-9)
