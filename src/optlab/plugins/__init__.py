"""Plugins: the registry (entry points, one group per kind), the public contract
plugin authors write against (re-exported by ``optlab``), and the built-ins.

The bottom stage: imports only the shared modules (errors, events, atomic, locations).
"""
