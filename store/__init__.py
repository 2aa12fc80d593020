"""The store: on-disk layout of a dataset, Parquet schemas, atomic IO, vectors, index, SQL.

Every other room reads and writes through here, so the contract between rooms lives in one place.
"""

from store.errors import StoreError
from store.layout import DatasetPaths, anchorrec_home, dataset_paths

__all__ = ["StoreError", "DatasetPaths", "dataset_paths", "anchorrec_home"]
