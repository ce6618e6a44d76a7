"""The OpenAPI document holds: schemathesis generates requests from it (valid and not) against the app in-process,
over the session's redis-server, with a token; every answer is no server error, has a documented status and
content type, and matches its documented schema. Bounded: a few examples per operation."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from online.redis_store import RedisOnlineStore
from serving_api.app import create_app
from serving_api.auth import hash_token
from tests.serving.conftest import write_repo

pytestmark = pytest.mark.redis

TOKEN = "skw_schema_test"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_answers_match_the_openapi_document(
    tmp_path: Path, redis_url: str, project: str, online: RedisOnlineStore, mode: GenerationMode
) -> None:
    """A repository's app (so ``POST /v1/push`` is there too), its data published on the session's Redis."""
    hashed = hash_token(TOKEN)
    serving = f'  tokens:\n    schema: {{hash: "{hashed}", services: ["*"], push: ["*"]}}\n'
    repo = write_repo(tmp_path, redis_url, project, serving)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(repo))
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and not len(operation.body):
            continue  # GET /health takes nothing that could be wrong
        tested.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)

        check()
    posts = ["POST /get-online-features", "POST /v1/features", "POST /v1/push"]
    assert sorted(tested) == (posts if mode is GenerationMode.NEGATIVE else ["GET /health", *posts])
