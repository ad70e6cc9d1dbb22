"""Data: the in-memory catalog and interaction types, MovieLens-100K and the LOO-99 split.

Catalogs and interaction logs are imported from CSV / TSV / JSONL / RecBole files by ``catalog_io`` (public API),
over ``rows`` (files to rows) and ``fields`` (columns and values).
"""
