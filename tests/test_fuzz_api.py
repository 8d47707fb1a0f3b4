"""The dashboard's API fuzzed from its own OpenAPI description (schemathesis) against the REAL
station: whatever the requests, no 500 and no crash, with and without the engineer's token.

    .venv/bin/python -m pytest tests/test_fuzz_api.py -q            # 25 examples per operation
    KENPIN_FUZZ_EXAMPLES=200 .venv/bin/python -m pytest tests/test_fuzz_api.py -q -m slow

Each operation gets its own hypothesis run (schemathesis' pytest plugin does not collect with
this pytest), so a failure names the operation and shows the smallest request that caused it.
"""
from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from device.dashboard import create_app  # noqa: E402
from tests.test_dashboard_support import TOKEN, engineer_settings, start_station, wait_for  # noqa: E402

EXAMPLES = int(os.environ.get("KENPIN_FUZZ_EXAMPLES", "25"))
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def fuzz_station(tiny_line, tiny_bundle, tmp_path_factory):
    st = start_station(tmp_path_factory.mktemp("fuzz-station"), tiny_line, tiny_bundle, rate_hz=5.0)
    wait_for(lambda: st.store.query(limit=1, verdict="defect"), timeout=30)
    yield st
    st.stop()


@pytest.fixture(scope="module")
def operations(fuzz_station):
    app = create_app(fuzz_station, engineer_settings())
    # The event and live streams never end by design; they have their own tests.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path=["/api/events", "/api/live.mjpg"])
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(operation, headers: dict, examples: int) -> int:
    """Run ``examples`` generated requests against one operation; returns how many were sent."""
    sent = 0

    @given(case=operation.as_strategy())
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        nonlocal sent
        case.call_and_validate(headers=headers, checks=[not_a_server_error])
        sent += 1

    run()
    return sent


@pytest.mark.parametrize("who", ["engineer", "anonymous"])
def test_no_server_errors(operations, fuzz_station, who):
    headers = AUTH if who == "engineer" else {}
    assert len(operations) >= 15  # the whole API is described, not a corner of it
    sent = {op.label: fuzz(op, headers, EXAMPLES) for op in operations}
    print(f"{who}: {sum(sent.values())} requests over {len(sent)} operations, no 5xx")
    assert all(n > 0 for n in sent.values()), sent
    assert fuzz_station.running and fuzz_station.frames_flowing()  # still inspecting
