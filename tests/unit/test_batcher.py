"""The batcher: length-aware planning, scatter back, and fair scheduling of predicts and files,
driven the way the worker loop drives it, with small fake models (and minilm once)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.worker.batcher import (
    Cancelled,
    DeadlineExpired,
    Forward,
    Limits,
    Scheduler,
    cost_function,
    padded_cost,
    plan,
    run_source,
    unit_costs,
)


@dataclass(frozen=True)
class Item:
    """A fake input: its owner's tag, its position there, and what it costs."""

    tag: str
    index: int
    cost: int


def item_costs(inputs: Sequence[Any]) -> list[int]:
    return [item.cost for item in inputs]


def expected(item: Item) -> str:
    return f"{item.tag}:{item.index}:{item.cost}"


class FakeModel:
    """Output = a function of the input; remembers every forward it computed."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.forwards: list[list[Item]] = []
        self.fail_on = fail_on

    def run(self, inputs: Sequence[Item]) -> list[str]:
        self.forwards.append(list(inputs))
        if any(item.tag == self.fail_on for item in inputs):
            raise ValueError("boom")
        return [expected(item) for item in inputs]

    def computed(self) -> list[Item]:
        return [item for forward in self.forwards for item in forward]


@dataclass
class Answer:
    outputs: list[Any] | None = None
    costs: list[int] | None = None
    error: BaseException | None = None
    calls: int = 0

    def done(self, outputs: list[Any], costs: list[int]) -> None:
        self.outputs, self.costs, self.calls = outputs, costs, self.calls + 1

    def failed(self, error: BaseException) -> None:
        self.error, self.calls = error, self.calls + 1


@dataclass
class FakeFile:
    """A file job: ``count`` records with costs from ``cost_of``."""

    uid: str
    count: int
    cost_of: Any = lambda index: 1 + index % 7
    next: int = 0
    outputs: list[Any] = field(default_factory=list)
    finished: bool = False
    error: BaseException | None = None

    def take(self, limit: int) -> list[Item]:
        assert not self.finished and self.error is None, "taken from after it stopped"
        items = [
            Item(self.uid, i, self.cost_of(i)) for i in range(self.next, min(self.count, self.next + limit))
        ]
        self.next += len(items)
        return items

    def emit(self, outputs: list[Any]) -> None:
        self.outputs.extend(outputs)

    def finish(self) -> None:
        self.finished = True

    def fail(self, error: BaseException) -> None:
        self.error = error

    def expected(self) -> list[str]:
        return [expected(Item(self.uid, i, self.cost_of(i))) for i in range(self.count)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def step(scheduler: Scheduler, model: FakeModel, cancelled: frozenset[str] = frozenset()) -> Forward | None:
    """One turn of the worker loop after its queue reads."""
    forward = scheduler.next_forward(cancelled)
    if forward is None:
        return None
    try:
        outputs = model.run(forward.inputs)
    except Exception as exc:
        scheduler.fail(forward, exc)
    else:
        scheduler.complete(forward, outputs)
    return forward


def drain(scheduler: Scheduler, model: FakeModel) -> list[Forward]:
    forwards = []
    while (forward := step(scheduler, model)) is not None:
        forwards.append(forward)
    assert scheduler.idle and scheduler.uids() == []
    return forwards


def predict(scheduler: Scheduler, tag: str, costs: Sequence[int], **kwargs: Any) -> tuple[list[Item], Answer]:
    inputs = [Item(tag, i, cost) for i, cost in enumerate(costs)]
    answer = Answer()
    scheduler.add_predict(tag, inputs, on_done=answer.done, on_error=answer.failed, **kwargs)
    return inputs, answer


def scheduler_for(size: int, tokens: int | None = None, **kwargs: Any) -> Scheduler:
    return Scheduler(Limits(size, tokens), cost=item_costs, **kwargs)


# --- planner --------------------------------------------------------------------------------


def test_plan_orders_by_cost_and_keeps_every_forward_under_both_limits() -> None:
    costs = [9, 1, 5, 2, 8, 3, 3, 7, 1, 4]
    groups = plan(costs, Limits(max_batch_size=3, max_batch_tokens=15))
    assert sorted(i for group in groups for i in group) == list(range(len(costs)))
    flat = [costs[i] for group in groups for i in group]
    assert flat == sorted(costs)
    for group in groups:
        assert len(group) <= 3
        assert padded_cost([costs[i] for i in group]) <= 15
    assert groups[0] == [1, 8, 3]  # the cheapest three, ties in arrival order


def test_an_input_over_the_budget_runs_alone() -> None:
    costs = [2, 50, 2, 3, 40]
    groups = plan(costs, Limits(max_batch_size=8, max_batch_tokens=16))
    assert [costs[i] for group in groups for i in group] == [2, 2, 3, 40, 50]
    assert [[costs[i] for i in group] for group in groups] == [[2, 2, 3], [40], [50]]


def test_without_a_token_budget_only_the_size_caps_a_forward() -> None:
    groups = plan([100, 1, 100, 1, 100], Limits(max_batch_size=2))
    assert [len(group) for group in groups] == [2, 2, 1]


# --- scatter back -------------------------------------------------------------------------


def test_split_requests_get_their_outputs_in_their_own_order() -> None:
    scheduler = scheduler_for(3, 12)
    model = FakeModel()
    a_inputs, a = predict(scheduler, "a", [6, 1, 4, 1, 6, 2])
    b_inputs, b = predict(scheduler, "b", [3, 1, 5])
    forwards = drain(scheduler, model)
    assert a.outputs == [expected(x) for x in a_inputs] and a.costs == [6, 1, 4, 1, 6, 2]
    assert b.outputs == [expected(x) for x in b_inputs]
    assert a.calls == b.calls == 1
    assert len(forwards) > 1 and any(forward.requests == 2 for forward in forwards)
    for forward in forwards:
        assert len(forward) <= 3
        assert forward.padded_cost <= 12
    assert sorted(model.computed(), key=id) == sorted(a_inputs + b_inputs, key=id)  # each once


def test_an_empty_request_is_answered_at_once() -> None:
    scheduler = scheduler_for(4)
    _, answer = predict(scheduler, "empty", [])
    assert answer.outputs == [] and scheduler.idle


def test_a_cost_function_that_fails_answers_that_request_only() -> None:
    def costs(inputs: Sequence[Any]) -> list[int]:
        if any(item.tag == "bad" for item in inputs):
            raise ValueError("cannot tokenize")
        return item_costs(inputs)

    scheduler = Scheduler(Limits(4), cost=costs)
    _, bad = predict(scheduler, "bad", [1])
    _, good = predict(scheduler, "good", [1])
    drain(scheduler, FakeModel())
    assert isinstance(bad.error, ValueError) and good.outputs == ["good:0:1"]


def test_models_without_costs_cost_one_per_input() -> None:
    assert cost_function(object()) is unit_costs
    assert unit_costs(["a", "b"]) == [1, 1]

    class Costed:
        def costs(self, inputs: Sequence[str]) -> list[int]:
            return [len(x) for x in inputs]

    assert cost_function(Costed())(["abc"]) == [3]


@pytest.fixture(scope="module")
def minilm() -> Iterator[Any]:
    from service.core.repository import ModelRepository
    from service.worker.session import InferenceSession

    yield InferenceSession(ModelRepository().get("minilm").load("cpu"))


def test_minilm_outputs_equal_one_at_a_time_runs(minilm: Any) -> None:
    model = minilm.model
    texts = [
        "Hi.",
        "A longer sentence about the weather, which is lovely today in the hills.",
        "Short one.",
        " ".join(["paragraph"] * 300),  # truncated at 256 tokens
        "Two words",
        "Medium length text with a handful of words in it.",
    ]
    costs = model.costs(texts)
    assert costs[0] == 4 and costs[3] == 256  # [CLS] hi . [SEP]; truncation counts special tokens
    scheduler = Scheduler(Limits(max_batch_size=3, max_batch_tokens=40), cost=model.costs)
    answers = []
    for tag, part in (("a", texts[:4]), ("b", texts[4:])):
        answer = Answer()
        scheduler.add_predict(tag, part, on_done=answer.done, on_error=answer.failed)
        answers.append(answer)
    while (forward := scheduler.next_forward()) is not None:
        assert len(forward) == 1 or forward.padded_cost <= 40
        scheduler.complete(forward, minilm.run(forward.inputs))
    batched = (answers[0].outputs or []) + (answers[1].outputs or [])
    assert answers[0].costs == costs[:4] and answers[1].costs == costs[4:]
    for text, output in zip(texts, batched, strict=True):
        alone = minilm.run([text])[0]
        assert max(abs(x - y) for x, y in zip(output, alone, strict=True)) <= 1e-5


# --- fair scheduling ----------------------------------------------------------------------


def test_a_predict_added_during_a_big_file_is_in_the_very_next_forward() -> None:
    scheduler = scheduler_for(8, 64)
    model = FakeModel()
    file = FakeFile("file", 10_000)
    scheduler.add_file(file)
    first = step(scheduler, model)
    assert first is not None and len(first) == 8 and first.files == 1  # a file alone: full forwards
    inputs, answer = predict(scheduler, "p", [3, 5])
    nxt = step(scheduler, model)
    assert nxt is not None and nxt.requests == 1
    assert set(inputs) <= set(nxt.inputs) and answer.outputs == [expected(x) for x in inputs]
    assert len(nxt) == 8  # topped up from the file
    drain(scheduler, model)
    assert file.finished and file.error is None and file.outputs == file.expected()


def test_a_long_predict_is_not_starved_by_a_stream_of_short_ones() -> None:
    scheduler = scheduler_for(4, 100)
    model = FakeModel()
    _, long = predict(scheduler, "long", [100])
    for n in range(3):
        for k in range(4):
            predict(scheduler, f"short{n}.{k}", [1])
        step(scheduler, model)
    assert long.outputs == ["long:0:100"]


def test_two_files_take_turns() -> None:
    scheduler = scheduler_for(4)
    model = FakeModel()
    files = [FakeFile("a", 40), FakeFile("b", 40)]
    for file in files:
        scheduler.add_file(file)
    forwards = [step(scheduler, model) for _ in range(6)]
    owners = [{item.tag for item in forward.inputs} for forward in forwards if forward is not None]
    assert owners == [{"a"}, {"b"}, {"a"}, {"b"}, {"a"}, {"b"}]
    drain(scheduler, model)
    for file in files:
        assert file.finished and file.outputs == file.expected()


def test_a_short_file_is_topped_up_by_the_next_one() -> None:
    scheduler = scheduler_for(8)
    model = FakeModel()
    short, long = FakeFile("short", 3), FakeFile("long", 100)
    scheduler.add_file(short)
    scheduler.add_file(long)
    first = step(scheduler, model)
    assert first is not None and len(first) == 8 and first.files == 2
    drain(scheduler, model)
    assert short.outputs == short.expected() and long.outputs == long.expected()


def test_a_mixed_length_file_is_cut_by_length_and_written_in_order() -> None:
    scheduler = scheduler_for(16, 256)
    model = FakeModel()
    file = FakeFile("mixed", 500, cost_of=lambda i: 200 if i % 10 == 3 else 10 + i % 7)
    scheduler.add_file(file)
    forwards = drain(scheduler, model)
    assert file.finished and file.outputs == file.expected()
    for forward in forwards:
        assert forward.padded_cost <= 256
    # short texts are not padded to a paragraph's length: long ones travel together
    padded = sum(forward.padded_cost for forward in forwards)
    assert padded < 2 * sum(item.cost for item in model.computed())


def test_deadlines_drop_what_cannot_be_met_and_serve_the_rest() -> None:
    clock = Clock()
    scheduler = scheduler_for(4, clock=clock)
    model = FakeModel()
    _, late = predict(scheduler, "late", [1], deadline=clock.now - 1)
    _, fine = predict(scheduler, "fine", [1], deadline=clock.now + 60)
    forward = scheduler.next_forward()
    assert isinstance(late.error, DeadlineExpired) and late.error.status == 504
    assert forward is not None
    clock.now += 1.0  # this forward took a second
    scheduler.complete(forward, model.run(forward.inputs))
    assert fine.outputs == ["fine:0:1"] and scheduler.forward_seconds > 0
    # a deadline nearer than a typical forward cannot be met either
    _, hopeless = predict(scheduler, "hopeless", [1], deadline=clock.now + scheduler.forward_seconds / 2)
    assert scheduler.next_forward() is None
    assert isinstance(hopeless.error, DeadlineExpired) and late.calls == hopeless.calls == 1


def test_cancelled_requests_and_files_stop() -> None:
    scheduler = scheduler_for(4)
    model = FakeModel()
    _, gone = predict(scheduler, "gone", [1, 1])
    _, kept = predict(scheduler, "kept", [1])
    gone_file, kept_file = FakeFile("gone-file", 1000), FakeFile("kept-file", 20)
    scheduler.add_file(gone_file)
    scheduler.add_file(kept_file)
    step(scheduler, model, frozenset({"gone"}))
    assert isinstance(gone.error, Cancelled) and gone.error.status == 499 and kept.outputs == ["kept:0:1"]
    step(scheduler, model, frozenset({"gone-file"}))
    assert isinstance(gone_file.error, Cancelled)
    taken = gone_file.next
    drain(scheduler, model)
    assert gone_file.next == taken and not gone_file.finished  # no longer a source
    assert kept_file.finished and kept_file.outputs == kept_file.expected()
    assert "gone" not in {item.tag for item in model.computed()}


def test_a_failed_forward_errors_only_its_owners() -> None:
    scheduler = scheduler_for(2)
    model = FakeModel(fail_on="bad")
    _, bad = predict(scheduler, "bad", [1])
    _, neighbour = predict(scheduler, "neighbour", [1, 1, 1])  # split: one input shares the forward
    _, later = predict(scheduler, "later", [1, 1])
    drain(scheduler, model)
    assert isinstance(bad.error, ValueError) and isinstance(neighbour.error, ValueError)
    assert bad.calls == neighbour.calls == 1
    assert later.outputs == ["later:0:1", "later:1:1"]


def test_a_failed_forward_stops_the_file_in_it() -> None:
    scheduler = scheduler_for(4)
    model = FakeModel(fail_on="broken")
    broken, healthy = FakeFile("broken", 50), FakeFile("healthy", 10)
    scheduler.add_file(broken)
    scheduler.add_file(healthy)
    drain(scheduler, model)
    assert isinstance(broken.error, ValueError) and not broken.finished
    assert healthy.finished and healthy.outputs == healthy.expected()


def test_a_lone_client_never_waits_for_company() -> None:
    scheduler = scheduler_for(8, batch_timeout=0.05)
    model = FakeModel()
    for n in range(3):
        assert scheduler.gather_timeout() == 0.0
        predict(scheduler, f"lone{n}", [1])
        assert scheduler.gather_timeout() == 0.0
        step(scheduler, model)
    predict(scheduler, "x", [1])
    predict(scheduler, "y", [1])
    step(scheduler, model)  # concurrent traffic: now it is worth waiting a little
    assert scheduler.gather_timeout() == 0.05
    predict(scheduler, "big", [1] * 8)  # ... unless a forward's worth is already waiting
    assert scheduler.gather_timeout() == 0.0
    drain(scheduler, model)
    scheduler.add_file(FakeFile("f", 100))  # ... or a file would fill the forward anyway
    assert scheduler.gather_timeout() == 0.0


def test_run_source_computes_a_file_through_the_planner() -> None:
    model = FakeModel()
    file = FakeFile("cli", 300, cost_of=lambda i: 1 + (i * 37) % 50)
    run_source(file, model.run, Limits(16, 200), cost=item_costs)
    assert file.finished and file.outputs == file.expected()
    assert all(len(f) == 1 or padded_cost([x.cost for x in f]) <= 200 for f in model.forwards)

    failing = FakeFile("broken", 30)
    with pytest.raises(ValueError, match="boom"):
        run_source(failing, FakeModel(fail_on="broken").run, Limits(8), cost=item_costs)
    assert isinstance(failing.error, ValueError)


# --- property -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    requests=st.lists(st.lists(st.integers(1, 60), max_size=12), max_size=8),
    files=st.lists(st.integers(0, 40), max_size=3),
    size=st.integers(1, 10),
    tokens=st.one_of(st.none(), st.integers(1, 200)),
)
def test_every_input_is_computed_once_and_routed_to_its_owner_in_order(
    requests: list[list[int]], files: list[int], size: int, tokens: int | None
) -> None:
    scheduler = scheduler_for(size, tokens)
    model = FakeModel()
    answers = [predict(scheduler, f"r{n}", costs) for n, costs in enumerate(requests)]
    sources = [FakeFile(f"f{n}", count, cost_of=lambda i: 1 + (i * 13) % 70) for n, count in enumerate(files)]
    for source in sources:
        scheduler.add_file(source)
    drain(scheduler, model)
    computed = model.computed()
    assert len(computed) == len(set(computed)) == sum(map(len, requests)) + sum(files)
    for inputs, answer in answers:
        assert answer.calls == 1 and answer.outputs == [expected(x) for x in inputs]
    for source in sources:
        assert source.finished and source.outputs == source.expected()
    for forward in model.forwards:
        assert len(forward) <= size
        assert len(forward) == 1 or tokens is None or padded_cost([x.cost for x in forward]) <= tokens
