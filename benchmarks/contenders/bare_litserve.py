"""Bare LitServe: a minimal LitAPI around the same model, with the batching settings of the
model's ``model.yaml`` and LitServe's defaults otherwise (one API server process, its own
batching loop, no metrics, no validation).

    python -m benchmarks.contenders.bare_litserve --model minilm --port 8125

Requests are ``{"inputs": [x]}`` with one input; answers ``{"outputs": [y]}``.
"""

from __future__ import annotations

from typing import Any

import litserve as ls

from benchmarks.contenders import parse_args
from service.core.repository import ModelRepository


class BareAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model: str, threads: int, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model_name = model
        self.threads = threads

    def setup(self, device: str) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = ModelRepository().get(self.model_name).load(device)

    # left unannotated: LitServe reads the annotation to build its endpoint, and a (string)
    # annotation would turn the body into a query parameter
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return request["inputs"][0]

    def batch(self, inputs: list[Any]) -> list[Any]:
        return list(inputs)

    def predict(self, x: list[Any]) -> list[Any]:
        import torch

        with torch.no_grad():
            return self.model.postprocess(self.model.forward(self.model.preprocess(x)))

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Any) -> dict[str, Any]:
        return {"outputs": [output]}


def main() -> None:
    args = parse_args()
    spec = ModelRepository().get(args.model).spec
    api = BareAPI(args.model, args.threads, spec.max_batch_size, spec.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu")
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False)


if __name__ == "__main__":
    main()
