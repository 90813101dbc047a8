"""Load benchmark: N concurrent ``/infer/lymph_node_pipeline`` requests against real lnnode servers.

    python bench/load.py --out bench/out/load            # about 3 min on 2 cores
    python bench/load.py --out bench/out/load_clinical --shape 512 512 160 --spacing 0.78 0.78 2.0
    python bench/load.py --out bench/out/load_replicas --replicas 2   # also 2 servers on one studies folder

Starts ``monailabel start_server`` with the demo models on CT phantoms (by default 192 x 192 x 64 at
1 x 1 x 2 mm, the demo studies' size; ``--shape``/``--spacing`` for a clinical CT's size), sends the
requests one at a time, then N at once (threads), and reports throughput, p50/p95 latency (request sent
to answer received) and the server's peak memory (VmHWM of its process).

With ``--replicas R`` (R > 1) it then stops that server and starts R servers on the same studies folder and
model dir (the deployment of docs/scaling.md, "Many readers"), each limited to
``--threads-per-server`` torch threads (default: the cores shared out, so the replicas do not oversubscribe
them), loads the models in each, and sends the same N concurrent requests spread over them round-robin by
this client (request i to replica i mod R: what a reverse proxy's round-robin upstream does; no proxy runs
here). Phantoms, CPU only; the figures are about the servers, not about accuracy.
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


class Server:
    """One ``monailabel start_server`` process on 127.0.0.1 (its log in ``log``)."""

    def __init__(self, studies: Path, models: Path, log: Path, threads: int = 0):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(REPO / "apps" / "lnnode"),
               "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port),
               "--conf", "device", "cpu", "--conf", "model_dir", str(models)]  # fmt: skip
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}  # fmt: skip
        if threads > 0:
            env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in this server
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self._log.name}")
            try:
                urllib.request.urlopen(f"{self.url}/info/", timeout=5).read()
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout:.0f} s; see {self._log.name}")

    def infer(self, image: str) -> float:
        """Seconds from sending a pipeline request to reading its whole answer."""
        begin = time.perf_counter()
        req = urllib.request.Request(f"{self.url}/infer/lymph_node_pipeline?image={image}&output=json", data=b"",
                                     method="POST")  # fmt: skip
        with urllib.request.urlopen(req, timeout=3600) as r:
            json.loads(r.read())
        return time.perf_counter() - begin

    def peak_rss_gb(self) -> float:
        return peak_rss_gb(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def start(n: int, studies: Path, out: Path, threads: int, name: str) -> list[Server]:
    """``n`` servers on one studies folder and one model dir, ready (started side by side)."""
    servers = [Server(studies, out / "models", out / f"{name}{i}.log", threads) for i in range(n)]
    try:
        for server in servers:
            server.wait_ready()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def figures(latencies: list[float], wall_s: float) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "throughput_per_min": 60 * len(latencies) / wall_s,
        "p50_s": float(np.percentile(latencies, 50)),
        "p95_s": float(np.percentile(latencies, 95)),
    }


def burst(servers: list[Server], images: list[str], concurrency: int) -> dict[str, float]:
    """``concurrency`` requests at once, request i to server i mod len(servers) (client-side round-robin)."""
    requests = [(servers[i % len(servers)], images[i % len(images)]) for i in range(concurrency)]
    begin = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        latencies = list(pool.map(lambda r: r[0].infer(r[1]), requests))
    return {**figures(latencies, time.perf_counter() - begin), "all_succeeded": True}


def one_server(studies: Path, out: Path, images: list[str], concurrency: int) -> dict:
    """One server (torch's default threads): one request at a time, then ``concurrency`` at once."""
    (server,) = start(1, studies, out, 0, "server")
    try:
        server.infer(images[0])  # load the models once
        begin = time.perf_counter()
        sequential = [server.infer(i) for i in images]
        one_at_a_time = figures(sequential, time.perf_counter() - begin)
        peak_sequential = server.peak_rss_gb()
        concurrent = burst([server], images, concurrency)
        peak = {"after_one_at_a_time": peak_sequential, "after_concurrent": server.peak_rss_gb()}
    finally:
        server.stop()
    return {"one_at_a_time": one_at_a_time, "concurrent": concurrent, "server_peak_rss_gb": peak}


def replicas(studies: Path, out: Path, images: list[str], concurrency: int, n: int, threads: int) -> dict:
    """``n`` servers on the studies folder: the models loaded in each, then ``concurrency`` requests at once."""
    servers = start(n, studies, out, threads, "replica")
    try:
        for server in servers:
            server.infer(images[0])
        concurrent = burst(servers, images, concurrency)
        peaks = [server.peak_rss_gb() for server in servers]
    finally:
        for server in servers:
            server.stop()
    return {
        "servers": n,
        "threads_per_server": threads or "torch default (all cores)",
        "routing": "client-side round-robin (request i to replica i mod N), no proxy",
        "concurrent": concurrent,
        "server_peak_rss_gb": peaks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "load"))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[192, 192, 64], help="phantom voxels (x y z)")
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 2.0], help="phantom spacing (mm)")
    parser.add_argument("--replicas", type=int, default=1, help="also measure this many servers on one folder")
    parser.add_argument("--threads-per-server", type=int, default=None,
                        help="torch threads of a replica (default: cores // replicas; 0: torch's default)")  # fmt: skip
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    studies = out / f"studies_{'x'.join(map(str, args.shape))}_{'x'.join(map(str, args.spacing))}mm"
    if not (studies / "synth_manifest.json").exists():
        synthesize(studies, args.cases, modality="ct", seed=2026, shape=tuple(args.shape),
                   spacing=tuple(args.spacing), label_tag="ground_truth")  # fmt: skip
    images = [f"ct_{i:03d}" for i in range(args.cases)]
    report = {
        "data": (
            f"{args.cases} CT phantoms {'x'.join(map(str, args.shape))} at {'x'.join(map(str, args.spacing))} mm, "
            f"demo models, CPU ({os.cpu_count()} cores)"
        ),
        **one_server(studies, out, images, args.concurrency),
    }
    if args.replicas > 1:
        threads = args.threads_per_server
        threads = max(1, (os.cpu_count() or 1) // args.replicas) if threads is None else threads
        report["replicas"] = replicas(studies, out, images, args.concurrency, args.replicas, threads)
    (out / "load.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
