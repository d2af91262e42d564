"""Datasets: the registry of names, the readers (IDX, npz, CIFAR binary) and the
checksum-verified download. Returns uint8/float tensors; knows nothing of models.

May import: `actlab.errors`.
"""
