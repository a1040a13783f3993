"""workflow/files.py: what the summary's "file size" row counts."""
from __future__ import annotations

import onnx

from graphprune.workflow.files import model_size


def test_model_size_counts_external_data_of_any_name(samples_dir, tmp_path):
    """A model saved with its tensors in `weights.bin` (not `<name>.data`): the summary's
    "file size" row counted the .onnx alone (6.6 KB for 392 KB, ratio 46.6 after pruning)."""
    proto = onnx.load(str(samples_dir / "tiny_resnet.onnx"))
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    data = tmp_path / "weights.bin"
    assert data.stat().st_size > 10 * path.stat().st_size
    assert model_size(path) == path.stat().st_size + data.stat().st_size
    inside = tmp_path / "inside.onnx"  # (save_as_external_data changed `proto` in place)
    onnx.save_model(onnx.load(str(samples_dir / "tiny_resnet.onnx")), str(inside))
    assert model_size(inside) == inside.stat().st_size
