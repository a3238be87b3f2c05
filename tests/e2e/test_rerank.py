"""The bundled reranker on every way in: the ``cohere`` SDK (v1 and v2 clients), the native route,
``tritonclient.http`` with pairs; scores and order equal sentence-transformers' CrossEncoder run
in-process on the same folder (a document past the model's window: its best chunk, each chunk
scored by ``transformers`` in-process), alone and under 32 concurrent clients; bad input is a
clear 4xx."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cohere
import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from service.core.repository import ModelRepository
from tests.support import ServerProcess

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "Bananas are yellow and rich in potassium.",
    "The Eiffel Tower stands in Paris. " * 120,  # longer than the model's window: chunked
    "Berlin is the capital of Germany.",
    "x",
    # its later chunks score higher than its first (what truncation would keep): 0.5105 vs 0.5036
    "The quick brown fox jumps over the lazy dog. " * 60
    + "Paris is the capital and largest city of France. " * 60,
]
WINDOW, OVERLAP = 512, 64  # the model's window in tokens; consecutive chunks share an eighth of it


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(serve=["reranker", "minilm"]) as process:
        yield process


def reference_scores(
    query: str, documents: list[str], max_tokens: int = 4096, max_chunks: int | None = None
) -> list[float]:
    """Cohere's semantics, in-process: CrossEncoder's score for a pair that fits the window as it
    is; else the document's first ``max_tokens`` tokens cut into windows that fit beside the query
    (overlapping by OVERLAP tokens), the first ``max_chunks`` of them scored by ``transformers``
    (``[CLS] query [SEP] chunk [SEP]``), the best one."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = str(ModelRepository().get("reranker").verified_weights())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    cross = CrossEncoder(folder, device="cpu")
    question = tokenizer(query, add_special_tokens=False)["input_ids"]
    scores = []
    for document in documents:
        whole = tokenizer(document, add_special_tokens=False)["input_ids"]
        kept = whole[:max_tokens]
        if len(kept) == len(whole) and len(question) + len(kept) + 3 <= WINDOW:
            scores.append(float(cross.predict([[query, document]])[0]))
            continue
        room = WINDOW - 3 - len(question)
        chunks, start = [kept[:room]], 0
        while start + room < len(kept):
            start += room - OVERLAP
            chunks.append(kept[start : start + room])
        best = 0.0
        for chunk in chunks[:max_chunks]:
            ids = [tokenizer.cls_token_id, *question, tokenizer.sep_token_id, *chunk, tokenizer.sep_token_id]
            types = [0] * (len(question) + 2) + [1] * (len(chunk) + 1)
            with torch.no_grad():
                logit = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits[
                    0, 0
                ]
            best = max(best, float(torch.sigmoid(logit)))
        scores.append(best)
    return scores


@pytest.fixture(scope="module")
def expected() -> list[float]:
    return reference_scores(QUERY, DOCUMENTS)


def ranking(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def test_cohere_v2_client_reranks_like_the_cross_encoder(
    server: ServerProcess, expected: list[float]
) -> None:
    client = cohere.ClientV2(api_key="unused", base_url=server.url)
    answer = client.rerank(model="reranker", query=QUERY, documents=DOCUMENTS, top_n=3)
    assert [r.index for r in answer.results] == ranking(expected)[:3]
    for result in answer.results:
        assert abs(result.relevance_score - expected[result.index]) <= 1e-4
    assert answer.meta is not None and answer.meta.api_version is not None
    assert answer.meta.api_version.version == "2"


def test_cohere_v1_client_with_document_objects(server: ServerProcess, expected: list[float]) -> None:
    client = cohere.Client(api_key="unused", base_url=server.url)
    documents: list[Any] = [{"text": d} for d in DOCUMENTS]
    answer = client.rerank(query=QUERY, documents=documents, return_documents=True)  # model: the one reranker
    assert [r.index for r in answer.results] == ranking(expected)
    for result in answer.results:
        assert abs(result.relevance_score - expected[result.index]) <= 1e-4
        assert result.document is not None and result.document.text == DOCUMENTS[result.index]


def test_long_documents_score_their_best_chunk_within_the_limits(
    server: ServerProcess, expected: list[float]
) -> None:
    truncated = reference_scores(QUERY, DOCUMENTS, max_chunks=1)
    assert expected[-1] - truncated[-1] > 1e-3  # the check below tells chunks from truncation
    v2 = cohere.ClientV2(api_key="unused", base_url=server.url)
    for max_tokens in (4096, 100):
        answer = v2.rerank(model="reranker", query=QUERY, documents=DOCUMENTS, max_tokens_per_doc=max_tokens)
        want = expected if max_tokens == 4096 else reference_scores(QUERY, DOCUMENTS, max_tokens=max_tokens)
        for result in answer.results:
            assert abs(result.relevance_score - want[result.index]) <= 1e-4, (max_tokens, result.index)
    v1 = cohere.Client(api_key="unused", base_url=server.url)
    answer_v1 = v1.rerank(model="reranker", query=QUERY, documents=DOCUMENTS, max_chunks_per_doc=1)
    for result in answer_v1.results:
        assert abs(result.relevance_score - truncated[result.index]) <= 1e-4
    long_first = server.post("/v2/rerank", {"model": "reranker", "query": QUERY, "documents": DOCUMENTS[-1:]})
    short = server.post("/v2/rerank", {"model": "reranker", "query": QUERY, "documents": DOCUMENTS[:1]})
    # every chunk costs its tokens: what the batcher planned and the client is told
    assert long_first.json()["meta"]["tokens"]["input_tokens"] > 2 * WINDOW
    assert short.json()["meta"]["tokens"]["input_tokens"] < WINDOW


def test_native_and_v2_pairs_and_32_concurrent_clients(server: ServerProcess, expected: list[float]) -> None:
    pairs = [[QUERY, d] for d in DOCUMENTS]
    native = server.post("/v1/models/reranker/predict", {"inputs": pairs}).json()["outputs"]
    assert max(abs(score[0] - want) for score, want in zip(native, expected, strict=True)) <= 1e-4
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as client:
        tensor = triton.InferInput("PAIR", [len(pairs), 2], "BYTES")
        tensor.set_data_from_numpy(np.array(pairs, dtype=object), binary_data=True)
        result = client.infer("reranker", [tensor], outputs=[triton.InferRequestedOutput("SCORE")])
        scores = result.as_numpy("SCORE")
        assert scores is not None and scores.shape == (len(pairs), 1)
        assert np.abs(scores[:, 0] - np.array(expected)).max() <= 1e-4

    def one(index: int) -> float:
        body = {"model": "reranker", "query": QUERY, "documents": [DOCUMENTS[index % len(DOCUMENTS)]]}
        response = server.post("/v2/rerank", body)
        assert response.status_code == 200, response.text
        return float(response.json()["results"][0]["relevance_score"])

    with ThreadPoolExecutor(max_workers=32) as pool:
        concurrent = list(pool.map(one, range(96)))
    for index, score in enumerate(concurrent):
        assert abs(score - expected[index % len(DOCUMENTS)]) <= 1e-4


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "reranker", "documents": ["d"]}, 400, "'query' must be a non-empty string"),
        ({"model": "reranker", "query": "", "documents": ["d"]}, 400, "'query' must be a non-empty string"),
        ({"model": "reranker", "query": "q"}, 400, "'documents' must be a non-empty list"),
        ({"model": "reranker", "query": "q", "documents": "d"}, 400, "'documents' must be a non-empty list"),
        (
            {"model": "reranker", "query": "q", "documents": ["d", ""]},
            400,
            "documents[1]: the document is empty",
        ),
        ({"model": "reranker", "query": "q", "documents": [3]}, 400, "documents[0] must be a string"),
        ({"model": "reranker", "query": "q", "documents": ["d"] * 1001}, 413, "at most 1000"),
        (
            {"model": "reranker", "query": "q", "documents": ["d"], "top_n": 0},
            400,
            "'top_n' must be a positive",
        ),
        (
            {"model": "reranker", "query": "q", "documents": ["d"], "top_n": -2},
            400,
            "'top_n' must be a positive",
        ),
        ({"query": "q", "documents": ["d"]}, 400, "'model' is required"),
        ({"model": "minilm", "query": "q", "documents": ["d"]}, 400, "not a reranker"),
        ({"model": "nope", "query": "q", "documents": ["d"]}, 404, "not served here"),
    ],
)
def test_bad_rerank_bodies_are_a_clear_4xx(
    server: ServerProcess, body: dict[str, Any], status: int, message: str
) -> None:
    response = server.post("/v2/rerank", body)
    assert response.status_code == status, response.text
    assert message in response.json()["message"]
    assert server.client.get("/health/ready").status_code == 200


def test_a_reranker_is_not_an_embedding_model(server: ServerProcess) -> None:
    response = server.post("/v1/embeddings", {"model": "reranker", "input": "q"})
    assert response.status_code == 400
    assert "relevance model, not an embedding model" in response.json()["error"]["message"]
    refused = server.post("/v1/models/reranker/predict", {"inputs": ["no pair"]})
    assert refused.status_code == 422


def test_pairs_from_a_file(server: ServerProcess, expected: list[float]) -> None:
    lines = [orjson.dumps({"id": i, "input": [QUERY, d]}) for i, d in enumerate(DOCUMENTS)]
    lines.append(orjson.dumps({"id": "empty", "input": [QUERY, ""]}))
    lines.append(orjson.dumps({"id": "single", "input": "not a pair"}))
    response = server.client.post(
        "/v1/models/reranker/predict-file",
        content=b"\n".join(lines) + b"\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 200
    records = [orjson.loads(line) for line in response.text.splitlines()]
    for record, want in zip(records, expected, strict=False):
        assert abs(record["output"][0] - want) <= 1e-4
    assert "the document is empty" in records[-2]["error"]
    assert "[query, document] pair" in records[-1]["error"]


def test_native_grouped_form_query_and_documents(server: ServerProcess, expected: list[float]) -> None:
    grouped = server.post("/v1/models/reranker/predict", {"query": QUERY, "documents": DOCUMENTS})
    assert grouped.status_code == 200, grouped.text
    scores = [output[0] for output in grouped.json()["outputs"]]
    assert max(abs(score - want) for score, want in zip(scores, expected, strict=True)) <= 1e-4
    refusals = [
        ({"query": QUERY}, "give 'inputs', or 'query' and 'documents'"),
        ({}, "give 'inputs', or 'query' and 'documents'"),
        ({"inputs": [[QUERY, "d"]], "query": QUERY, "documents": ["d"]}, "not both"),
        ({"query": "", "documents": ["d"]}, "query"),
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": QUERY, "documents": ["d", 3]}, "documents.1"),
        ({"query": QUERY, "documents": ["d"] * 1001}, "documents"),
    ]
    for body, message in refusals:
        response = server.post("/v1/models/reranker/predict", body)
        assert response.status_code == 422, (body, response.text)
        assert message in response.json()["error"], (body, response.text)
    schema = server.client.get("/openapi.json").json()
    request = schema["paths"]["/v1/models/reranker/predict"]["post"]["requestBody"]["content"]
    properties = request["application/json"]["schema"]
    properties = schema["components"]["schemas"].get(properties.get("$ref", "").split("/")[-1], properties)
    assert {"inputs", "query", "documents"} <= set(properties["properties"])


@pytest.mark.parametrize(
    ("query_string", "header", "make_row"),
    [
        ("", "id,query,document", lambda i, d: f'{i},"{QUERY}","{d}"'),
        ("?input_column=question,passage", "passage,question,id", lambda i, d: f'"{d}","{QUERY}",{i}'),
    ],
)
def test_pairs_from_csv_columns(
    server: ServerProcess, expected: list[float], query_string: str, header: str, make_row: Any
) -> None:
    rows = [make_row(i, d) for i, d in enumerate(DOCUMENTS[:2] + DOCUMENTS[3:5])] + [make_row(9, "")]
    response = server.client.post(
        "/v1/models/reranker/predict-file" + query_string,
        content=(header + "\n" + "\n".join(rows) + "\n").encode(),
        headers={"content-type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    records = [orjson.loads(line) for line in response.text.splitlines()]
    want = expected[:2] + expected[3:5]
    assert [record["id"] for record in records] == ["0", "1", "2", "3", "9"]
    for record, score in zip(records, want, strict=False):
        assert abs(record["output"][0] - score) <= 1e-4
    assert "the document is empty" in records[-1]["error"]


def test_bad_pair_keys(server: ServerProcess) -> None:
    """Keys that name neither one key nor one per part are a 400; a record without the keys given
    is an error record in its place, as for every model."""

    def send(query_string: str) -> Any:
        return server.client.post(
            "/v1/models/reranker/predict-file" + query_string,
            content=b'{"query": "q", "document": "d"}\n',
            headers={"content-type": "application/x-ndjson"},
        )

    refused = send("?input_key=a,b,c")
    assert refused.status_code == 400
    assert "must name one key, or 2 comma-separated (query, document)" in refused.json()["error"]
    missing = send("?input_key=q,d")
    assert missing.status_code == 200
    assert orjson.loads(missing.text.splitlines()[0])["error"] == "line 1 has no 'q' and 'd' value"
