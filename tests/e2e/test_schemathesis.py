"""Schemathesis against the service's own OpenAPI document, for every operation: no 5xx, and
every answer (status, content type, body) is one the document declares.

schemathesis's lazy pytest loader (``schemathesis.pytest.from_fixture``) does not run under this
pytest, so each operation's strategy is driven with Hypothesis directly.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import ServerProcess

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
SERVED = ("minilm", "reference")
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
EXAMPLES = 25
# schemathesis's default answers to invalid data, plus 413: the v2 codec answers a shape past the
# model's limits with 413 even when another part of the request is invalid too
REJECTION_STATUSES = [
    "400",
    "401",
    "403",
    "404",
    "405",
    "406",
    "409",
    "413",
    "415",
    "422",
    "428",
    "429",
    "5xx",
]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REJECTION_STATUSES}}}
)
# the protocols' model routes: each must be in the document and exercised
REQUIRED = {
    "POST /v1/models/minilm/predict",
    "POST /v1/models/reference/predict",
    "POST /v2/models/minilm/infer",
    "POST /v2/models/reference/versions/{version}/infer",
    "GET /v2/models/{name}",
    "GET /v2/models/{name}/ready",
    "GET /v2/health/ready",
    "GET /v2",
    "POST /v1/embeddings",
    "GET /v1/models",
    "GET /v1/models/{name}",
}


def run_operation(operation: Any, mode: schemathesis.GenerationMode, path_parameters: dict[str, str]) -> None:
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=30)

    check()


def describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "\n".join([str(exc), *(describe(inner) for inner in exc.exceptions)])
    return f"{type(exc).__name__}: {exc}"


def test_every_operation_conforms_to_the_openapi_document(server: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=CONFIG, timeout=30)
    failures: list[str] = []
    tested = 0
    covered: set[str] = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        has_name = any(parameter.name == "name" for parameter in operation.path_parameters)
        # generated names are almost never served ones: run each such operation against every model too
        variants = [{}, *({"name": name} for name in SERVED)] if has_name else [{}]
        for mode in MODES:
            for path_parameters in variants:
                label = f"{operation.label} {mode.value} {path_parameters or ''}"
                try:
                    run_operation(operation, mode, path_parameters)
                except Unsatisfiable:
                    continue  # e.g. no negative data for an operation without parameters or body
                except (Exception, BaseExceptionGroup) as exc:  # report every failing operation
                    failures.append(f"{label}:\n{describe(exc)}")
                tested += 1
                covered.add(operation.label)
    assert tested >= 8  # every operation ran at least once (positive)
    assert not REQUIRED - covered, f"operations not exercised: {sorted(REQUIRED - covered)}"
    if failures:
        pytest.fail("\n\n".join(failures)[:20_000], pytrace=False)
    assert server.client.get("/health/ready").status_code == 200


NEW_KIND_OPERATIONS = {
    "POST /v1/rerank",
    "POST /v2/rerank",
    "POST /v1/models/reranker/predict",  # pairs, or {query, documents}
    "POST /v2/models/reranker/infer",  # BYTES [N, 2]
    "POST /v1/models/classifier/predict",  # parameters: top_k, raw_scores
    "POST /v2/models/classifier/infer",  # the classification extension on its output
    "POST /v1/models/image_classifier/predict",  # base64 images
    "POST /v2/models/image_classifier/infer",  # BYTES [N] or UINT8 [N, H, W, 3]
    "POST /v1/models/scorer/predict",  # named tensors, each by name
    "POST /v2/models/scorer/infer",  # FP32 and BOOL tensors in, FP32 and INT64 out
}


def test_rerank_and_classifier_operations_conform_to_the_openapi_document() -> None:
    with ServerProcess(serve=["reranker", "classifier", "image_classifier", "scorer"]) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=CONFIG, timeout=30)
        failures: list[str] = []
        covered: set[str] = set()
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.label not in NEW_KIND_OPERATIONS:
                continue
            for mode in MODES:
                try:
                    run_operation(operation, mode, {})
                except Unsatisfiable:
                    continue
                except (Exception, BaseExceptionGroup) as exc:  # report every failing operation
                    failures.append(f"{operation.label} {mode.value}:\n{describe(exc)}")
                covered.add(operation.label)
        assert covered == NEW_KIND_OPERATIONS
        if failures:
            pytest.fail("\n\n".join(failures)[:20_000], pytrace=False)
        assert server.client.get("/health/ready").status_code == 200
