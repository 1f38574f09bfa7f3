"""The store: the DuckDB schema, opening and locking, registration and study
records, the event writer, recovery from journals, the views and the read-only query
rules; ``merge``, ``rm`` and ``rebuild`` beside them.

Imports the study stage and the shared modules (the training stage only where a command
reads a checkpoint); nothing above.
"""
