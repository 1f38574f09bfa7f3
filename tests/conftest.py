"""Shared fixtures: tiny studies, and the CLI run in-process or as a real process."""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer.testing
from typer.main import get_command
from typer.testing import CliRunner

from optlab.cli import app
from optlab.plugins import registry

ROOT = Path(__file__).resolve().parents[1]

# typer's test runner rebuilds the click command from the app on every call (about 9 ms,
# a few seconds over the suite); `optlab` itself builds it once a process, so do the tests.
if hasattr(typer.testing, "_get_command"):
    _COMMAND = get_command(app)
    typer.testing._get_command = lambda a: _COMMAND if a is app else get_command(a)

_BUILTINS = registry.builtin_registry()


def pytest_sessionstart(session: pytest.Session) -> None:
    """optlab's own modules compiled once for the hundreds of processes the slow tests
    start (where PYTHONDONTWRITEBYTECODE is set, as on these machines, each would compile
    them again: a fifth of a second a process). Once, in the process that runs the session
    (pytest-xdist's controller), before its workers start."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import compileall

    compileall.compile_dir(ROOT / "src" / "optlab", quiet=2, workers=1)


# Set by pytest itself, or by libraries on first use whichever test that is (OpenMP at
# import, torch's compiler cache folder, a Ray driver's init).
_THEIRS = (
    "PYTEST_CURRENT_TEST",
    "KMP_",
    "TORCHINDUCTOR_",
    "TRITON_",
    "RAY_",
    "PYTHONBREAKPOINT",
)


class RealProcessInQuickTier(AssertionError):
    pass


def _starts_optlab(argv: list[str]) -> bool:
    """``optlab ...``, ``python -m optlab[.anything]``, or ``python -c`` code that imports
    optlab (a shell command line is read the same way). The pool tests' stand-in worker
    (``fake-python -m optlab.training.worker``, tests/fake_worker.py) is not optlab."""
    if len(argv) == 1 and " " in argv[0]:
        argv = argv[0].split()
    if not argv:
        return False
    if Path(argv[0]).name == "optlab":
        return True
    if not Path(argv[0]).name.startswith(("python", "sh", "bash")):
        return False  # a stand-in (the pool tests' fake worker), a browser, ...
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "-m" and (value == "optlab" or value.startswith("optlab.")):
            return True
        if flag == "-c" and (
            "import optlab" in value or "from optlab" in value or _starts_optlab(value.split())
        ):
            return True
    return False


@pytest.fixture(autouse=True)
def _quick_tier_starts_no_optlab(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """The quick tier (``-m "not slow"``) starts no real `optlab` process, worker or
    interpreter that imports optlab: a test that does must be marked slow. Every process a
    test starts, directly or through asyncio, goes through ``subprocess.Popen``; the pool's
    workers are forked through ``forked.start``."""
    if request.node.get_closest_marker("slow") is not None:
        return
    real = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        words = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        if _starts_optlab([os.fsdecode(w) for w in words]):
            shown = " ".join(os.fsdecode(w) for w in words)[:200]
            raise RealProcessInQuickTier(
                f"{request.node.nodeid} starts a real optlab process ({shown}): mark it "
                "@pytest.mark.slow, or test the same in-process"
            )
        real(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)

    async def forked(*args, **kwargs):  # the pool's workers, forked from its fork server
        raise RealProcessInQuickTier(
            f"{request.node.nodeid} starts a real optlab worker: mark it @pytest.mark.slow, "
            "or test the same in-process"
        )

    monkeypatch.setattr("optlab.execution.executors.forked.start", forked)


@pytest.fixture(autouse=True)
def _hermetic(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Every test sees optlab's own plugins only (not whatever else this environment has
    installed), unless marked ``installed_plugins``; and leaves os.environ as it found it."""
    before = dict(os.environ)
    if request.node.get_closest_marker("installed_plugins") is None:
        monkeypatch.setattr(registry, "_default", _BUILTINS)
    yield
    monkeypatch.undo()
    changed = sorted(
        k
        for k in {*before, *os.environ}
        if before.get(k) != os.environ.get(k) and not k.startswith(_THEIRS)
    )
    if changed:
        os.environ.clear()
        os.environ.update(before)
        pytest.fail(f"the test left environment variables changed: {', '.join(changed)}")


TINY = """
name = "tiny"
seeds = [0, 1]

[base]
epochs = 2
dataset = {{ name = "synthetic", classes = 3, shape = [1, 4, 4], train_size = 48, test_size = 24 }}
model = {{ name = "mlp", hidden = [8] }}
optimizer = {{ name = "sgd", lr = 0.1, momentum = 0.9 }}
batch_schedule = {{ name = "constant", batch_size = 16 }}

[[block]]
name = "grid"
[block.grid]
"optimizer.lr" = {lrs}
"optimizer.weight_decay" = [0.0, 0.01]
"""


def write_study(
    folder: Path, lrs: str = "[0.01, 0.1]", text: str | None = None, name: str = "tiny.toml"
) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text) if text is not None else TINY.format(lrs=lrs))
    return path


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    return write_study(tmp_path)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run `optlab ARGS` in-process (no workers needed); returns the click Result."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


# Commands that read or rewrite a store and load no plugin: what a fresh process would
# add to them is its start (most of a second each, a few hundred times in the suite), so
# the slow tests run them in this process, in ``cwd``, as a second terminal would.
IN_PROCESS = (
    "query",
    "status",
    "rm",
    "merge",
    "rebuild",
    "weights",
    "export",
    "report",
    "plot",
)
STUDIES = ("run", "train")  # in this process too, unless given an environment of their own


def optlab(
    *args: str,
    cwd: Path,
    timeout: float = 240,
    env: dict[str, str] | None = None,
    check: bool = False,
    fresh: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `optlab ARGS` in ``cwd``: the store's readers and rewriters, the charts and a
    study (`run`, `train`, to its end; its workers are real processes) in this process,
    unless ``fresh`` (this process holds the store itself: a page it serves) or a study is
    given an environment of its own; whatever else loads plugins (`show`) in a fresh one."""
    if not fresh and args and (args[0] in IN_PROCESS or (args[0] in STUDIES and env is None)):
        return _in_process(list(args), cwd, env, check)
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("OPTLAB_STORE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "optlab", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"optlab {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def _in_process(
    args: list[str], cwd: Path, env: dict[str, str] | None, check: bool
) -> subprocess.CompletedProcess[str]:
    here = os.getcwd()
    os.chdir(cwd)
    try:
        # In a context of its own, as a process would be: what a command makes visible to
        # the rest of its process (a study's plugin files) ends with it.
        result = contextvars.copy_context().run(
            CliRunner().invoke,
            app,
            args,
            env={"COLUMNS": "200", "OPTLAB_STORE": None, **(env or {})},
        )
    finally:
        os.chdir(here)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "".join(traceback.format_exception(result.exception))
    proc = subprocess.CompletedProcess(["optlab", *args], result.exit_code, result.stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"optlab {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> tuple[list, list]:
    """The `long` study of tests/test_survival.py run once without interruption on the
    local executor, two workers (one thread each here): what every interrupted or
    elsewhere-run copy of it must equal."""
    from tests.test_survival import EPOCHS, results, study

    folder = tmp_path_factory.mktemp("reference")
    study(folder)
    optlab("run", "long.toml", "--workers", "2", cwd=folder, check=True)
    epochs, probes = results(folder)
    assert len(epochs) == 2 * EPOCHS and probes
    return epochs, probes


@pytest.fixture(scope="session")
def ray_head():
    """One local Ray cluster (a head with two CPUs) for the Ray tests that only run studies
    on it (they share one xdist worker): each starting its own would cost seconds of CPU a
    test. The tests that kill or add nodes make their own."""
    from ray import cluster_utils  # ray: only where a Ray test runs

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("OPTLAB_DATA", raising=False)  # no data folder leaks into the nodes
        head = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    yield head.address
    head.shutdown()


def _set_node_id(item: pytest.Item, nodeid: str) -> None:
    if hasattr(item, "_id"):  # pytest 9: a structured id
        from _pytest.nodeid import coerce_node_id

        item._id = coerce_node_id(nodeid)
    else:
        item._nodeid = nodeid


def _shared_study(item: pytest.Item) -> str | None:
    shared = [  # a study a test module makes once for its tests
        name
        for name, defs in item._fixtureinfo.name2fixturedefs.items()
        if defs
        and defs[-1].scope in ("module", "session")
        and getattr(defs[-1].func, "__module__", None) == item.module.__name__
    ]
    return f"{item.module.__name__}:{shared[0]}" if shared else None


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist (``-n``, ``--dist loadgroup``): tests that share a module's real
    study (a fixture the module defines, session-scoped so that it is made once on its
    worker however the worker's tests are interleaved) run on one xdist worker; the Ray
    tests share one worker (one local cluster at a time), with the tests of a study one of
    them uses (made once, not on two workers), and so do the browser tests. The slow tests
    are handed out first."""
    # The slow tests first: the last tests handed to xdist's workers are then quick ones, and
    # neither worker idles while the other finishes a long test (the quick tier is unchanged).
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    shared_by = {item.nodeid: _shared_study(item) for item in items}
    # A study the Ray tests share joins their group, with every test that uses it.
    with_ray = {shared_by[i.nodeid] for i in items if i.get_closest_marker("ray") is not None}
    for item in items:
        group = shared_by[item.nodeid]
        if item.get_closest_marker("ray") is not None or (group and group in with_ray):
            group = "ray"
        elif "chromium" in item.name:
            group = "browser"
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
            # What xdist's worker does for a marked test under --dist loadgroup (its own
            # hook goes unregistered under pytest 9, so the groups were silently ignored):
            # the scheduler keeps the tests whose ids end in one @GROUP on one worker.
            if getattr(config.option, "loadgroup", False) and "@" not in item.nodeid:
                _set_node_id(item, f"{item.nodeid}@{group}")
