"""The catalog in the browser: ``skewless ui``, also under ``/ui/`` of ``skewless serve``.

Server-rendered Jinja2 pages (``serving_api/templates/``) and one stylesheet (``serving_api/static/``), no
JavaScript: an index of the entities, views, on-demand views, services, features and training sets, and a page
per object with its definition, where it is defined, its lineage, and for a stored view its online freshness,
last runs and a chart per feature of what each run wrote (see :mod:`serving_api.catalog_data`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from features.errors import OnlineStoreError, RegistryError, SkewlessError, UnknownNameError
from features.redaction import redact_text
from serving_api.catalog_data import Catalog

if TYPE_CHECKING:
    from features.store import FeatureStore

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
DEFAULT_PORT = 6567
templates = Jinja2Templates(directory=HERE / "templates")


def create_catalog_app(store: FeatureStore) -> FastAPI:
    """The catalog of ``store``'s repository as an app of its own (mount it, or run it with uvicorn). It reads
    through ``store`` and does not close it."""
    catalog = Catalog(store)
    app = FastAPI(title="skewless catalog", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(request: Request, template: str, build: Any, *args: Any) -> Response:
        try:
            return templates.TemplateResponse(
                request, template, {"page": build(*args), "repo": store.config.project, "link": _linker(app, request)}
            )
        except UnknownNameError as exc:
            return _error_page(request, 404, str(exc))
        except (RegistryError, OnlineStoreError) as exc:
            return _error_page(request, 503, str(exc))
        except SkewlessError as exc:
            return _error_page(request, 500, str(exc))
        except Exception:
            logger.exception("the catalog page %s failed", request.url.path)
            return _error_page(request, 500, "internal error; see the server log")

    @app.get("/", response_class=HTMLResponse, name="index")
    def index(request: Request) -> Response:
        return page(request, "index.html", catalog.index)

    @app.get("/entities/{name}", response_class=HTMLResponse, name="entity")
    def entity(request: Request, name: str) -> Response:
        return page(request, "entity.html", catalog.entity, name)

    @app.get("/views/{name}", response_class=HTMLResponse, name="view")
    def view(request: Request, name: str) -> Response:
        return page(request, "view.html", catalog.view, name)

    @app.get("/services/{name}", response_class=HTMLResponse, name="service")
    def service(request: Request, name: str) -> Response:
        return page(request, "service.html", catalog.service, name)

    @app.get("/features/{view}/{feature}", response_class=HTMLResponse, name="feature")
    def feature(request: Request, view: str, feature: str) -> Response:
        return page(request, "feature.html", catalog.feature, view, feature)

    @app.get("/training-sets/{set_id}", response_class=HTMLResponse, name="training_set")
    def training_set(request: Request, set_id: int) -> Response:
        return page(request, "training_set.html", catalog.training_set, set_id)

    return app


def _linker(app: FastAPI, request: Request) -> Any:
    """``link(name, **params)`` for the templates: a page's path, under wherever the catalog is mounted
    (``request.url_for`` would look the name up in the outer app's routes)."""
    base = request.scope.get("root_path", "").rstrip("/")

    def link(route: str, **params: Any) -> str:
        return base + app.url_path_for(route, **{k: str(v) for k, v in params.items()})

    return link


def _error_page(request: Request, status: int, message: str) -> Response:
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "message": redact_text(message), "repo": None, "link": _linker(request.app, request)},
        status_code=status,
    )


def register(subparsers: Any) -> None:
    """Add ``ui`` to the CLI's subcommands."""
    from serving_api.commands import add_exposure_flags

    p: argparse.ArgumentParser = subparsers.add_parser(
        "ui", help="browse the repository's catalog in a web browser: objects, lineage, freshness, runs, charts"
    )
    p.add_argument("--repo", default=".", help="feature repository folder (default: here)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default: {DEFAULT_PORT})")
    add_exposure_flags(p)
    p.set_defaults(handler=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    import uvicorn

    from features.console import console
    from features.store import FeatureStore
    from serving_api.commands import check_exposure, listen_socket

    check_exposure(args.host, False, args.insecure_no_auth)  # the standalone catalog has no authentication
    with FeatureStore(args.repo) as store:
        store.plan_version()  # no plan applied: say so now, not on every page
        store.online_store()  # opened once here, before requests in several threads ask for it (it connects lazily)
        listener = listen_socket(args.host, args.port)
        console.print(f"catalog of {store.config.root} at http://{args.host}:{listener.getsockname()[1]}/")
        server = uvicorn.Server(uvicorn.Config(create_catalog_app(store), log_level="warning"))
        try:
            server.run(sockets=[listener])
        except KeyboardInterrupt:
            pass
        finally:
            listener.close()
    return 0
