"""Property tests of the request models built from the shipped models' declared input limits."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from service.api.errors import describe_validation
from service.api.native import FLOAT32_MAX, request_model_for
from service.core.repository import InputSpec, ModelRepository

SPECS = {name: ModelRepository().get(name).spec for name in ("minilm", "reference")}
MODELS = {name: request_model_for(spec) for name, spec in SPECS.items()}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([FLOAT32_MAX, -FLOAT32_MAX, 1e308, 3.5e38, True, False]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
json_like = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


def repeated(element: st.SearchStrategy[Any], low: int, high: int) -> st.SearchStrategy[list[Any]]:
    """Lists of ``low``..``high`` items, cheap even when long: one item repeated, then another."""
    return st.builds(
        lambda n, a, b: [*[a] * (n - 1), b] if n else [], st.integers(low, high), element, element
    )


def near_limits(spec: InputSpec) -> st.SearchStrategy[Any]:
    """Bodies around the declared limits: item counts, string lengths, vector sizes and values."""
    if spec.kind == "text":
        item: st.SearchStrategy[Any] = st.one_of(
            st.text(max_size=30),
            st.tuples(st.integers(spec.max_length - 2, spec.max_length + 2), st.characters()).map(
                lambda t: t[1] * t[0]
            ),
            scalars,
        )
    else:
        assert spec.dim is not None
        item = st.one_of(
            repeated(numbers, spec.dim - 1, spec.dim + 1), st.lists(numbers, max_size=spec.dim + 1)
        )
    inputs = st.one_of(
        repeated(item, 0, 3), repeated(item, spec.max_items - 1, spec.max_items + 1), json_like
    )
    extra = st.dictionaries(st.text(max_size=6), json_like, max_size=2)
    return st.one_of(st.builds(lambda i, e: {"inputs": i, **e}, inputs, extra), json_like)


def valid_inputs(spec: InputSpec) -> st.SearchStrategy[list[Any]]:
    if spec.kind == "text":
        item: st.SearchStrategy[Any] = st.text(max_size=40) | st.text(max_size=40).map(
            lambda text: (text * (spec.max_length // max(1, len(text))))[: spec.max_length]
        )
    else:
        assert spec.dim is not None
        number = st.floats(min_value=-FLOAT32_MAX, max_value=FLOAT32_MAX) | st.integers(-(2**64), 2**64)
        item = st.lists(number, min_size=spec.dim, max_size=spec.dim)
    return st.lists(item, min_size=spec.min_items, max_size=min(spec.max_items, 8)) | st.builds(
        lambda first, n: [first] * n, item, st.integers(spec.min_items, spec.max_items)
    )


def assert_within_limits(spec: InputSpec, inputs: list[Any]) -> None:
    assert spec.min_items <= len(inputs) <= spec.max_items
    for item in inputs:
        if spec.kind == "text":
            assert isinstance(item, str) and len(item) <= spec.max_length
        else:
            assert isinstance(item, list) and len(item) == spec.dim
            assert all(type(x) is float and math.isfinite(x) and abs(x) <= FLOAT32_MAX for x in item)


def validate_or_reject(model: type[BaseModel], spec: InputSpec, body: Any) -> None:
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        message = describe_validation(exc)
        assert message and "\n" not in message
        return
    assert isinstance(body, dict) and set(body) == {"inputs"}
    assert_within_limits(spec, parsed.inputs)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", SPECS)
def test_any_json_value_validates_within_limits_or_raises_validation_error(name: str) -> None:
    spec, model = SPECS[name].inputs, MODELS[name]

    @SETTINGS
    @given(body=json_like)
    def check_any(body: Any) -> None:
        validate_or_reject(model, spec, body)

    @SETTINGS
    @given(body=near_limits(spec))
    def check_near_limits(body: Any) -> None:
        validate_or_reject(model, spec, body)

    check_any()
    check_near_limits()


@pytest.mark.parametrize("name", SPECS)
def test_valid_inputs_always_validate(name: str) -> None:
    spec, model = SPECS[name].inputs, MODELS[name]

    @SETTINGS
    @given(inputs=valid_inputs(spec))
    def check(inputs: list[Any]) -> None:
        parsed = model.model_validate({"inputs": inputs})
        assert len(parsed.inputs) == len(inputs)  # type: ignore[attr-defined]
        assert_within_limits(spec, parsed.inputs)  # type: ignore[attr-defined]

    check()


@pytest.mark.parametrize("name", SPECS)
@SETTINGS
@given(
    marker=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=12, max_size=40), data=st.data()
)
def test_validation_messages_name_the_field_never_the_value(
    name: str, marker: str, data: st.DataObject
) -> None:
    spec, model = SPECS[name].inputs, MODELS[name]
    secret = f"secret-{marker}"
    bad_item: Any = secret + "x" * spec.max_length if spec.kind == "text" else [secret] * (spec.dim or 1)
    good_item: Any = "ok" if spec.kind == "text" else [0.0] * (spec.dim or 1)
    index = data.draw(st.integers(0, 3))
    bodies = [
        {"inputs": [*[good_item] * index, bad_item]},
        {"inputs": secret},
        {"inputs": [{"text": secret}]},
        {"inputs": [secret, 1, None, secret], "other": secret},
    ]
    for body in bodies:
        with pytest.raises(ValidationError) as caught:
            model.model_validate(body)
        message = describe_validation(caught.value)
        assert secret not in message and marker not in message, message
        assert message.startswith("inputs") or message.startswith("other"), message
    first = describe_validation(_error(model, bodies[0]))
    assert first.startswith(f"inputs.{index}"), first


def _error(model: type[BaseModel], body: Any) -> ValidationError:
    try:
        model.model_validate(body)
    except ValidationError as exc:
        return exc
    raise AssertionError("no error")
