"""The service's OpenAPI 3 document, built from the served model's input columns.

``GET /openapi.json`` answers it, so clients (and the fuzz test) know exactly what a request
may hold: each input column with its JSON type (numbers or booleans for numeric columns, text
for dates and categories, text or numbers for categories of numeric codes, null for a missing
value), in every body MLflow's scoring protocol accepts.
"""

from __future__ import annotations

from typing import Any

from prefect_mlops.mlops.features import FeatureSpec

ERROR = {
    "type": "object",
    "required": ["error_code", "message"],
    "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
}


def _column_types(spec: FeatureSpec) -> dict[str, dict[str, Any]]:
    types: dict[str, dict[str, Any]] = {
        c: {"oneOf": [{"type": "number"}, {"type": "boolean"}], "nullable": True}
        for c in spec.numeric
    }
    types |= {
        c: {
            "type": "string",
            "format": "date-time",
            "nullable": True,
            "example": "2025-10-24T04:46:47",
        }
        for c in spec.datetime
    }
    types |= {
        c: {"type": "string", "nullable": True, "example": values[0] if values else "a"}
        for c, values in spec.categorical.items()
    }
    types |= {
        c: {
            "oneOf": [{"type": "string"}, {"type": "number"}],
            "nullable": True,
            "example": spec.categorical[c][0],
        }
        for c in spec.numbered_categories
    }
    return types


def _request_schemas(spec: FeatureSpec) -> dict[str, Any]:
    types = _column_types(spec)
    columns = spec.input_columns
    record = {
        "type": "object",
        "properties": types,
        "required": columns,
        "additionalProperties": False,
    }
    by_column = {
        "type": "object",
        "properties": {c: {"type": "array", "items": t, "minItems": 1} for c, t in types.items()},
        "required": columns,
        "additionalProperties": False,
    }
    rows = {"type": "array", "items": {"$ref": "#/components/schemas/Record"}, "minItems": 1}
    params = {"type": "object", "description": "Accepted and ignored, as by MLflow."}
    scalar = {"oneOf": [{"type": "number"}, {"type": "string"}], "nullable": True}

    def body(key: str, value: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {key: value, "params": params},
            "required": [key],
            "additionalProperties": False,
        }

    split = {
        "type": "object",
        "properties": {
            "columns": {
                "type": "array",
                "items": {"type": "string", "enum": columns},
                "minItems": len(columns),
                "maxItems": len(columns),
                "uniqueItems": True,
            },
            "data": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "array",
                    "items": scalar,
                    "minItems": len(columns),
                    "maxItems": len(columns),
                },
            },
            "index": {"type": "array", "items": scalar},
        },
        "required": ["columns", "data"],
        "additionalProperties": False,
    }
    return {
        "Record": record,
        "Columns": by_column,
        "ScoringRequest": {
            "oneOf": [
                body("dataframe_split", split),
                body("dataframe_records", rows),
                body("instances", {"oneOf": [rows, {"$ref": "#/components/schemas/Columns"}]}),
                body("inputs", {"oneOf": [rows, {"$ref": "#/components/schemas/Columns"}]}),
            ]
        },
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def openapi_document(model_name: str, spec: FeatureSpec, max_body_bytes: int) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the service for a model with this feature spec."""
    error = {"$ref": "#/components/schemas/Error"}
    predictions = {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array", "items": {"type": "object"}}},
    }
    described = {
        "type": "object",
        "required": ["model", "version", "run_id", "uri"],
        "properties": {k: {"type": "string"} for k in ("model", "version", "run_id", "uri")},
    }
    health = {
        "type": "object",
        "required": ["status", "model", "version"],
        "properties": {
            "status": {"type": "string"},
            "last_reload_error": {"type": "string", "nullable": True},
        },
    }
    reload = {
        "type": "object",
        "required": ["status", "version"],
        "properties": {
            "status": {"type": "string", "enum": ["swapped", "unchanged", "failed"]},
            "version": {"type": "string"},
            "error": {"type": "string", "nullable": True},
        },
    }
    scoring = {
        "summary": "Score rows (MLflow's scoring protocol)",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ScoringRequest"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        },
        "responses": {
            "200": _json(
                predictions,
                "One prediction object per row; X-Model-Version says which version made them.",
            ),
            "400": _json(
                error, "A malformed body, or columns or values that do not fit the model."
            ),
            "408": _json(error, "The body did not arrive in time (MLOPS_SERVING_BODY_TIMEOUT_S)."),
            "413": _json(
                error, f"A body over {max_body_bytes} bytes (MLOPS_SERVING_MAX_BODY_BYTES)."
            ),
            "415": _json(error, "A content type other than application/json or text/csv."),
            "503": _json(
                error,
                "Over the latency budget, or too many requests or body bytes at once; retry "
                "after Retry-After seconds.",
            ),
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"mlops serve: {model_name}",
            "version": "1",
            "description": "MLflow's scoring protocol over a registered pipeline model.",
        },
        "paths": {
            "/invocations": {"post": scoring},
            "/ping": {
                "get": {
                    "responses": {
                        "200": _text("The service is up, with a model."),
                        "503": _json(error, "No model is loaded yet."),
                    }
                }
            },
            "/health": {
                "get": {
                    "responses": {
                        "200": _json(health, "The served version, and the last reload error.")
                    }
                }
            },
            "/version": {
                "get": {"responses": {"200": _json(described, "The served model version.")}}
            },
            "/metrics": {"get": {"responses": {"200": _text("Prometheus text format.")}}},
            "/admin/reload": {
                "post": {
                    "summary": "Load the version the alias points at now, check it, swap it in",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": _json(reload, "Swapped, or already serving that version."),
                        "401": _json(error, "A missing or wrong admin token."),
                        "403": _json(error, "Reloading is off (no MLOPS_SERVING_ADMIN_TOKEN)."),
                        "409": _json(
                            reload, "The new version failed its check; the old one keeps serving."
                        ),
                    },
                }
            },
        },
        "components": {
            "schemas": {"Error": ERROR, **_request_schemas(spec)},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
