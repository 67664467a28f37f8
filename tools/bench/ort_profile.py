#!/usr/bin/env python3
"""Sum an ONNX Runtime profile (`sdrt … --ort-profile PREFIX`) by operator type, for the last model run.

Usage: python3 tools/bench/ort_profile.py PROFILE.json [--top N] [--nodes]

Prints, per operator type, the kernel time of the session's last `model_run`, its share, and the node count;
`--nodes` lists the slowest single nodes instead. Standard library only.
"""

import argparse
import collections
import json
import sys


def last_run_events(events):
    """Kernel events that fall inside the last `model_run` of the session."""
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if not runs:
        sys.exit("no model_run event: was a session run while profiling?")
    last = runs[-1]
    start, end = last["ts"], last["ts"] + last["dur"]
    kernels = [
        e for e in events
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and start <= e["ts"] <= end
    ]
    return last, kernels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--nodes", action="store_true", help="list the slowest nodes instead of operator types")
    args = parser.parse_args()
    with open(args.profile) as f:
        events = json.load(f)
    run, kernels = last_run_events(events)
    total = sum(e["dur"] for e in kernels)
    print(f"last model_run {run['dur'] / 1e3:.1f} ms, kernels {total / 1e3:.1f} ms, {len(kernels)} nodes")
    if args.nodes:
        rows = sorted(kernels, key=lambda e: -e["dur"])[: args.top]
        for e in rows:
            name = e["name"].removesuffix("_kernel_time")
            print(f"{e['dur'] / 1e3:10.1f} ms {100 * e['dur'] / total:5.1f} %  {e['args'].get('op_name', '?'):24} {name}")
        return
    by_op = collections.defaultdict(lambda: [0, 0])
    for e in kernels:
        slot = by_op[e["args"].get("op_name", "?")]
        slot[0] += e["dur"]
        slot[1] += 1
    for op, (dur, count) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{dur / 1e3:10.1f} ms {100 * dur / total:5.1f} %  {count:5} × {op}")


if __name__ == "__main__":
    main()
