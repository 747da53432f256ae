"""Search: the query language (query.py), the normalized view of a record
(fields.py) and the tantivy index derived from the changefeed (index.py)."""
