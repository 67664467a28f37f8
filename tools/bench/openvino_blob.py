"""What OpenVINO compiled: the operator counts of the graph inside a CPU plugin cache blob.

OpenVINO's compiled-model cache (`--openvino-cache`, or `cache_dir` of ONNX Runtime's provider) stores, per
compiled model, a blob whose header gives the offset and size of the graph's IR XML; the CPU plugin obfuscates
that XML with a repeating 12-byte XOR key. Comparing two blobs' operator counts shows whether two routes to
OpenVINO (native `read_model` + `reshape`, ONNX Runtime's provider with or without static input shapes) handed
it the same graph.

    python3 tools/bench/openvino_blob.py ~/.cache/sdrt/openvino/*.blob [--xml OUT_DIR]
"""

import argparse
import collections
import pathlib
import re
import struct

KEY = bytes([0x30, 0x60, 0x70, 0x02, 0x04, 0x08, 0x3F, 0x6F, 0x72, 0x74, 0x78, 0x7F])


def graph_xml(path: pathlib.Path) -> str:
    with path.open("rb") as f:
        head = f.read(4096)
        base = head.index(b"/>\n") + 3  # the blob's own XML header line ends here
        _, _, _, _, xml_offset, xml_size = struct.unpack_from("<6Q", head, base)
        f.seek(base + xml_offset)
        data = f.read(xml_size)
    return bytes(b ^ KEY[i % len(KEY)] for i, b in enumerate(data)).decode("utf-8", "replace")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("blobs", nargs="+", type=pathlib.Path)
    ap.add_argument("--xml", type=pathlib.Path, help="also write each graph's XML into this folder")
    args = ap.parse_args()
    for blob in args.blobs:
        xml = graph_xml(blob)
        inputs = re.findall(r'type="Parameter" version="opset1">\s*<data shape="([^"]*)"', xml)
        ops = collections.Counter(re.findall(r'<layer id="\d+" name="[^"]*" type="([^"]+)"', xml))
        print(f"{blob.name}: inputs {inputs[:3]}, {sum(ops.values())} layers")
        print("  " + ", ".join(f"{op} {n}" for op, n in sorted(ops.items())))
        if args.xml:
            args.xml.mkdir(parents=True, exist_ok=True)
            (args.xml / (blob.name + ".xml")).write_text(xml)


if __name__ == "__main__":
    main()
