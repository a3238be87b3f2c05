"""Run by the Infinity optimum venv's Python (``benchmarks/infinity.py`` calls it), not ours:

    <venv>/bin/python benchmarks/infinity_onnx.py FOLDER

writes ``FOLDER/model.onnx`` (optimum's exporter, ``feature-extraction``: the graph the Hub's
ONNX folders hold) and ``FOLDER/model_optimized.onnx`` (optimum's ``ORTOptimizer`` with the
configuration Infinity 0.0.78's own optimisation step asks for: level 99, CPU, no fp16). Infinity
serves the ``*_optimized.onnx`` it finds in the folder.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path


def main(folder: Path) -> None:
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    with tempfile.TemporaryDirectory() as scratch:
        main_export(str(folder), output=scratch, task="feature-extraction", library_name="transformers")
        shutil.copy(Path(scratch) / "model.onnx", folder / "model.onnx")
    model = ORTModelForFeatureExtraction.from_pretrained(
        str(folder), file_name="model.onnx", provider="CPUExecutionProvider"
    )
    config = OptimizationConfig(optimization_level=99, optimize_for_gpu=False, fp16=False)
    with tempfile.TemporaryDirectory() as scratch:
        ORTOptimizer.from_pretrained(model).optimize(
            optimization_config=config, save_dir=scratch, one_external_file=True
        )
        shutil.copy(Path(scratch) / "model_optimized.onnx", folder / "model_optimized.onnx")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
