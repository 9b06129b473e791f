"""Datasets: the IDX reader, the registry of named datasets, downloads and minibatches."""

from dgm.data.arrays import Data
from dgm.data.batches import (
    Binarize,
    TensorBatches,
    binarize_fixed,
    dequantize,
    dequantize_fixed,
    to_unit_interval,
)
from dgm.data.download import check_url, download_file
from dgm.data.idx import read_idx, sha256_of_idx, write_idx
from dgm.data.registry import (
    REGISTRY,
    Dataset,
    DatasetSpec,
    IdxFile,
    available_datasets,
    data_home,
    load_dataset,
)

__all__ = [
    "REGISTRY",
    "Binarize",
    "Data",
    "Dataset",
    "DatasetSpec",
    "IdxFile",
    "TensorBatches",
    "available_datasets",
    "binarize_fixed",
    "check_url",
    "data_home",
    "dequantize",
    "dequantize_fixed",
    "download_file",
    "load_dataset",
    "read_idx",
    "sha256_of_idx",
    "to_unit_interval",
    "write_idx",
]
