"""Compatibility module: calibration data and statistics now live in `graphprune.runtime`.

* `graphprune.runtime.calibration`: the sources (`Calibration`, `load_calibration`,
  `from_npz`, `from_images`, `from_callable`, `ImagePreprocess`) and `progress`.
* `graphprune.runtime.stats`: streaming activation statistics (`ChannelStats`, `GramStats`,
  `StatsRequest`, `collect`, `channels_first`).
* `graphprune.runtime.ort`: running a model for named tensors (`Runner`,
  `session_with_outputs`, `concrete_shapes`).

graphprune itself, its tests, benchmarks and samples import those modules; this one only
re-exports their public names for external code (plugins, scripts).
"""
from graphprune.runtime.calibration import (
    IMAGE_EXTENSIONS, Calibration, ImagePreprocess, from_callable, from_images, from_npz, load_calibration, progress)
from graphprune.runtime.ort import Feeds, Runner, concrete_shapes, session_with_outputs
from graphprune.runtime.stats import ChannelStats, GramStats, StatsRequest, channels_first, collect

__all__ = ["IMAGE_EXTENSIONS", "Calibration", "ChannelStats", "Feeds", "GramStats", "ImagePreprocess", "Runner",
           "StatsRequest", "channels_first", "collect", "concrete_shapes", "from_callable", "from_images", "from_npz",
           "load_calibration", "progress", "session_with_outputs"]
