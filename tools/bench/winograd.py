#!/usr/bin/env python3
"""One 3×3 convolution layer at a time: ONNX Runtime's direct `Conv` against the Winograd F(2,3) and F(4,3)
graphs sdrt builds (`crates/models/src/graph/winograd.rs`, the same operators written again here with
`onnx.helper`), on the CPU provider, for the layer shapes of an SD1.5 UNet step (batch 2) and VAE decode
(batch 1) at 512×512. This is what chose `Winograd::default()`'s widths; `options.py` measures the whole model.

    tools/fixtures/.venv/bin/python tools/bench/winograd.py [--threads 2] [--runs 5] [--json-out F]

Prints, per layer shape, the best-of-runs time of each graph, the speed-up over direct, and each graph's
largest difference from direct as a fraction of direct's largest value.
"""

import argparse
import json
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# (Bᵀ, G, Aᵀ) of F(m, 3), Lavin & Gray (2016).
TRANSFORMS = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
         [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
         [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}

# (label, batch, in channels, out channels, size): every distinct 3×3 stride-1 layer shape.
LAYERS = [
    ("unet 64² 320", 2, 320, 320, 64), ("unet 64² 640→320", 2, 640, 320, 64),
    ("unet 32² 640", 2, 640, 640, 32), ("unet 32² 1280→640", 2, 1280, 640, 32),
    ("unet 16² 1280", 2, 1280, 1280, 16), ("unet 16² 2560→1280", 2, 2560, 1280, 16),
    ("unet 8² 1280", 2, 1280, 1280, 8), ("unet 8² 2560→1280", 2, 2560, 1280, 8),
    ("vae 64² 512", 1, 512, 512, 64), ("vae 128² 512", 1, 512, 512, 128),
    ("vae 256² 256", 1, 256, 256, 256), ("vae 512² 128", 1, 128, 128, 512),
]


def model(nodes, initializers, shape):
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    built.ir_version = 10
    return built.SerializeToString()


def direct(weight, bias, shape):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    return model(nodes, [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")], shape)


def winograd(weight, bias, shape, m):
    """The graph of `Net::winograd_conv` for a fixed input shape (its shape arithmetic done here)."""
    b_t, g, a_t = (np.array(v, np.float64) for v in TRANSFORMS[m])
    t = m + 2
    batch, channels, height, width = shape
    out = weight.shape[0]
    kernels = np.einsum("iu,ocuv,jv->ijoc", g, weight.astype(np.float64), g).reshape(t * t, out, channels)
    inputs = np.einsum("iu,jv->ijuv", b_t, b_t).reshape(t * t, 1, t, t)
    outputs = np.einsum("ai,bj->abij", a_t, a_t).reshape(m * m, t * t)
    tiles_h, tiles_w = -(-height // m), -(-width // m)

    def i64(name, values):
        return numpy_helper.from_array(np.array(values, np.int64), name)

    def f32(name, values):
        return numpy_helper.from_array(np.asarray(values, np.float32), name)

    initializers = [
        f32("inputs", inputs), f32("kernels", kernels), f32("outputs", outputs), f32("bias", bias.reshape(-1, 1, 1)),
        i64("pads", [0, 0, 1, 1, 0, 0, m * tiles_h + 1 - height, m * tiles_w + 1 - width]),
        i64("single", [-1, 1, 0, 0]), i64("split", [batch, channels, t * t, -1]), i64("matrix", [t * t, channels, -1]),
        i64("rows", [t * t, -1]), i64("blocks", [m, m, out, batch, tiles_h, tiles_w]),
        i64("picture", [batch, out, m * tiles_h, m * tiles_w]), i64("starts", [0, 0]), i64("ends", [height, width]),
        i64("axes", [2, 3]),
    ]
    node = helper.make_node
    nodes = [
        node("Pad", ["x", "pads"], ["padded"]),
        node("Reshape", ["padded", "single"], ["images"]),
        node("Conv", ["images", "inputs"], ["tiles"], kernel_shape=[t, t], strides=[m, m]),
        node("Reshape", ["tiles", "split"], ["split_tiles"]),
        node("Transpose", ["split_tiles"], ["by_position"], perm=[2, 1, 0, 3]),
        node("Reshape", ["by_position", "matrix"], ["transformed"]),
        node("MatMul", ["kernels", "transformed"], ["products"]),
        node("Reshape", ["products", "rows"], ["product_rows"]),
        node("MatMul", ["outputs", "product_rows"], ["phases"]),
        node("Reshape", ["phases", "blocks"], ["block_grid"]),
        node("Transpose", ["block_grid"], ["interleaved"], perm=[3, 2, 4, 0, 5, 1]),
        node("Reshape", ["interleaved", "picture"], ["whole"]),
        node("Slice", ["whole", "starts", "ends", "axes"], ["cropped"]),
        node("Add", ["cropped", "bias"], ["y"]),
    ]
    return model(nodes, initializers, list(shape))


def best_ms(graph, x, threads, runs):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return y, min(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    print(f"| layer | direct ms | F(2,3) ms | × | F(4,3) ms | × | error F(2,3) / F(4,3) |\n|---|---|---|---|---|---|---|")
    for label, batch, channels, out, size in LAYERS:
        shape = (batch, channels, size, size)
        x = rng.standard_normal(shape, np.float32)
        weight = (rng.standard_normal((out, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
        bias = rng.standard_normal(out).astype(np.float32)
        reference, direct_ms = best_ms(direct(weight, bias, shape), x, args.threads, args.runs)
        row = {"layer": label, "direct_ms": direct_ms}
        for m in (2, 4):
            y, ms = best_ms(winograd(weight, bias, shape, m), x, args.threads, args.runs)
            row[f"f{m}_ms"] = ms
            row[f"f{m}_error"] = float(np.abs(y - reference).max() / np.abs(reference).max())
        rows.append(row)
        print(f"| {label} | {direct_ms:.1f} | {row['f2_ms']:.1f} | {direct_ms / row['f2_ms']:.2f} | "
              f"{row['f4_ms']:.1f} | {direct_ms / row['f4_ms']:.2f} | "
              f"{row['f2_error']:.1e} / {row['f4_error']:.1e} |", flush=True)
    if args.json_out:
        with open(args.json_out, "w") as out_file:
            json.dump({"threads": args.threads, "runs": args.runs, "onnxruntime": ort.__version__, "layers": rows},
                      out_file, indent=1)


if __name__ == "__main__":
    main()
