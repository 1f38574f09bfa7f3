"""The study: study files (their schema and loading), expansion into runs, search
spaces, dotted keys, the learning-rate bookkeeping a config implies, and plugins given
as files beside a study.

Imports the plugins stage (the registry, to validate each plugin's table) and the shared
modules (errors, events, atomic, locations); nothing above it.
"""
