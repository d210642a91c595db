"""Drawing for the V²Drop Studio app, usable from a notebook too: functions that take a
:class:`v2drop.Trace` (or its ``samples[0]``) and return PIL images or plotly figures.

    from visualize import kept_overlay, variation_heatmap, alive_chart, performance_chart, run_story
"""

from .charts import alive_chart, metrics_rows, performance_chart, retention_chart
from .overlay import colorbar, dropped_overlay, kept_overlay, patch_boxes, variation_heatmap
from .story import how_it_works, run_story, schedule_text

__all__ = ["kept_overlay", "variation_heatmap", "dropped_overlay", "patch_boxes", "colorbar", "alive_chart",
           "performance_chart", "metrics_rows", "retention_chart", "how_it_works", "run_story", "schedule_text"]
