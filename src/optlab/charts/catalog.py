"""The table of charts: one row (:class:`~optlab.charts.figures.Chart`) per chart, read by
``optlab plot`` (a command per row, its options from the row), by ``Store.plot`` and by the
report (which charts fit a study).

Each row sits beside its figure function in the module of its kind (its ``CHARTS``); this
table is those rows in the order the help and the report show them. To add a chart, write
its function and its row in a kind module (a new module: add it to ``_KINDS`` below).

Each figure runs one SQL query (kept in the figure, and written next to the image) and
draws its rows with Altair. Lines are the mean over seeds; bands are a 95% t-interval of
that mean from 4 seeds on, the seeds' range with 2 or 3 (none with one), never outside the
metric's range. Blocks and axes that a chart does not show get their own
panels unless ``--facet`` says otherwise; what is then pooled is named in the title and in
the output line.
"""

from __future__ import annotations

from optlab.charts import (
    comparisons,
    gradients,
    heatmap,
    lines,
    probe_charts,
    scaling,
    searches,
)
from optlab.charts.figures import Chart
from optlab.errors import OptlabError

_KINDS = (heatmap, lines, scaling, searches, gradients, probe_charts, comparisons)

CHARTS: dict[str, Chart] = {row.name: row for kind in _KINDS for row in kind.CHARTS}


def chart(name: str) -> Chart:
    """The row of chart ``name``."""
    try:
        return CHARTS[name]
    except KeyError:
        raise OptlabError(f"plot {name!r}: charts are {', '.join(CHARTS)}") from None
