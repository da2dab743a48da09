"""Offline data for the course; nothing downloads.

    datasets.py   Dataset, load_digits, load_digits_images, load_mnist1d, iterate_minibatches
                  (lessons 01, 05, 06)
    text.py       CharCorpus, load_corpus, random_batch, sequential_batches (case study 08)
    sequences.py  PaddedSequences, padded_sequences, sequence_split (lesson 12)
"""
from bncourse.data.datasets import Dataset, iterate_minibatches, load_digits, load_mnist1d
from bncourse.data.datasets import load_digits_images
from bncourse.data.sequences import PaddedSequences, padded_sequences, sequence_split
from bncourse.data.text import CharCorpus, load_corpus, random_batch, sequential_batches

__all__ = ["Dataset", "load_digits", "load_digits_images", "load_mnist1d", "iterate_minibatches",
           "CharCorpus", "load_corpus", "random_batch", "sequential_batches",
           "PaddedSequences", "padded_sequences", "sequence_split"]
