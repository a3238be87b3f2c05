"""What model code raises to refuse one input it cannot use (torch-free; ``models/`` imports it).

    from service.core.rejection import InputRejected

    def preprocess(self, inputs):
        for index, value in enumerate(inputs):
            if not usable(value):
                raise InputRejected(f"cannot use this input: {why}", index=index)

The client that sent that input gets a 422 with the message; the other inputs of the same
forward (other clients' requests, other records of a file) are still answered: the worker runs
the forward again without the input at ``index`` (or, with no index, in halves until the input
that fails alone is found). Any other exception isolates the same way and answers 500.
"""

from __future__ import annotations


class InputRejected(Exception):
    """One input of a forward cannot be used; ``index`` is its position in the forward's inputs
    when the model knows it (None: the worker finds it by running smaller groups)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
