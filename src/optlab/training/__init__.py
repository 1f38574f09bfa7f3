"""Training: the engine's loop, probes, checkpoints, and the worker process that trains
runs and journals their events.

Imports the study and plugins stages and the shared modules; never the store (workers
never open it) and nothing above.
"""
