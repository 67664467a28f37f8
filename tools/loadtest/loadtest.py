#!/usr/bin/env python3
"""Bounded load test of `sdrt serve`: N concurrent clients × M jobs each on the bundled tiny model.

Starts `sdrt serve` on a free loopback port (or uses --url), then every client sends its jobs one after
another, half through A1111's blocking `POST /sdapi/v1/txt2img` and half through sdrt's job API
(`POST /sdrt/v1/jobs`, then polling `GET /sdrt/v1/jobs/{id}` and fetching `/result`). Reports: accepted =
answered, jobs lost (accepted but never answered), 429s (queue full; the client waits `Retry-After` and
retries), p50/p95 latency per kind, and the server's RSS sampled over the run (it must stay flat).

Only the standard library is needed:

    cargo build --release -p sdrt-cli
    python3 tools/loadtest/loadtest.py --clients 8 --jobs 70 --queue-capacity 4
"""

import argparse
import json
import pathlib
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, method="GET", body=None, timeout=600):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"null")


def rss_kib(pid: int) -> int:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency = {"a1111": [], "jobs": []}
        self.accepted = 0
        self.answered = 0
        self.rejected_429 = 0
        self.errors = []

    def add(self, **kw):
        with self.lock:
            for key, value in kw.items():
                if key == "latency":
                    self.latency[value[0]].append(value[1])
                elif key == "error":
                    self.errors.append(value)
                else:
                    setattr(self, key, getattr(self, key) + value)


def job_body(client: int, index: int) -> dict:
    return {"prompt": f"a lighthouse {client} {index}", "negative_prompt": "blurry", "seed": client * 1000 + index,
            "steps": 8, "width": 64, "height": 64, "sampler_name": "Euler"}


def run_client(base: str, client: int, jobs: int, stats: Stats) -> None:
    for index in range(jobs):
        body = job_body(client, index)
        started = time.perf_counter()
        while True:
            if index % 2 == 0:
                status, headers, answer = request(f"{base}/sdapi/v1/txt2img", "POST", body)
            else:
                status, headers, answer = request(f"{base}/sdrt/v1/jobs", "POST", {"kind": "txt2img", "request": body})
            if status == 429:
                stats.add(rejected_429=1)
                time.sleep(float(headers.get("Retry-After", headers.get("retry-after", "1"))) / 10)
                continue
            break
        if index % 2 == 0:
            if status == 200 and len(answer.get("images", [])) == 1:
                stats.add(accepted=1, answered=1, latency=("a1111", time.perf_counter() - started))
            else:
                stats.add(error=f"txt2img {status}: {answer}")
            continue
        if status != 202:
            stats.add(error=f"jobs {status}: {answer}")
            continue
        stats.add(accepted=1)
        job = answer["id"]
        while True:
            status, _, state = request(f"{base}/sdrt/v1/jobs/{job}")
            if status != 200:
                stats.add(error=f"status {job} {status}: {state}")
                break
            if state["state"] not in ("queued", "running"):
                break
            time.sleep(0.02)
        status, _, result = request(f"{base}/sdrt/v1/jobs/{job}/result")
        if status == 200 and len(result.get("images", [])) == 1:
            stats.add(answered=1, latency=("jobs", time.perf_counter() - started))
        else:
            stats.add(error=f"result {job} {status}: {result}")


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=70, help="jobs per client")
    ap.add_argument("--queue-capacity", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sdrt", default=str(ROOT / "target" / "release" / "sdrt"))
    ap.add_argument("--url", help="use a running server instead of starting one (RSS is then not sampled)")
    args = ap.parse_args()

    server = None
    if args.url:
        base = args.url.rstrip("/")
    else:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([args.sdrt, "serve", "--listen", f"127.0.0.1:{port}", "--threads", str(args.threads),
                                   "--queue-capacity", str(args.queue_capacity)], stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                if request(f"{base}/sdapi/v1/samplers", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit("the server did not start")
        request(f"{base}/sdapi/v1/txt2img", "POST", job_body(0, 0))  # load the model before timing
    rss = []
    stop = threading.Event()

    def sample_rss():
        while not stop.is_set() and server is not None:
            rss.append((time.perf_counter(), rss_kib(server.pid)))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    stats = Stats()
    started = time.perf_counter()
    clients = [threading.Thread(target=run_client, args=(base, c, args.jobs, stats)) for c in range(args.clients)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    wall = time.perf_counter() - started
    stop.set()
    if server is not None:
        server.terminate()
        server.wait(timeout=30)

    total = args.clients * args.jobs
    print(f"{args.clients} clients × {args.jobs} jobs = {total} jobs in {wall:.1f} s "
          f"(queue capacity {args.queue_capacity}, 64×64, 8 Euler steps, tiny model)")
    print(f"accepted {stats.accepted}, answered {stats.answered}, lost {stats.accepted - stats.answered}, "
          f"429 answers {stats.rejected_429}, errors {len(stats.errors)}")
    for kind, values in stats.latency.items():
        if values:
            print(f"  {kind}: p50 {percentile(values, 50) * 1e3:.0f} ms, p95 {percentile(values, 95) * 1e3:.0f} ms "
                  f"({len(values)} jobs)")
    if rss:
        quarter = max(1, len(rss) // 4)
        first = statistics.median(v for _, v in rss[:quarter]) / 1024
        last = statistics.median(v for _, v in rss[-quarter:]) / 1024
        print(f"server RSS: first quarter median {first:.0f} MiB, last quarter {last:.0f} MiB, "
              f"max {max(v for _, v in rss) / 1024:.0f} MiB")
    for error in stats.errors[:5]:
        print("  error:", error[:300])
    sys.exit(1 if stats.errors or stats.accepted != stats.answered else 0)


if __name__ == "__main__":
    main()
