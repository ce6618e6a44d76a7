"""``POST /v1/push``: fresh rows for a view, served at once and kept for its next materialization.

The body names the view and gives its source columns as JSON lists, like a lookup's ``entities``; times are
ISO-8601 text (``Z`` or an offset; naive times are UTC), non-finite floats ``"NaN"``, ``"Infinity"``,
``"-Infinity"``. It runs :meth:`features.store.FeatureStore.push` in the worker's thread pool (a Parquet write and
one Redis script). Answers: 200 ``{"view", "rows", "entities", "served"}``; 404 for an unknown view; 422 for
a missing, extra or mistyped column, a duplicate row, a view that takes no pushes or more than the rows allowed
per request; 409 when the online store serves the view from another definition (materialize it first); 503
when the online store or the registry cannot be reached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from features.errors import PushConflictError
from serving_api.app import LOOKUP_ERRORS, Caps, ErrorAnswer, JSONAnswer, _error, _error_answer
from serving_api.auth import Grant
from serving_api.guard import GRANT

if TYPE_CHECKING:
    from features.store import FeatureStore

PUSH_PATH = "/v1/push"


class PushRequest(BaseModel):
    """Rows for one view: its source columns, one list of values each, equal lengths."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "view": "card_profile",
                    "rows": {
                        "card_id": [7],
                        "updated_at": ["2024-05-01T12:00:00Z"],
                        "ingested_at": ["2024-05-01T12:00:01Z"],
                        "credit_limit": [5000.0],
                        "balance": [120.0],
                        "card_tier": ["gold"],
                        "is_blocked": [False],
                    },
                }
            ]
        },
    )

    view: str = Field(description="a feature view without windowed aggregations")
    rows: dict[str, list[Any]] = Field(description="the view's source columns: one list of values per column")


class PushAnswer(BaseModel):
    view: str
    rows: int = Field(description="rows computed and kept for the view's next materialization")
    entities: int = Field(description="entities those rows cover")
    served: int = Field(description="entities now served the pushed row (the others already had a newer one)")


PUSH_ERRORS = {
    **LOOKUP_ERRORS,
    403: {"model": ErrorAnswer, "description": "the token may not push to this view"},
    404: {"model": ErrorAnswer, "description": "unknown view"},
    409: {"model": ErrorAnswer, "description": "the online store serves the view from another definition"},
}


def add_push_route(app: FastAPI, store: FeatureStore, caps: Caps) -> None:
    """``POST /v1/push`` on ``app``, writing through ``store`` (the repository's); a request may carry at most
    ``caps`` rows and columns, for a view its token may push to."""

    @app.post(
        PUSH_PATH,
        response_class=JSONAnswer,
        summary="Push fresh rows to a feature view",
        responses={200: {"model": PushAnswer}, **PUSH_ERRORS},
    )
    def push(body: PushRequest, request: Request) -> Response:
        """Compute the view's features from the rows (the same expressions and evaluator as a materialization),
        serve each entity's newest row at once unless a newer one is served, and keep the rows for the view's
        next materialization (then training sets see them)."""
        grant: Grant = request.scope[GRANT]
        if not grant.may_push(body.view):
            allowed = ", ".join(sorted(grant.push)) or "(none)"
            return _error(
                403,
                "PermissionError",
                f"token '{grant.name}' may not push to view '{body.view}'; it may push to: {allowed}",
            )
        try:
            caps.check(body.rows, "rows")
            return JSONAnswer(store.push(body.view, body.rows).to_dict())
        except PushConflictError as exc:
            return _error(409, type(exc).__name__, str(exc))
        except Exception as exc:
            return _error_answer(exc)
