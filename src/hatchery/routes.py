"""The app's routes under their full paths. This FastAPI keeps included routers lazily: a
matched route knows only its own part of the path (`/runs/{run_id}`, not
`/api/v1/runs/{run_id}`), so the full templates are worked out once, here."""

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import compile_path


class RouteTable:
    def __init__(self, app: FastAPI) -> None:
        paths = [
            (context, context.path) for context in iter_route_contexts(app.routes) if context.path
        ]
        self._templates = {id(context.original_route): path for context, path in paths}
        self._methods = [
            (compile_path(path)[0], context.methods or set()) for context, path in paths
        ]

    def template(self, route: object) -> str:
        """A matched route's full template: a metric label that never holds an id."""
        return self._templates.get(id(route), "unmatched")

    def allowed_methods(self, path: str) -> list[str]:
        """Every method some route accepts at `path` (for a 405's `Allow`)."""
        return sorted(
            {m for pattern, methods in self._methods if pattern.match(path) for m in methods}
        )
