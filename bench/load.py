"""Load benchmark: N concurrent ``/infer/lymph_node_pipeline`` requests against a real lnnode server.

    python bench/load.py --out bench/out/load            # about 3 min on 2 cores
    python bench/load.py --out bench/out/load_clinical --shape 512 512 160 --spacing 0.78 0.78 2.0

Starts ``monailabel start_server`` with the demo models on CT phantoms (by default 192 x 192 x 64 at
1 x 1 x 2 mm, the demo studies' size; ``--shape``/``--spacing`` for a clinical CT's size), sends the
requests one at a time, then N at once (threads), and reports throughput, p50/p95 latency (request sent
to answer received) and the server's peak memory (VmHWM of its process). Phantoms, CPU only; the
figures are about the server, not about accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # runs from a checkout without installing

from lnnode.phantoms import synthesize  # noqa: E402


def peak_rss_gb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "load"))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[192, 192, 64], help="phantom voxels (x y z)")
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 2.0], help="phantom spacing (mm)")
    args = parser.parse_args()
    out = Path(args.out)
    studies = out / f"studies_{'x'.join(map(str, args.shape))}_{'x'.join(map(str, args.spacing))}mm"
    if not (studies / "synth_manifest.json").exists():
        synthesize(studies, args.cases, modality="ct", seed=2026, shape=tuple(args.shape),
                   spacing=tuple(args.spacing), label_tag="ground_truth")  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(REPO / "apps" / "lnnode"),
           "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port),
           "--conf", "device", "cpu", "--conf", "model_dir", str(out / "models")]  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}  # fmt: skip
    log = open(out / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(360):
            try:
                urllib.request.urlopen(f"{url}/info/", timeout=5).read()
                break
            except OSError:
                time.sleep(0.5)
        images = [f"ct_{i:03d}" for i in range(args.cases)]

        def infer(image: str) -> float:
            begin = time.perf_counter()
            req = urllib.request.Request(f"{url}/infer/lymph_node_pipeline?image={image}&output=json", data=b"",
                                         method="POST")  # fmt: skip
            with urllib.request.urlopen(req, timeout=3600) as r:
                json.loads(r.read())
            return time.perf_counter() - begin

        infer(images[0])  # load the models once
        begin = time.perf_counter()
        sequential = [infer(i) for i in images]
        sequential_s = time.perf_counter() - begin
        peak_sequential = peak_rss_gb(server.pid)
        requests = [images[i % len(images)] for i in range(args.concurrency)]
        begin = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            concurrent = list(pool.map(infer, requests))
        concurrent_s = time.perf_counter() - begin
        report = {
            "data": (
                f"{args.cases} CT phantoms {'x'.join(map(str, args.shape))} at {'x'.join(map(str, args.spacing))} mm, "
                f"demo models, CPU ({os.cpu_count()} cores)"
            ),
            "one_at_a_time": {
                "requests": len(images),
                "throughput_per_min": 60 * len(images) / sequential_s,
                "p50_s": float(np.percentile(sequential, 50)),
                "p95_s": float(np.percentile(sequential, 95)),
            },
            "concurrent": {
                "requests": args.concurrency,
                "all_succeeded": True,
                "throughput_per_min": 60 * args.concurrency / concurrent_s,
                "p50_s": float(np.percentile(concurrent, 50)),
                "p95_s": float(np.percentile(concurrent, 95)),
            },
            "server_peak_rss_gb": {"after_one_at_a_time": peak_sequential, "after_concurrent": peak_rss_gb(server.pid)},
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    (out / "load.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
