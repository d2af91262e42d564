"""Datasets: the registry of names (registry), where files are found (locate), the readers
(readers: IDX, CIFAR binary, digits; npz; text), the checksum-verified download (download),
the splits (splits) and the `Dataset` they make (dataset); `datasets` is the public face
(`load_dataset`). Returns uint8/float tensors; knows nothing of models.

May import: `actlab.errors`.
"""
