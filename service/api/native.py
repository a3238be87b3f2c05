"""The native protocol: ``POST /v1/models/{name}/predict``, ``GET /v1/models[/{name}]``.

``GET /v1/models`` answers both native clients and OpenAI's SDK: ``{"object": "list", "data":
[{"id", "object": "model", "created", "owned_by", ...our fields}], "models": [...our fields]}``;
``GET /v1/models/{name}`` is one such ``data`` entry, so ``models.retrieve`` works too.

Requests are validated here, before they cross into a worker: a client mistake is answered
with a 4xx from the API server and never reaches (or kills) an inference worker. Accepted
inputs go through the dispatch core; errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from starlette.responses import Response

from service import metrics
from service.api.auth import require_api_key
from service.api.dispatch import deadline_for
from service.api.errors import ApiError, describe_validation, error_responses, json_response
from service.api.images import query_parameters, takes_upload, uploaded_images
from service.api.openai_schema import model_entry, model_list
from service.api.state import ModelRoute, ServiceState, service_state
from service.api.uploads import media_type, read_json
from service.codecs import FLOAT32_MAX
from service.core.repository import ModelSpec

__all__ = ["FLOAT32_MAX", "PredictResponse", "register", "request_model_for"]


def request_model_for(spec: ModelSpec) -> type[BaseModel]:
    """The pydantic model of ``{"inputs": [...]}`` for one model's declared input limits, with
    ``parameters`` when its output kind takes some, and its input kind's grouped form when it
    has one (a pair model: ``{"query": ..., "documents": [...]}`` instead of ``inputs``)."""
    limits = spec.inputs
    item: Any = limits.codec.item_type(limits)
    many: Any = Annotated[list[item], Field(min_length=limits.min_items, max_length=limits.max_items)]
    grouped = limits.codec.grouped_fields(limits)
    fields: dict[str, Any] = {"inputs": (many | None, None) if grouped else (many, ...)}
    fields.update({name: (kind | None, None) for name, kind in grouped.items()})
    options: Any = spec.outputs.codec.parameters_type(spec.outputs)
    if options is not None:
        fields["parameters"] = (options | None, None)  # classification: top_k, raw_scores
    validators: dict[str, Any] = {}
    if grouped:
        names = " and ".join(repr(name) for name in grouped)

        def one_form(request: BaseModel) -> BaseModel:
            values = dict(request)
            given = [name for name in grouped if values[name] is not None]
            if values["inputs"] is not None:
                if given:
                    raise ValueError(f"give either 'inputs' or {names}, not both")
            elif len(given) != len(grouped):
                raise ValueError(f"give 'inputs', or {names}")
            return request

        validators["one_form"] = model_validator(mode="after")(one_form)
    model: type[BaseModel] = create_model(
        f"{spec.name}PredictRequest",
        __config__=ConfigDict(extra="forbid", title=f"{spec.name}PredictRequest"),
        __validators__=validators,
        **fields,
    )
    return model


def request_inputs(spec: ModelSpec, parsed: BaseModel) -> list[Any]:
    """The inputs of a validated predict request, in either of its forms."""
    values = dict(parsed)
    inputs: list[Any] | None = values["inputs"]
    if inputs is not None:
        return inputs
    return spec.inputs.codec.ungroup(values)


class PredictResponse(BaseModel):
    model: str
    version: str
    outputs: list[Any]


async def predict(request: Request, name: str) -> Response:
    """Validate ``{"inputs": [...]}`` for model ``name`` and answer its outputs, in input order."""
    state = service_state(request)
    started, arrived = time.perf_counter(), time.monotonic()
    code = 500
    try:
        require_api_key(request, name)
        route = state.route(name)
        state.dispatcher.precheck(route)
        settings = state.settings
        deadline = deadline_for(request.headers, settings, arrived)
        content_type = media_type(request)
        if takes_upload(route.spec, content_type):  # an image model's raw or multipart body
            parameters = query_parameters(request, route.spec)
            inputs: list[Any] = list(await uploaded_images(request, route.spec, settings, content_type))
        else:
            data = await read_json(request, settings.max_body_bytes, settings.body_timeout)
            try:
                parsed = route.request_model.model_validate(data)
            except ValidationError as exc:
                raise ApiError(422, describe_validation(exc)) from None
            parameters = getattr(parsed, "parameters", None)
            inputs = request_inputs(route.spec, parsed)
        result = await state.dispatcher.predict(route, request, inputs, deadline)
        outputs = route.spec.outputs
        answer = outputs.codec.native(outputs, result.outputs, parameters)
        code = 200
        return json_response({"model": name, "version": route.spec.version, "outputs": answer})
    except ApiError as exc:
        code = exc.status
        return exc.response()
    finally:
        state.observe(name, metrics.PREDICT_ENDPOINT, started, code)


async def predict_unknown(request: Request, name: str) -> Response:
    """A model that is not served (each served model has its own route): 404, counted."""
    return await predict(request, name)


async def list_models(request: Request) -> Response:
    """The served models, for native clients (``models``) and OpenAI's ``models.list()`` (``data``)."""
    require_api_key(request)
    state = service_state(request)
    described = [describe(state, route) for route in state.routes.values()]
    document = model_list([model_entry(entry["name"], state.started_at, entry) for entry in described])
    document["models"] = described
    return json_response(document)


async def get_model(request: Request, name: str) -> Response:
    """One model's description, with OpenAI's ``id``/``object``/``created``/``owned_by`` first."""
    require_api_key(request, name)
    state = service_state(request)
    return json_response(model_entry(name, state.started_at, describe(state, state.route(name))))


def describe(state: ServiceState, route: ModelRoute) -> dict[str, Any]:
    spec = route.spec
    return {
        "name": spec.name,
        "version": spec.version,
        "task": spec.task,
        "description": spec.description,
        "inputs": spec.inputs.model_dump(
            exclude_none=True, exclude={} if spec.inputs.tensors else {"tensors"}
        ),
        "max_batch_size": route.max_batch_size,
        "max_batch_tokens": route.max_batch_tokens,
        "workers": route.workers,
        "max_queue_size": route.max_queue_size,
        "grad_mode": state.settings.grad_mode,
        "device": route.device,
    }


def register(app: FastAPI, state: ServiceState) -> None:
    """One predict route per served model (so the OpenAPI document has its precise request
    schema), a catch-all for unknown models, and the model listing."""
    for name, route in state.routes.items():
        schema = route.request_model.model_json_schema()
        app.add_api_route(
            f"/v1/models/{name}/predict",
            _bind(predict, name),
            methods=["POST"],
            response_model=PredictResponse,
            responses=error_responses(400, 401, 408, 413, 415, 422, 503, 504),
            summary=f"Run {name} on a list of inputs",
            tags=["predict"],
            openapi_extra={
                "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
            },
        )
    app.add_api_route("/v1/models/{name}/predict", predict_unknown, methods=["POST"], include_in_schema=False)
    app.add_api_route(
        "/v1/models", list_models, methods=["GET"], tags=["models"], responses=error_responses(401)
    )
    app.add_api_route(
        "/v1/models/{name}",
        get_model,
        methods=["GET"],
        tags=["models"],
        responses=error_responses(401, 404, 422),
    )


def _bind(
    handler: Callable[[Request, str], Awaitable[Response]], name: str
) -> Callable[[Request], Awaitable[Response]]:
    """``handler`` for one model's own route (its path has no ``{name}`` parameter)."""

    async def endpoint(request: Request) -> Response:
        return await handler(request, name)

    endpoint.__name__ = f"predict_{name}"
    return endpoint
