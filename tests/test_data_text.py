"""bncourse.data.text: the character corpus of pydoc_data.topics (case study 08)."""
import pytest
import torch

from bncourse.data.text import (CharCorpus, load_corpus, load_text, random_batch,
                                sequential_batches)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


def test_text_is_the_sorted_topics():
    from pydoc_data.topics import topics

    text = load_text()
    assert 300_000 < len(text) < 700_000
    first = sorted(topics)[0]
    assert text.startswith(topics[first])


def test_corpus_split_by_position(corpus):
    text = load_text()
    assert isinstance(corpus, CharCorpus)
    assert corpus.chars == "".join(sorted(set(text)))
    assert len(corpus.train) + len(corpus.valid) == len(text)
    assert abs(len(corpus.valid) / len(text) - 0.1) < 1e-3
    assert corpus.decode(corpus.train[:200]) == text[:200]
    assert corpus.decode(corpus.valid[-100:]) == text[-100:]
    assert corpus.train.dtype == torch.int64
    assert "CharCorpus(" in repr(corpus)


def test_encode_decode_round_trip(corpus):
    assert corpus.decode(corpus.encode("The value of x.")) == "The value of x."
    with pytest.raises(ValueError, match="not in the vocabulary"):
        corpus.encode("\x00")


def test_random_batch_shapes_and_seed(corpus):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x, y = random_batch(corpus.train, 8, 20, g1)
    x2, y2 = random_batch(corpus.train, 8, 20, g2)
    assert x.shape == y.shape == (20, 8)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(x[1:], y[:-1])  # targets are the inputs shifted by one
    x3, _ = random_batch(corpus.train, 8, 20, g1)
    assert not torch.equal(x, x3)


def test_sequential_batches_cover_text_once():
    ids = torch.arange(1000)
    batches = sequential_batches(ids, batch_size=4, length=10)
    assert len(batches) == 999 // 10 // 4
    x, y = batches[0]
    assert x.shape == (10, 4)
    assert torch.equal(x[:, 1], torch.arange(10, 20))
    assert torch.equal(y, x + 1)
    seen = torch.cat([x.T.reshape(-1) for x, _ in batches])
    assert torch.equal(seen, torch.arange(len(seen)))
    assert len(sequential_batches(ids, 4, 10, max_batches=2)) == 2


@pytest.mark.parametrize("call, match", [
    (lambda: load_corpus(valid_fraction=1.5), "valid_fraction"),
    (lambda: load_corpus(text="ab"), "too short"),
    (lambda: random_batch(torch.arange(10), 2, 10, torch.Generator()), "length=10"),
    (lambda: random_batch(torch.arange(10), 0, 3, torch.Generator()), "batch_size"),
    (lambda: sequential_batches(torch.arange(30), 4, 10), "too short"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
