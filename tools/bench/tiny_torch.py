"""Saves the PyTorch twin of the sd15-tiny fixture (for compare.py's torch engine on the tiny workload).

The pipeline comes from tools/fixtures/gen_pipelines.py's own builder (`make_sd15`, same seeds and weight
shaping, seeded the way its main() seeds), and is checked against the committed ONNX export: every ONNX
initializer whose name is a torch parameter name must hold exactly the same numbers.

    tools/fixtures/.venv/bin/python tools/bench/tiny_torch.py OUT_DIR
"""
from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")  # gen_pipelines' weights are pinned to this (regen.sh)
ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "fixtures"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import fixtures_common as fc  # noqa: E402
import gen_pipelines as gp  # noqa: E402

TINY = ROOT / "tests" / "fixtures" / "models" / "sd15-tiny"
# torch module -> ONNX components whose graphs hold (some of) its parameters under their own names
COMPONENTS = {"text_encoder": ["text_encoder"], "unet": ["unet"], "vae": ["vae_decoder", "vae_encoder"]}


def check_against_onnx(pipe) -> int:
    """Number of parameters compared; raises if any differs or too few names match."""
    compared = 0
    for module_name, onnx_dirs in COMPONENTS.items():
        params = {k: v.detach().numpy() for k, v in getattr(pipe, module_name).state_dict().items()}
        matched = 0
        for comp in onnx_dirs:
            graph = onnx.load(str(TINY / comp / "model.onnx")).graph
            for init in graph.initializer:
                if init.name in params:
                    want = numpy_helper.to_array(init)
                    have = params[init.name].reshape(want.shape)
                    if not np.array_equal(have, want):
                        raise SystemExit(f"{module_name}.{init.name} differs from {comp}/model.onnx: the builder "
                                         "no longer reproduces the committed fixture")
                    matched += 1
        if matched < 10:
            raise SystemExit(f"{module_name}: only {matched} parameters matched ONNX initializer names")
        compared += matched
    return compared


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = pathlib.Path(sys.argv[1])
    fc.seed_all(0)  # as gen_pipelines.main() does before make_sd15()
    pipe = gp.make_sd15()
    n = check_against_onnx(pipe)
    pipe.save_pretrained(out, safe_serialization=True)
    print(f"sd15-tiny torch pipeline: {n} parameters identical to the ONNX fixture; saved to {out}")


if __name__ == "__main__":
    main()
