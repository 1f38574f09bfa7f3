"""The charts: heatmap, curves, sensitivity, scaling, sfo, gradnorm and probes, one import
for the CLI, the report and the API.

Each ``*_figure(con, study, axes, ...)`` runs one SQL query (kept in the figure, and
written next to the image) and draws its rows with Altair. Lines are the mean over seeds;
bands are a 95% t-interval of that mean (none with one seed). Blocks and axes that a chart
does not show get their own panels unless ``--facet`` says otherwise; what is then pooled
is named in the title and in the output line. Each chart lives in the module of its kind:
:mod:`~optlab.charts.heatmap`, :mod:`~optlab.charts.lines`, :mod:`~optlab.charts.gradients`,
:mod:`~optlab.charts.probe_charts`, with what they share in :mod:`~optlab.charts.drawing`.
"""

from __future__ import annotations

from optlab.charts.drawing import (
    BAND,
    BATCH,
    CURVE_COLUMNS,
    LR,
    X_CHOICES,
    axis,
    cell_expr,
    ci_sql,
    color_order,
    colour,
    fmt,
    line_band,
    sort_key,
)
from optlab.charts.gradients import (
    gradnorm_figure,
    gradnorm_sql,
    sfo_figure,
    sfo_sql,
)
from optlab.charts.heatmap import (
    STATES,
    heatmap_figure,
    heatmap_sql,
)
from optlab.charts.lines import (
    curves_figure,
    curves_sql,
    scaling_figure,
    scaling_sql,
    sensitivity_figure,
    sensitivity_sql,
)
from optlab.charts.probe_charts import (
    probe_names,
    probes_figure,
    probes_sql,
    require_probe,
)

__all__ = [
    "BAND",
    "BATCH",
    "CURVE_COLUMNS",
    "LR",
    "X_CHOICES",
    "axis",
    "ci_sql",
    "color_order",
    "colour",
    "fmt",
    "line_band",
    "sort_key",
    "STATES",
    "heatmap_figure",
    "heatmap_sql",
    "curves_figure",
    "curves_sql",
    "scaling_figure",
    "scaling_sql",
    "sensitivity_figure",
    "sensitivity_sql",
    "cell_expr",
    "gradnorm_figure",
    "gradnorm_sql",
    "sfo_figure",
    "sfo_sql",
    "probe_names",
    "probes_figure",
    "probes_sql",
    "require_probe",
]
