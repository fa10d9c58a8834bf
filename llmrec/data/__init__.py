"""Data layer: loaders, cleaning, catalog indexing and splits."""

from llmrec.data.catalog import History, ItemCatalog
from llmrec.data.cleaning import CleaningConfig, clean, k_core_mask
from llmrec.data.loaders import (
    ColumnMapping,
    detect_format,
    infer_mapping,
    load_amazon2023,
    load_amazon2023_folder,
    load_dataset,
    load_movielens,
    load_movielens_1m,
    load_movielens_100k,
    load_recbole,
    load_tables,
    load_tables_folder,
)
from llmrec.data.schema import RecDataset
from llmrec.data.split import CrossDomainSplit, LeaveOneOutSplit, cross_domain_split, leave_one_out

__all__ = [
    "CleaningConfig",
    "ColumnMapping",
    "CrossDomainSplit",
    "History",
    "ItemCatalog",
    "LeaveOneOutSplit",
    "RecDataset",
    "clean",
    "cross_domain_split",
    "detect_format",
    "infer_mapping",
    "k_core_mask",
    "leave_one_out",
    "load_amazon2023",
    "load_amazon2023_folder",
    "load_dataset",
    "load_movielens",
    "load_movielens_100k",
    "load_movielens_1m",
    "load_recbole",
    "load_tables",
    "load_tables_folder",
]
