"""Offline data for the course; nothing downloads.

    datasets.py   Dataset, load_digits, load_mnist1d, iterate_minibatches (lessons 01, 05, 06)
"""
from bncourse.data.datasets import Dataset, iterate_minibatches, load_digits, load_mnist1d

__all__ = ["Dataset", "load_digits", "load_mnist1d", "iterate_minibatches"]
