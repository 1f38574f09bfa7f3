"""nox sessions: tests, fast, lint, docs, bench, gpu (where CUDA exists)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, as CI runs it (GPU tests skip themselves without CUDA)."""
    session.install("-e", ".[dev,ray]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def fast(session: nox.Session) -> None:
    """The tests that start no worker process, interpreter, browser or cluster: -m "not slow"."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "-m", "not slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff's checks, ruff format (applied to the whole tree once; kept since), and the
    house's import contracts (pyproject's [tool.importlinter]: stages import only downward,
    no cycle)."""
    session.install("ruff", "import-linter", "-e", ".")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def docs(session: nox.Session) -> None:
    """The docs/ pages as a site (mkdocs-material), into site/; --strict: a broken link or a
    page left out of mkdocs.yml's nav fails."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against their baselines; prints the tables for BENCHMARKS.md."""
    session.install("-e", ".")
    session.run("python", "benchmarks/engine_overhead.py")
    session.run("python", "benchmarks/warm_pool.py")
    session.run("python", "benchmarks/worker_start.py")
    session.run("python", "benchmarks/resnet18_throughput.py", "--images", "512")
    session.run("python", "benchmarks/augmentation.py")
    session.run("python", "benchmarks/probe_cost.py")
    session.run("python", "benchmarks/analysis_scale.py")
    session.run("python", "benchmarks/checkpoint_cost.py")
    session.run("python", "benchmarks/store_writes.py")
    session.run("python", "benchmarks/expand.py")
    session.run("python", "benchmarks/large_study.py")
    session.run("python", "benchmarks/halving.py")
    session.run("python", "benchmarks/halving_decisions.py", "--points", "50000")


@nox.session
def gpu(session: nox.Session) -> None:
    """The GPU-marked tests and the engine benchmark on CUDA."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "-m", "gpu", "-v", *session.posargs)
    session.run("python", "benchmarks/engine_overhead.py", "--device", "cuda")
    session.run(
        "python", "benchmarks/resnet18_throughput.py", "--device", "cuda", "--images", "8192"
    )
    session.run("python", "benchmarks/augmentation.py", "--device", "cuda", "--images", "32768")
