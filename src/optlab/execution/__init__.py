"""Execution: the coordinator (the single writer of the store, the live
progress view), the executors (the local pool of warm workers, Ray), the plan of what
is left to run and the selection of part of a study.

Imports the store, training, study and plugins stages and the shared modules.
"""
