"""bncourse.cases.charlm and charlm_failures: tiny models, few steps (case study 08)."""
import pytest
import torch

from bncourse.cases.charlm import (KINDS, CharLM, evaluate_bpc, make_charlm, sample,
                                   train_charlm, valid_batches)
from bncourse.cases.charlm_failures import (bpc_by_batch_size, bpc_by_position,
                                            gradient_by_step, pad_batch, padding_shift,
                                            recalibrate)
from bncourse.data.text import load_corpus, random_batch

SMALL = dict(hidden_size=16, embed_size=8, max_length=12)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


@pytest.fixture(scope="module")
def trained(corpus):
    models = {}
    for kind in KINDS:
        model = make_charlm(kind, corpus.vocab_size, seed=0, **SMALL)
        history = train_charlm(model, corpus, steps=30, batch_size=8, length=12, lr=1e-2,
                               eval_every=10, eval_batches=valid_batches(corpus, 8, 12, 2))
        models[kind] = (model, history)
    return models


def test_make_charlm_kinds_share_initial_weights(corpus):
    models = [make_charlm(kind, corpus.vocab_size, seed=1, **SMALL) for kind in KINDS]
    for m in models[1:]:
        assert isinstance(m, CharLM)
        assert torch.equal(m.embed.weight, models[0].embed.weight)
        assert torch.equal(m.cell.weight_ih, models[0].cell.weight_ih)
        assert torch.equal(m.cell.weight_hh, models[0].cell.weight_hh)
    with pytest.raises(ValueError, match="kind"):
        make_charlm("gru", 10)


def test_training_lowers_bpc_and_history(trained):
    for kind, (model, history) in trained.items():
        assert history.steps == [10, 20, 30]
        assert len(history.valid_bpc) == len(history.train_bpc) == 3
        assert history.valid_bpc[-1] < history.valid_bpc[0], kind
        assert history.final_bpc == history.valid_bpc[-1]
        assert history.steps_to(100.0) == 10 and history.steps_to(0.0) is None
        assert not model.training


def test_training_is_deterministic(corpus):
    runs = []
    for _ in range(2):
        model = make_charlm("bn", corpus.vocab_size, seed=2, **SMALL)
        runs.append(train_charlm(model, corpus, steps=5, batch_size=4, length=12, eval_every=5,
                                 eval_batches=valid_batches(corpus, 4, 12, 1)).valid_bpc)
    assert runs[0] == runs[1]


def test_evaluate_bpc_train_mode_leaves_statistics(trained, corpus):
    model, _ = trained["bn"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = valid_batches(corpus, 8, 12, 1)
    assert evaluate_bpc(model, batches, train_mode=True) > 0
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_sample_is_deterministic(trained, corpus):
    model, _ = trained["bn"]
    a = sample(model, corpus, "The ", 40, seed=3)
    b = sample(model, corpus, "The ", 40, seed=3)
    assert a == b and a.startswith("The ") and len(a) == 44
    with pytest.raises(ValueError, match="prompt"):
        sample(model, corpus, "", 5)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, corpus, "a", 5, temperature=0)


def test_gradient_by_step(trained, corpus):
    model, _ = trained["lstm"]
    x, y = random_batch(corpus.train, 4, 12, torch.Generator().manual_seed(0))
    norms = gradient_by_step(model, x, y)
    assert norms.shape == (12,) and (norms >= 0).all()


def test_failure_measurements(trained, corpus):
    bn, _ = trained["bn"]
    ln, _ = trained["ln"]
    batches = valid_batches(corpus, 8, 12, 1)
    assert bpc_by_position(bn, corpus.valid, 30, batch_size=4, n_batches=1).shape == (30,)
    sizes = bpc_by_batch_size(ln, batches, [2, 4])
    assert set(sizes) == {0, 2, 4}
    assert max(sizes.values()) - min(sizes.values()) < 1e-5  # LayerNorm: no batch dependence
    with pytest.raises(ValueError, match="batch_sizes"):
        bpc_by_batch_size(ln, batches, [3])
    x, y = batches[0]
    lengths = [12] * 4 + [5] * 4
    assert padding_shift(ln, x, y, lengths) < 1e-5
    assert padding_shift(bn, x, y, lengths) > 1e-3
    with pytest.raises(ValueError, match="full-length"):
        padding_shift(bn, x, y, [12] * 8)
    cal = [random_batch(corpus.train, 8, 12, torch.Generator().manual_seed(k)) for k in range(2)]
    clean = recalibrate(bn, cal)
    padded = recalibrate(bn, cal, [torch.tensor(lengths)] * 2)
    assert not clean.training
    assert not torch.equal(clean.cell.bn_c.running_mean, padded.cell.bn_c.running_mean)
    assert clean.cell.bn_c.momentum == bn.cell.bn_c.momentum


def test_pad_batch():
    x = torch.zeros(4, 2, dtype=torch.int64)
    _, mask = pad_batch(x, [4, 2])
    assert mask[:, 0].tolist() == [1, 1, 1, 1] and mask[:, 1].tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="lengths"):
        pad_batch(x, [5, 1])


def test_train_many_and_plot(corpus):
    import matplotlib.pyplot as plt

    from bncourse.cases.charlm import plot_bpc, train_many

    runs = train_many(corpus, ("lstm", "ln"), (0, 1), steps=4, batch_size=4, length=12,
                      eval_every=2, eval_batches=valid_batches(corpus, 4, 12, 1),
                      model_kwargs=SMALL)
    assert set(runs) == {"lstm", "ln"} and all(len(v) == 2 for v in runs.values())
    assert runs["lstm"][0][1].steps == [2, 4]
    fig = plot_bpc({k: [h for _, h in v] for k, v in runs.items()})
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None
    plt.close(fig)


def test_bpc_streamed(trained, corpus):
    from bncourse.cases.charlm_failures import bpc_streamed

    lstm, _ = trained["lstm"]
    bn, _ = trained["bn"]
    whole = bpc_by_position(lstm, corpus.valid, 24, batch_size=4, n_batches=1)
    streamed = bpc_streamed(lstm, corpus.valid, 24, chunk=12, batch_size=4, n_batches=1)
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-5)  # plain LSTM: the same
    bn_whole = bpc_by_position(bn, corpus.valid, 24, batch_size=4, n_batches=1)
    bn_streamed = bpc_streamed(bn, corpus.valid, 24, chunk=12, batch_size=4, n_batches=1)
    torch.testing.assert_close(bn_streamed[:12], bn_whole[:12])  # the first chunk is the same
    assert not torch.allclose(bn_streamed[12:], bn_whole[12:])
    with pytest.raises(ValueError, match="chunk"):
        bpc_streamed(lstm, corpus.valid, 24, chunk=5)
