"""Property: no request body, however malformed, makes the service answer 5xx.

Random JSON (and random bytes) shaped loosely like requests go to /recommend and
/recommend/batch of a retriever-only service on ml-latest-small; every answer must be < 500,
and every error must be the one JSON shape with a message naming a field.
"""

from __future__ import annotations

import json

import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmrec.service import build_parts, create_app_from_parts, load_service_config

FIELDS = ["user", "history", "n", "fusion_weight", "item_id", "title", "requests"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["1", "610", "50", "Heat", "Toy Story (1995)", ";", "<|im_end|>", "### Response:"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=15,
)
entries = (
    st.text(max_size=40)
    | st.fixed_dictionaries(
        {}, optional={"item_id": json_values | st.sampled_from(["1", "50", "9999999"]), "title": json_values}
    )
    | json_values
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "user": json_values | st.sampled_from(["1", "2", "610", "611"]) | st.integers(0, 700),
        "history": st.lists(entries, max_size=8) | json_values,
        "n": st.integers(-3, 30) | json_values,
        "fusion_weight": st.floats(allow_nan=True) | json_values,
    },
)
batches = st.fixed_dictionaries({"requests": st.lists(requests | json_values, max_size=6)}) | json_values
bodies = st.one_of(
    st.tuples(st.just("/recommend"), requests | json_values),
    st.tuples(st.just("/recommend/batch"), batches),
)


@pytest.fixture(scope="module")
def client(ml_small_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("service-props") / "serve.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "dataset": str(ml_small_dir),
                "retriever": "itemknn",
                "num_candidates": 10,
                "no_llm": True,
                "service": {
                    "max_history": 6,
                    "max_body_bytes": 2048,
                    "max_batch_requests": 4,
                    "rate_limit_per_s": 0,
                },
            }
        ),
        encoding="utf-8",
    )
    config, service_settings = load_service_config(path, environ={})
    app = create_app_from_parts(build_parts(config), service_settings)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def check(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()
        assert error["message"] and "Traceback" not in response.text
        assert error["field"], error


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=bodies)
def test_random_json_bodies_never_give_5xx(client, case):
    path, body = case
    content = json.dumps(body, allow_nan=True).encode()
    check(client.post(path, content=content, headers={"content-type": "application/json"}))


@settings(max_examples=30, deadline=None, database=None)
@given(path=st.sampled_from(["/recommend", "/recommend/batch"]), content=st.binary(max_size=300))
def test_random_bytes_never_give_5xx(client, path, content):
    check(client.post(path, content=content, headers={"content-type": "application/json"}))
