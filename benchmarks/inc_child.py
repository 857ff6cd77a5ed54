"""Runs Intel's onnx-neural-compressor in its own process (its folder first on PYTHONPATH; it pins
numpy<2, so it cannot live beside the studio). Arguments: input.onnx output.onnx calib.npz options.
Prints the library's version last."""

import json
import sys
from collections import defaultdict

import numpy as np


def main(src: str, out: str, calib: str, options: str) -> None:
    import onnx_neural_compressor
    from onnx_neural_compressor import data_reader
    from onnx_neural_compressor.quantization import config, quantize

    opts = json.loads(options)
    stored = np.load(calib)
    batches = defaultdict(dict)
    for key in stored.files:
        i, name = key.split(":", 1)
        batches[int(i)][name] = stored[key]
    batches = [batches[i] for i in sorted(batches)]

    class Reader(data_reader.CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(batches):
                return None
            self.i += 1
            return batches[self.i - 1]

        def rewind(self):
            self.i = 0

    extra = {"SmoothQuant": True, "SmoothQuantAlpha": 0.5} if opts.get("smooth_quant") else None
    qconfig = config.StaticQuantConfig(calibration_data_reader=Reader(), extra_options=extra)
    quantize(src, out, qconfig)
    print(getattr(onnx_neural_compressor, "__version__", "1.0"))


if __name__ == "__main__":
    main(*sys.argv[1:5])
