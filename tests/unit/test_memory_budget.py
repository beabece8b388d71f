"""The memory budget a worker derives when its config sets none, and what it refuses.

Free memory is read from fake cgroup and /proc files under a temporary root; the scheduler's
choices (rows per call, refusals) are checked against the probed cost of one row.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.engine import ExplainJob, Scheduler
from smoothexplain.engine.scheduler import _Run, _saved_bytes
from smoothexplain.engine.spec import make_spec
from smoothexplain.protocol.errors import InvalidArgument, LimitExceeded, status_of
from smoothexplain.serving import memory
from smoothexplain.serving.codec import tensor_to_message
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.service import ExplainService, Incoming

from .analytic import small_cnn

GIB = 2**30
MEMINFO = "MemTotal:       32000000 kB\nMemFree:  1000 kB\nMemAvailable:   20971520 kB\n"


def _root(tmp_path: Path, cgroup_line: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup_line + "\n")
    (tmp_path / "proc/meminfo").write_text(MEMINFO)  # 20 GiB available
    for name, text in files.items():
        path = tmp_path / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_cgroup_v2_room_is_the_limit_less_the_working_set(tmp_path: Path) -> None:
    root = _root(
        tmp_path,
        "0::/kubepods/pod1/worker",
        {
            "kubepods/pod1/worker/memory.max": f"{8 * GIB}\n",
            "kubepods/pod1/worker/memory.current": f"{3 * GIB}\n",
            "kubepods/pod1/worker/memory.stat": f"anon 1\ninactive_file {GIB}\nactive_file 5\n",
        },
    )
    assert memory.free_memory_bytes(root) == 6 * GIB  # 8 − (3 − 1 reclaimable)
    assert memory.default_memory_budget(3, root) == GIB  # half of 6 GiB over 3 workers


def test_cgroup_v1_at_the_hierarchy_root_as_inside_a_container(tmp_path: Path) -> None:
    root = _root(
        tmp_path,
        "4:memory:/docker/0123abcd",  # that path is not mounted inside the container
        {
            "memory/memory.limit_in_bytes": f"{4 * GIB}\n",
            "memory/memory.usage_in_bytes": f"{GIB}\n",
            "memory/memory.stat": "total_inactive_file 0\n",
        },
    )
    assert memory.free_memory_bytes(root) == 3 * GIB
    assert memory.default_memory_budget(1, root) == 3 * GIB // 2


@pytest.mark.parametrize(
    ("line", "files"),
    [
        ("0::/", {"memory.max": "max\n", "memory.current": f"{GIB}\n"}),
        ("4:memory:/", {"memory/memory.limit_in_bytes": "9223372036854771712\n"}),
        ("4:cpu,cpuacct:/", {}),
    ],
)
def test_without_a_cgroup_limit_the_host_s_available_memory_counts(
    tmp_path: Path, line: str, files: dict[str, str]
) -> None:
    root = _root(tmp_path, line, files)
    assert memory.free_memory_bytes(root) == 20 * GIB
    assert memory.default_memory_budget(4, root) == 20 * GIB // 2 // 4


def test_a_tight_host_beats_a_loose_cgroup_and_nothing_readable_is_no_budget(
    tmp_path: Path,
) -> None:
    root = _root(
        tmp_path,
        "0::/",
        {"memory.max": f"{64 * GIB}\n", "memory.current": f"{GIB}\n"},
    )
    assert memory.free_memory_bytes(root) == 20 * GIB  # MemAvailable is lower
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert memory.free_memory_bytes(empty) is None
    assert memory.default_memory_budget(2, empty) is None


def test_an_explicit_budget_is_kept_and_the_automatic_one_is_cpu_only() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert memory.serving_memory_budget(300, True, cpu) == (300 * 2**20, False)
    assert memory.serving_memory_budget(None, False, cpu) == (None, False)
    assert memory.serving_memory_budget(None, True, cuda) == (None, False)
    budget, hard = memory.serving_memory_budget(None, True, cpu)
    assert hard and budget is not None
    free = memory.free_memory_bytes()
    assert free is not None and 0 < budget <= free // 2


# -- the scheduler under a hard budget ----------------------------------------------------


def _job(size: int, nt_samples: int = 6) -> ExplainJob:
    x = torch.randn(3, size, size, generator=torch.Generator().manual_seed(size))
    return ExplainJob(x, 1, make_spec(nt_samples=nt_samples, stdevs=0.1), seed=0)


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = small_cnn()
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        out: torch.Tensor = self.inner(x)
        return out


def test_a_row_whose_tensors_alone_exceed_the_budget_is_refused_without_a_call() -> None:
    model = _Counting()
    job = _job(64)  # 48 KiB a row, 4 row sizes = 192 KiB
    scheduler = Scheduler(model, 8, memory_budget=100_000, refuse_over_budget=True)
    with pytest.raises(LimitExceeded, match="memory budget of 1 MiB") as info:
        scheduler.run([job])
    assert info.value.field == "input" and status_of(info.value).http == 400
    assert model.rows == [] and scheduler.stats.chunk_rows == []


def test_a_row_whose_probed_cost_exceeds_the_budget_is_refused_before_any_pass() -> None:
    model = _Counting()
    small, big = _job(8), _job(64)
    row_tensors = 4 * big.inputs.numel() * 4
    scheduler = Scheduler(model, 8, memory_budget=2 * row_tensors, refuse_over_budget=True)
    with pytest.raises(LimitExceeded, match=r"shape \(3, 64, 64\)"):
        scheduler.run([small, big])  # the small job's group comes first: it is not run either
    assert scheduler.stats.chunk_rows == []
    assert all(rows in (1, 2) for rows in model.rows)  # probes only, no pass
    assert max(scheduler.row_bytes.values()) > 2 * row_tensors


def test_the_same_budget_as_a_target_still_runs_one_row_a_call() -> None:
    """An explicit memory_budget_mb keeps its old meaning: over budget, one row per call."""
    big = _job(64)
    scheduler = Scheduler(_Counting(), 8, memory_budget=100_000)
    (result,) = scheduler.run([big])
    assert result.samples == 6 and scheduler.stats.chunk_rows == [1] * 6


def test_a_big_input_runs_in_calls_that_fit_the_budget() -> None:
    job = _job(96, nt_samples=20)
    probe = Scheduler(small_cnn(), 64, memory_budget=1)
    per_row = probe._row_cost(_Run(job))
    budget = 5 * per_row + per_row // 2
    scheduler = Scheduler(small_cnn(), 64, memory_budget=budget, refuse_over_budget=True)
    (result,) = scheduler.run([job])
    assert scheduler.stats.chunk_rows == [5, 5, 5, 5]
    assert max(scheduler.stats.chunk_rows) * per_row <= budget and result.samples == 20


class _Chain(nn.Module):
    """sin ∘ sin ∘ … : each step saves its input for backward; `alive` counts, at the last
    step, how many earlier activations still exist."""

    def __init__(self) -> None:
        super().__init__()
        self.alive = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refs: list[weakref.ref[torch.Tensor]] = []
        h = x
        for _ in range(6):
            h = torch.sin(h)
            refs.append(weakref.ref(h))
        self.alive = sum(ref() is not None for ref in refs[:-1])
        return torch.stack([h.flatten(1).sum(1), -h.flatten(1).sum(1)], dim=1)


def test_the_cost_probe_keeps_no_activations() -> None:
    """Probing a row far over the budget must not itself hold what it measures."""
    model = _Chain()
    job = _job(16)
    scheduler = Scheduler(model, 8, memory_budget=1)
    assert _saved_bytes(scheduler, _Run(job), 2) > 0
    assert model.alive == 0
    scores = model(job.inputs.unsqueeze(0).requires_grad_(True))  # a real forward keeps them
    assert model.alive == 5 and scores.requires_grad


# -- through the service ------------------------------------------------------------------

CONFIG = parse_config(
    {
        "model_class": "tests.unit.analytic:small_cnn",
        "nt_samples_batch_size": 16,
        "preprocess": {"size": 8, "resize": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "defaults": {"nt_samples": 8, "top_k": 3},
    }
)


def _service(monkeypatch: pytest.MonkeyPatch, free: int | None) -> ExplainService:
    monkeypatch.setattr(memory, "free_memory_bytes", lambda root=None: free)
    monkeypatch.setattr(memory, "worker_count", lambda: 2)
    labels = {i: f"class{i}" for i in range(5)}
    return ExplainService(small_cnn(), CONFIG, labels, torch.device("cpu"), "tiny")


def _explain(service: ExplainService, size: int) -> pb.Response:
    x = torch.randn(3, size, size, generator=torch.Generator().manual_seed(size))
    request = pb.Request(input=pb.Input(tensor=tensor_to_message(x)), explain=True)
    (answer,) = service.handle([Incoming(request.SerializeToString(), from_grpc=True)])
    return pb.Response.FromString(answer.body)  # type: ignore[arg-type]


def test_the_service_refuses_what_its_derived_budget_cannot_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = _service(monkeypatch, free=8 * 2**20)  # 8 MiB free: 2 MiB a worker
    assert service.scheduler.memory_budget == 2 * 2**20
    assert service.scheduler.refuse_over_budget
    big = _explain(service, 256)  # 768 KiB a row: 3 MiB of row tensors alone
    assert "memory budget of 2 MiB" in big.error.message and big.error.field == "input"
    assert big.error.http_status == 400 and not big.attribution.data
    small = _explain(service, 8)
    assert not small.error.message and small.rows == 8


def test_the_service_sizes_passes_to_its_derived_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    service = _service(monkeypatch, free=64 * 2**20)  # 16 MiB a call
    response = _explain(service, 160)
    assert not response.error.message and response.rows == 8
    (per_row,) = service.scheduler.row_bytes.values()
    rows = service.scheduler.stats.chunk_rows
    assert max(rows) == min(16, 16 * 2**20 // per_row) < 8 and sum(rows) == 8


def test_turning_the_automatic_budget_off_keeps_the_old_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory, "free_memory_bytes", lambda root=None: 1)
    off = parse_config({**_raw(), "auto_memory_budget": False})
    service = ExplainService(small_cnn(), off, {}, torch.device("cpu"), "tiny")
    assert service.scheduler.memory_budget is None
    explicit = parse_config({**_raw(), "memory_budget_mb": 1})
    service = ExplainService(small_cnn(), explicit, {}, torch.device("cpu"), "tiny")
    assert service.scheduler.memory_budget == 2**20 and not service.scheduler.refuse_over_budget


def _raw() -> dict[str, object]:
    return {"model_class": "tests.unit.analytic:small_cnn"}


# -- the knobs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"auto_memory_budget": "yes"}, "auto_memory_budget"),
        ({"memory_format": 3}, "memory_format"),  # wrong type and wrong value: one name
        ({"memory_format": "nhwc"}, "memory_format"),
        ({"nt_samples_batch_size": "8"}, "nt_samples_batch_size"),
        ({"nt_samples_batch_size": 0}, "nt_samples_batch_size"),
        ({"limits": {"max_aspect_ratio": 0.5}}, "limits.max_aspect_ratio"),
        ({"limits": {"max_aspect_ratio": float("nan")}}, "limits.max_aspect_ratio"),
        ({"limits": {"max_aspect_ratio": float("inf")}}, "limits.max_aspect_ratio"),
        ({"limits": {"max_aspect_ratio": True}}, "limits.max_aspect_ratio"),
    ],
)
def test_the_memory_knobs_are_validated(raw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_config({**_raw(), **raw})
    assert info.value.field == field


def test_the_memory_knobs_default_to_on_and_100_to_1() -> None:
    config = parse_config(_raw())
    assert config.auto_memory_budget and config.memory_budget_mb is None
    assert config.limits.max_aspect_ratio == 100.0
