"""Offline data for the course; nothing downloads.

    datasets.py   Dataset, load_digits, load_digits_images, load_mnist1d, iterate_minibatches
                  (lessons 01, 05, 06)
"""
from bncourse.data.datasets import Dataset, iterate_minibatches, load_digits, load_mnist1d
from bncourse.data.datasets import load_digits_images

__all__ = ["Dataset", "load_digits", "load_digits_images", "load_mnist1d", "iterate_minibatches"]
