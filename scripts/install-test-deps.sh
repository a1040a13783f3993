#!/usr/bin/env bash
# Everything the test suite needs, on a fresh machine (used by the README and CI).
# torch is pinned to the local CPU wheel through constraints.txt: an unpinned torch would
# pull gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
# olive: ~1 min, pulls pandas/optuna/SQLAlchemy/opentelemetry, no other torch (tests/torch/test_olive_adapter.py)
python -m pip install -q -c constraints.txt -e ".[test,torch,tvm,report,lint,olive]"
# Pretrained PP-OCR ONNX models ship inside this package; its own deps (OpenCV ...) are not needed.
python -m pip install -q --no-deps "rapidocr-onnxruntime==1.4.4"
# Cross compiler and emulator for the ARM backend tests (Debian packages), when we can install them.
if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || ! command -v qemu-aarch64 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user) \
      >/dev/null 2>&1 || echo "note: could not install the aarch64 cross compiler; ARM tests will skip"
  else
    echo "note: no aarch64 cross compiler; ARM tests will skip"
  fi
fi
# Headless Chromium renders report.html in tests/report/test_browser.py (Debian package, ~1.5 min;
# the test is skipped without it, except in CI).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
      >/dev/null 2>&1 || echo "note: could not install chromium; the report rendering test will skip"
  else
    echo "note: no chromium; the report rendering test will skip"
  fi
fi
