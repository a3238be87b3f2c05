"""The server a user would write first: FastAPI + uvicorn in one process, one forward per
request under ``torch.no_grad()``, no batching.

    python -m benchmarks.contenders.naive_fastapi --model minilm --port 8124

The endpoint is a plain ``def`` (FastAPI runs it in its thread pool), as FastAPI's docs advise
for blocking work. The model is loaded through the same repository as the service's, so the
forward is identical; only the serving differs.
"""

from __future__ import annotations

from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from benchmarks.contenders import parse_args
from service.core.repository import ModelRepository


class PredictRequest(BaseModel):
    inputs: list[str] | list[list[float]]


def build_app(model_name: str, threads: int) -> FastAPI:
    if threads:
        torch.set_num_threads(threads)
    model = ModelRepository().get(model_name).load("cpu")
    app = FastAPI()

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict[str, Any]:
        with torch.no_grad():
            outputs = model.postprocess(model.forward(model.preprocess(request.inputs)))
        return {"outputs": outputs}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    args = parse_args()
    # uvicorn's defaults, as a user would run it: access log on (the service turns its own off)
    uvicorn.run(build_app(args.model, args.threads), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
