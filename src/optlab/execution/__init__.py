"""Execution: the coordinator (the single writer of the store, the live
progress view), the executors (the local pool of warm workers, Ray) and the queue they
share, the plan of what is left to run, the selection of part of a study, the worker
slots and GPU specs (``devices``), the datasets made ready before runs start
(``preparing``), and tuning: successive halving (``halving``), final runs (``finals``) and
what the coordinator does for them while a study runs (``tuning``).

The writer of the store, beside the readers (analysis, charts, serve), never importing
them nor they it. Imports the store, training, study and plugins stages and the shared
modules; the executors import neither the store nor DuckDB (they run on every node).
"""
