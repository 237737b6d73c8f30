"""The served OpenAPI document: every request limit where clients and schema-driven testers can see it.

Pydantic validates requests against the absolute ceilings of :mod:`twostage_search.service.schemas`; the
endpoints enforce the configured limits of :class:`~twostage_search.service.settings.Settings`, which are
at most those ceilings. :func:`service_openapi` writes the configured values into the generated schema
in place of the ceilings, and states the experiment schema of ``PUT /admin/experiment`` (whose body is
parsed by the endpoint, so that its errors keep their own kind).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from twostage_search.service.experiment import ExperimentConfig
from twostage_search.service.routes import events
from twostage_search.service.settings import Settings

CONFIGURED: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    # (component, path to the field inside it, JSON Schema keyword, Settings field)
    ("SearchRequest", ("query",), "maxLength", "max_query_chars"),
    ("RerankRequest", ("query",), "maxLength", "max_query_chars"),
    ("V1RerankRequest", ("query",), "maxLength", "max_query_chars"),
    ("SearchRequest", ("k",), "maximum", "k_max"),
    ("Filters", ("include_doc_ids",), "maxItems", "max_filter_ids"),
    ("Filters", ("exclude_doc_ids",), "maxItems", "max_filter_ids"),
    ("RerankRequest", ("documents",), "maxItems", "max_rerank_docs"),
    ("V1RerankRequest", ("documents",), "maxItems", "max_rerank_docs"),
    ("RerankDocument", ("text",), "maxLength", "max_doc_chars"),
    ("V1Document", ("text",), "maxLength", "max_doc_chars"),
    ("V1RerankRequest", ("documents", "items"), "maxLength", "max_doc_chars"),  # the string form
)
"""The limits Settings configures, and where each stands in the schema."""


def _set_bound(node: dict[str, Any], keyword: str, value: int) -> bool:
    """Replace ``keyword`` in ``node`` or in the branches of its ``anyOf``/``oneOf`` that state it."""
    if keyword in node:
        node[keyword] = value
        return True
    found = False
    for branch in (*node.get("anyOf", ()), *node.get("oneOf", ())):
        found = _set_bound(branch, keyword, value) or found
    return found


def _field(schema: dict[str, Any], component: str, path: tuple[str, ...]) -> dict[str, Any]:
    node: dict[str, Any] = schema["components"]["schemas"][component]
    for i, key in enumerate(path):
        node = node["properties"][key] if i == 0 else node[key]
    return node


def add_experiment_schema(schema: dict[str, Any]) -> None:
    """State :class:`ExperimentConfig` (names, weights, depths and their bounds) as the body of PUT."""
    models: dict[str, Any] = schema["components"]["schemas"]
    experiment = ExperimentConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in {**experiment.pop("$defs", {}), "ExperimentConfig": experiment}.items():
        if models.setdefault(name, definition) != definition:
            raise RuntimeError(f"OpenAPI component {name!r} is defined twice")
    body = schema["paths"]["/admin/experiment"]["put"]["requestBody"]["content"]["application/json"]
    examples = body["schema"].get("examples")
    body["schema"] = {"$ref": "#/components/schemas/ExperimentConfig"}
    if examples:
        body["schema"]["examples"] = examples


def service_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The app's OpenAPI document with this configuration's limits (built once, then cached on the app)."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)  # generated from the routes and the pydantic models
        for component, path, keyword, setting in CONFIGURED:
            if not _set_bound(_field(schema, component, path), keyword, getattr(settings, setting)):
                raise RuntimeError(f"OpenAPI: {component}.{'.'.join(path)} states no {keyword}")
        add_experiment_schema(schema)
        events.openapi_limits(schema, settings.event_batch_max, settings.event_actions)
        app.openapi_schema = schema
    return app.openapi_schema
