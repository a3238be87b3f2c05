"""service.core.ids: cheap ids, unique within a process and across forked ones."""

from __future__ import annotations

import multiprocessing as mp
import re

import pytest

from service.core.ids import new_id

pytestmark = pytest.mark.unit


def test_ids_are_32_hex_characters_and_never_repeat() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def _child_ids(queue: mp.Queue) -> None:  # type: ignore[type-arg]
    queue.put([new_id() for _ in range(100)])


def test_a_forked_child_draws_its_own_prefix() -> None:
    new_id()  # the parent's counter and prefix exist before the fork
    context = mp.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_child_ids, args=(queue,)) for _ in range(2)]
    for child in children:
        child.start()
    seen = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
    mine = [new_id() for _ in range(100)]
    prefixes = {batch[0][:16] for batch in [*seen, mine]}
    assert len(prefixes) == 3
    assert len({i for batch in [*seen, mine] for i in batch}) == 300
