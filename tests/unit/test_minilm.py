"""all-MiniLM-L6-v2 through the huggingface runtime reproduces sentence-transformers: pooling,
truncation, normalisation, read from the folder itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from service.core.repository import ModelRepository
from service.worker.huggingface import SentenceEmbedder, pool
from service.worker.session import InferenceSession

SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
# published in the sentence-transformers README for all-MiniLM-L6-v2
REFERENCE = [[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]]


@pytest.fixture(scope="module")
def session() -> Iterator[InferenceSession]:
    yield InferenceSession(ModelRepository().get("minilm").load("cpu"))


def test_mean_pool_ignores_padding() -> None:
    tokens = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool("mean", tokens, mask), torch.tensor([[2.0, 2.0]]))
    assert torch.equal(pool("max", tokens, mask), torch.tensor([[3.0, 3.0]]))
    assert torch.equal(pool("cls", tokens, mask), torch.tensor([[1.0, 1.0]]))


def test_reference_similarity_matrix(session: InferenceSession) -> None:
    embeddings = torch.tensor(session.run(SENTENCES))
    assert embeddings.shape == (3, 384)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)
    similarity = (embeddings @ embeddings.T).tolist()
    for row, expected in zip(similarity, REFERENCE, strict=True):
        assert [round(value, 4) for value in row] == expected


def test_embeddings_do_not_depend_on_batching(session: InferenceSession) -> None:
    texts = [
        "short",
        "a much longer sentence that needs many more tokens than the first one does",
        *SENTENCES,
    ]
    together = torch.tensor(session.run(texts))
    alone = torch.tensor([session.run([text])[0] for text in texts])
    assert (together - alone).abs().max().item() <= 1e-5


def test_truncates_at_max_seq_length_not_tokenizer_limit(session: InferenceSession) -> None:
    model = session.model
    assert isinstance(model, SentenceEmbedder) and model.pooling == "mean" and model.normalize
    assert model.max_seq_length == 256  # type: ignore[attr-defined]
    long = "word " * 2000
    assert model.preprocess([long])["input_ids"].shape[1] == 256
    # text beyond the 256th token does not change the embedding
    a = torch.tensor(session.run([long]))
    b = torch.tensor(session.run([long + " completely different ending"]))
    assert (a - b).abs().max().item() <= 1e-6


def test_outputs_equal_sentence_transformers_in_process(session: InferenceSession) -> None:
    from sentence_transformers import SentenceTransformer

    entry = ModelRepository().get("minilm")
    stock = SentenceTransformer(str(entry.verified_weights()), device="cpu", local_files_only=True)
    texts = [*SENTENCES, "short", "word " * 400, "Ünïcödé and emoji 🙂 in one line.", "a\ttab and\nnewline"]
    ours = torch.tensor(session.run(texts))
    theirs = torch.tensor(stock.encode(texts, convert_to_numpy=True))
    assert (ours - theirs).abs().max().item() <= 1e-5
    cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=1)
    assert cosine.min().item() >= 0.99999
