"""A small Python client for the serving API.

>>> with SkewlessClient("http://127.0.0.1:6566") as client:                     # doctest: +SKIP
...     answer = client.get_features({"card_id": [1, 2]}, features=["card_profile:credit_limit"])
>>> answer["features"]["card_profile__credit_limit"]["values"]                  # doctest: +SKIP
[5000.0, None]

Give ``token=`` when the service has ``serving.tokens`` (it is sent as ``Authorization: Bearer <token>``).
HTTP errors come back as :class:`~features.errors.SkewlessError` subclasses: 401 and 403 as
:class:`~features.errors.AccessDeniedError`, 404 as
:class:`~features.errors.UnknownNameError` (with ``.known``), 422 as :class:`InvalidRequestError` (or
:class:`~features.errors.EntityKeyError` for entity keys), 503 as :class:`ServiceUnavailableError`, a failed
on-demand function (500) as :class:`~features.on_demand.OnDemandFunctionError` (with ``.view`` and
``.function``), anything else as :class:`ServerError`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from features.errors import (
    AccessDeniedError,
    EntityKeyError,
    InvalidRequestError,
    ServerError,
    ServiceUnavailableError,
    SkewlessError,
    UnknownNameError,
)
from features.on_demand import OnDemandFunctionError


class SkewlessClient:
    """Looks up features over HTTP; one connection pool per client, so reuse the client."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        token: str | None = None,
        verify: str | bool = True,
    ) -> None:
        """``token``: the bearer token of a service with ``serving.tokens``; ``verify``: for ``https://``, the CA
        bundle (a file) to check the service's certificate with (default: the system's)."""
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        context = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport, headers=headers, verify=context
        )

    def get_features(
        self,
        entities: Mapping[str, Sequence[Any]],
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        request_data: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The columnar answer of ``POST /v1/features`` (see ``LookupResult.to_dict``)."""
        if (features is None) == (feature_service is None):
            raise InvalidRequestError("give exactly one of features=[...] or feature_service=...")
        body: dict[str, Any] = {"entities": {k: list(v) for k, v in entities.items()}}
        if features is not None:
            body["features"] = list(features)
        else:
            body["feature_service"] = feature_service
        if request_data is not None:
            body["request_data"] = dict(request_data)
        return self._call("POST", "/v1/features", body)

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "plan_version": N}``; raises :class:`ServiceUnavailableError` when unhealthy."""
        return self._call("GET", "/health", None)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SkewlessClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            raise ServiceUnavailableError(f"{self.base_url}{path} did not answer in time: {exc}") from exc
        except httpx.TransportError as exc:
            raise ServiceUnavailableError(f"cannot reach {self.base_url}{path}: {exc}") from exc
        try:
            data = response.json()
        except ValueError:
            data = {"error": response.text[:500]}
        if response.status_code == 200:
            answer: dict[str, Any] = data
            return answer
        raise _error_from(response.status_code, data if isinstance(data, dict) else {"error": str(data)})


def _error_from(status: int, data: dict[str, Any]) -> SkewlessError:
    message = str(data.get("error") or data.get("detail") or f"HTTP {status}")
    kind = data.get("type")
    if status in (401, 403):
        return AccessDeniedError(f"HTTP {status}: {message}")
    if status == 404 and "kind" in data and "name" in data:
        return UnknownNameError(str(data["kind"]), str(data["name"]), data.get("known") or [])
    if status in (413, 415, 422):
        return EntityKeyError(message) if kind == "EntityKeyError" else InvalidRequestError(message)
    if status == 503:
        return ServiceUnavailableError(message)
    if status == 404:
        return InvalidRequestError(f"HTTP 404: {message}")
    if kind == "OnDemandFunctionError" and "view" in data and "function" in data:
        return OnDemandFunctionError(
            message,
            view=str(data["view"]),
            function=str(data["function"]),
            exception=str(data.get("exception") or ""),
            output=data.get("output"),
        )
    return ServerError(f"HTTP {status}: {message}")
