"""Running models: ONNX Runtime, calibration data, activation statistics, the oracle.

* `ort`: ONNX Runtime sessions, random feeds at the representative shapes, running a
  model for named intermediate tensors (`Runner`).
* `calibration`: calibration data sources (.npz, image folders, module:function) and a
  progress bar over their batches.
* `stats`: streaming per-channel and Gram statistics of activations.
* `positions`: which positions of a text batch are real tokens (padding is left out of
  every statistic).
* `oracle`: the masked original (in memory and on disk) and the comparison of outputs.

The modules are imported by name (`from graphprune.runtime.ort import session`); this
package imports nothing, so importing one does not load the others.
"""
