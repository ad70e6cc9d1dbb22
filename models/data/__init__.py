"""Data: the in-memory catalog and interaction types, MovieLens-100K, the LOO-99 split, catalog readers."""
