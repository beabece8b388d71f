"""Faults against a real TorchServe: a worker killed mid-batch, out of memory in a chunk, client
deadlines shorter than the work, and the model's responseTimeout (a full disk: test_disk_full.py).

The models are the demo weights behind `reliability/faulty.py`, which can sleep in explain-sized
calls (so work is long enough to be interrupted), raise torch.OutOfMemoryError above a row
count, and log every call to a file the tests count. The scenarios are in
`reliability/scenarios.py`; `make soak` repeats them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability import scenarios
from reliability.expected import LocalEngine
from reliability.faults import build_fault_store

from smoothexplain.ops.launcher import TorchServeInstance

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kit(
    tmp_path_factory: pytest.TempPathFactory, demo_artifacts: Path
) -> Iterator[scenarios.FaultKit]:
    root = tmp_path_factory.mktemp("faults")
    models = build_fault_store(root / "store", demo_artifacts, root)
    with TorchServeInstance(root / "store", models, root / "ts") as server:
        kit = scenarios.FaultKit(server, root, LocalEngine())
        yield kit
        kit.close()


def test_a_worker_killed_mid_batch_fails_its_requests_fast_and_comes_back(
    kit: scenarios.FaultKit, record_property: pytest.RecordProperty
) -> None:
    result = scenarios.kill_mid_batch(kit)
    record_property("killed_batch_outcomes", "; ".join(sorted(result.outcomes)))
    # Every request got an answer (a hang would have raised): "Worker died." for the batch
    # that was running, an exact answer from the new worker for any still queued.
    assert result.failed_fast >= 1
    assert result.failed_fast + result.served_exactly == len(result.outcomes) == 4
    assert result.exact_after_restart


def test_an_out_of_memory_chunk_is_halved_and_the_answers_stay_exact(
    kit: scenarios.FaultKit,
) -> None:
    result = scenarios.oom_split(kit)
    assert result.answers == result.exact == 2
    assert result.oom_events >= 1  # the injection did fire
    assert result.largest_call_after_oom <= 8  # and the halved size was kept


def test_a_request_whose_client_gave_up_in_the_queue_is_not_computed(
    kit: scenarios.FaultKit,
) -> None:
    result = scenarios.deadline_in_queue(kit)
    assert result.code == "DEADLINE_EXCEEDED" and result.first_status == 200
    assert result.chunks == result.chunks_of_first  # none for the abandoned request


def test_work_for_a_client_that_gave_up_stops_at_the_next_chunk(
    kit: scenarios.FaultKit,
) -> None:
    result = scenarios.deadline_while_running(kit)
    assert result.code == "DEADLINE_EXCEEDED"
    assert result.chunks < result.chunks_asked  # stopped early (about 1 s / 0.2 s chunks)
    assert result.worker_kept


def test_a_batch_longer_than_response_timeout_is_answered_and_the_worker_kept(
    kit: scenarios.FaultKit,
) -> None:
    result = scenarios.response_timeout_budget(kit)
    assert (result.status, result.code) == (504, "DEADLINE_EXCEEDED")
    assert "responseTimeout" in result.message
    assert result.predict_ok and result.worker_kept


def test_a_single_call_longer_than_response_timeout_costs_a_worker_restart(
    kit: scenarios.FaultKit,
) -> None:
    result = scenarios.single_long_call(kit)
    assert result.status in (500, 507) and "Worker died" in result.message  # TorchServe's
    assert result.predicts_after


def test_explanations_are_admitted_by_cost_and_the_rest_answered_at_once(
    kit: scenarios.FaultKit, record_property: pytest.RecordProperty
) -> None:
    result = scenarios.costly_batch(kit)
    record_property("costly_outcomes", "; ".join(result.outcomes))
    status, field, message = result.too_dear
    assert (status, field) == (400, "options.nt_samples") and "max_batch_seconds=4" in message
    assert result.small_ok
    served = result.outcomes.count("200")
    assert served >= 1 and result.exact == served  # what was computed is exact
    assert all(o in ("200", "503 UNAVAILABLE") for o in result.outcomes)
    assert result.chunks == served * result.chunks_per_big  # nothing for the refused ones
    assert served < 3  # three (4.8 s of sleep) do not fit in one 4 s batch (they arrive together)
