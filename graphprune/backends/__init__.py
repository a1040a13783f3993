"""Backends: lower a pruned model for a target and emit a deployable folder.

Every backend exposes the same phases (legalize, lower, tune, emit) behind `compile`;
heavy imports (onnxruntime, tvm) happen inside functions.
"""
