#!/usr/bin/env python3
"""Bounded load run of the Redis scale-out: one `sdrt serve --queue` and 1, 2, 4 … `sdrt worker`s (tiny model,
one thread each) behind a redis-server of its own (free loopback port, temporary folder, AOF fsynced always).

For each worker count it reports
- throughput: JOBS jobs submitted at once through `POST /sdrt/v1/jobs`, jobs per second until the last answer;
- queue overhead, from SEQUENTIAL jobs sent one at a time (nothing waits in the queue, so what remains is the
  queue's own cost), seen by a client polling `GET /sdrt/v1/jobs/{id}` every POLL seconds:
  enqueue → start (submit until the job is seen `running`) and stored → answered (the job seen `succeeded`
  until its `/result` arrived), as p50/p95; both include up to one POLL interval of observation delay;
- the same tiny job run in-process (`sdrt serve` without --queue) as the reference the overhead adds to.

Only the standard library is needed:

    cargo build --release -p sdrt-cli
    python3 tools/loadtest/scaleout.py --workers 1,2,4 --jobs 60 --sequential 20
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from loadtest import ROOT, free_port, percentile, request  # noqa: E402

BODY = {"prompt": "a lighthouse", "negative_prompt": "blurry", "steps": 8, "width": 64, "height": 64,
        "sampler_name": "Euler"}


def wait_until(check, what, seconds=60):
    deadline = time.time() + seconds
    while not check():
        if time.time() > deadline:
            sys.exit(f"{what} did not come up")
        time.sleep(0.1)


def answers(url):
    try:
        return request(url, timeout=2)[0] == 200
    except OSError:
        return False


def redis_up(port):
    return subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0


def submit(base, seed):
    status, _, answer = request(f"{base}/sdrt/v1/jobs", "POST", {"kind": "txt2img", "request": {**BODY, "seed": seed}})
    assert status == 202, (status, answer)
    return answer["id"]


def follow(base, job, poll):
    """Polls a job to its end; returns (seen running, seen succeeded, result received) as perf_counter times."""
    running = None
    while True:
        status, _, state = request(f"{base}/sdrt/v1/jobs/{job}")
        now = time.perf_counter()
        assert status == 200, (status, state)
        if state["state"] == "running" and running is None:
            running = now
        if state["state"] not in ("queued", "running"):
            break
        time.sleep(poll)
    assert state["state"] == "succeeded", state
    done = now
    status, _, result = request(f"{base}/sdrt/v1/jobs/{job}/result")
    assert status == 200 and len(result.get("images", [])) == 1, (status, result)
    return running if running is not None else done, done, time.perf_counter()


def sequential(base, count, poll):
    to_start, to_answer, total = [], [], []
    for seed in range(count):
        sent = time.perf_counter()
        running, done, answered = follow(base, submit(base, seed), poll)
        to_start.append(running - sent)
        to_answer.append(answered - done)
        total.append(answered - sent)
    return to_start, to_answer, total


def throughput(base, count, poll):
    started = time.perf_counter()
    jobs = [submit(base, 10_000 + i) for i in range(count)]
    threads = [threading.Thread(target=follow, args=(base, job, poll)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count / (time.perf_counter() - started)


def ms(values):
    return f"p50 {percentile(values, 50) * 1e3:.0f} ms, p95 {percentile(values, 95) * 1e3:.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4", help="worker counts to run, comma-separated")
    ap.add_argument("--jobs", type=int, default=60, help="jobs submitted at once for the throughput")
    ap.add_argument("--sequential", type=int, default=20, help="jobs sent one at a time for the overhead")
    ap.add_argument("--poll", type=float, default=0.005, help="seconds between status polls")
    ap.add_argument("--sdrt", default=str(ROOT / "target" / "release" / "sdrt"))
    args = ap.parse_args()
    processes = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            processes.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                 "--appendfsync", "always", "--dir", tmp, "--loglevel", "warning"], stdout=subprocess.DEVNULL))
            wait_until(lambda: redis_up(port), "redis-server")
            queue = f"redis://127.0.0.1:{port}"
            in_process, base_local = free_port(), None
            processes.append(subprocess.Popen([args.sdrt, "serve", "--listen", f"127.0.0.1:{in_process}",
                                               "--threads", "1", "--outdir", f"{tmp}/local"],
                                              stderr=subprocess.DEVNULL))
            base_local = f"http://127.0.0.1:{in_process}"
            wait_until(lambda: answers(f"{base_local}/sdapi/v1/samplers"), "sdrt serve (in-process)")
            _, _, local_total = sequential(base_local, args.sequential, args.poll)
            processes.pop().terminate()
            api = free_port()
            base = f"http://127.0.0.1:{api}"
            processes.append(subprocess.Popen([args.sdrt, "serve", "--queue", queue, "--listen", f"127.0.0.1:{api}",
                                               "--outdir", f"{tmp}/api", "--queue-capacity", "1024"],
                                              stderr=subprocess.DEVNULL))
            wait_until(lambda: answers(f"{base}/sdapi/v1/samplers"), "sdrt serve --queue")
            print(f"tiny model, 64×64, 8 Euler steps, 1 thread per worker; poll every {args.poll * 1e3:.0f} ms")
            print(f"in-process reference (no queue): submit → answered {ms(local_total)}")
            workers = 0
            for wanted in (int(w) for w in args.workers.split(",")):
                while workers < wanted:
                    processes.append(subprocess.Popen(
                        [args.sdrt, "worker", "--queue", queue, "--name", f"w{workers}", "--threads", "1"],
                        stderr=subprocess.DEVNULL))
                    workers += 1
                wait_until(lambda: len(request(f"{base}/sdrt/v1/workers")[2]) >= workers, f"{workers} workers")
                sequential(base, 2, args.poll)  # every worker's model loaded before timing
                to_start, to_answer, total = sequential(base, args.sequential, args.poll)
                rate = throughput(base, args.jobs, args.poll)
                print(f"{workers} worker(s): {rate:.2f} jobs/s over {args.jobs} jobs; queue overhead: "
                      f"enqueue → start {ms(to_start)}, stored → answered {ms(to_answer)}; "
                      f"submit → answered {ms(total)}")
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
