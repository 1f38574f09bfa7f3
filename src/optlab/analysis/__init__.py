"""Analysis: reading results out of the store (runs, axes, metrics), the named
analyses (optimal, lr-wd, scaling, warmup, sfo, ranking), status and export.

Imports the store and the stages below it; never execution.
"""
