"""Source formats (one module each) and the helpers they share, behind :mod:`llmrec.data.loaders`.

- :mod:`~llmrec.data.formats.reading`: opening files, separators, header and row checks;
- :mod:`~llmrec.data.formats.values`: parsing ids, order keys, ratings and item text;
- :mod:`~llmrec.data.formats.canonical`: building the canonical
  :class:`~llmrec.data.schema.RecDataset` tables (and the checks every loader ends with);
- :mod:`~llmrec.data.formats.movielens`: MovieLens CSV, 100K and 1M/10M;
- :mod:`~llmrec.data.formats.amazon`: Amazon Reviews 2023 JSON Lines;
- :mod:`~llmrec.data.formats.recbole`: RecBole atomic files;
- :mod:`~llmrec.data.formats.tables`: any CSV/TSV/Parquet pair with a :class:`ColumnMapping`.

Import the loaders from :mod:`llmrec.data` (or :mod:`llmrec.data.loaders`).
"""
