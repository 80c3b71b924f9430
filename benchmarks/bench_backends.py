"""A content-heavy build by both backends in one run: mounted (loop device) vs rootless.

    sudo .venv/bin/python benchmarks/bench_backends.py [--content-mib 512] [--files-mib 64]
                                                       [--repeat 5] [--workdir DIR]

One config, served by a loopback HTTP server: the demo base image (.xz), one big file of
random bytes (``--content-mib``, with a sha-256 the build verifies), a tar.gz and a zip of
many small files (``--files-mib`` each, 8 files per MiB, nested folders, links). The whole
CLI runs in a subprocess per build (``image-creator [--rootless] --report R CONFIG OUT``),
the two backends alternating, ``--repeat`` times each; the best time counts (less the
report's hashing of the finished image, which is not the build's work; the report's step
times are printed too). Peak RSS comes from GNU
time. Each image is checked with ``e2fsck -fn`` on its data partition.

Printed: the best and the median seconds of each backend, each with its **ratio =
rootless / mounted** (target: at most 1.15), and the peak RSS of each. Needs root (the
mounted backend) and about 4 times the content in free disk.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml

from image_creator.demo import make_base_image
from image_creator.system.partitions import data_partition, read_partition_table

MIB = 2**20
TIME = Path("/usr/bin/time")
IMAGE_CREATOR = Path(sys.executable).parent / "image-creator"
BACKENDS = ("mounted", "rootless")
REPORT_STEP = "Computing the image's sha256"


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss_kib: int
    steps: dict[str, float]  # the report's time of each step


def _low_entropy(rng: random.Random, size: int) -> bytes:
    words = [rng.randbytes(8) for _ in range(64)]
    return b"".join(rng.choice(words) for _ in range(size // 8 + 1))[:size]


def small_files(size_mib: int, seed: int) -> list[tuple[str, bytes]]:
    """8 files per MiB (about 128 KiB each, half random), in nested folders."""
    rng = random.Random(seed)
    files = []
    for index in range(size_mib * 8):
        size = 128 * 1024
        data = rng.randbytes(size // 2) + _low_entropy(rng, size - size // 2)
        files.append((f"d{index // 64:03d}/s{(index // 8) % 8}/f{index:05d}.dat", data))
    return files


def make_tar_gz(path: Path, files: Sequence[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))


def make_zip(path: Path, files: Sequence[tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in files:
            zf.writestr(name, data)


def make_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(size // MIB):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(root: Path) -> Iterator[str]:
    handler = partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def build(config: Path, output: Path, backend: str) -> Run:
    report = output.with_suffix(".json")
    argv = [str(IMAGE_CREATOR), "-X", *(["--rootless"] if backend == "rootless" else [])]
    argv += ["--report", str(report), str(config), str(output)]
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-") as rss_file:
        wrapped = [str(TIME), "-f", "%M", "-o", rss_file.name, *argv] if TIME.exists() else argv
        start = time.perf_counter()
        result = subprocess.run(wrapped, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{backend}: exit {result.returncode}\n{result.stderr}")
        measured = rss_file.read().strip().splitlines()
    rss = int(measured[-1]) if measured and measured[-1].isdigit() else 0
    partition = data_partition(read_partition_table(output))
    subprocess.run(
        ["e2fsck", "-fn", f"{output}?offset={partition.start_bytes}"],
        check=True,
        capture_output=True,
    )
    steps = {step["name"]: step["seconds"] for step in json.loads(report.read_text())["steps"]}
    report.unlink()
    # the report's own work (hashing the finished image) is not the build's
    return Run(elapsed - steps.pop(REPORT_STEP, 0.0), rss, steps)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--content-mib", type=int, default=512)
    parser.add_argument("--files-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run as root: the mounted backend needs loop devices", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-backends-", dir=args.workdir))
    try:
        served = work / "served"
        served.mkdir()
        make_base_image(served / "base.img", xz=True)
        digest = make_random(served / "content.bin", args.content_mib * MIB)
        make_tar_gz(served / "site.tar.gz", small_files(args.files_mib, 1))
        make_zip(served / "site.zip", small_files(args.files_mib, 2))
        runs: dict[str, list[Run]] = {backend: [] for backend in BACKENDS}
        content = args.content_mib + 2 * args.files_mib
        with serving(served) as url:
            config = work / "config.yaml"
            document = {
                "base": {"source": f"{url}/base.img.xz"},
                "output": {"size": f"{2 * content + 512}MiB"},
                "files": [
                    {
                        "url": f"{url}/content.bin",
                        "to": "/data/contents/content.bin",
                        "checksum": {"algo": "sha-256", "value": digest},
                    },
                    {"url": f"{url}/site.tar.gz", "to": "/data/contents/tar", "via": "gztar"},
                    {"url": f"{url}/site.zip", "to": "/data/contents/zip", "via": "zip"},
                ],
            }
            config.write_text(yaml.safe_dump(document))
            for round_ in range(args.repeat):
                order = BACKENDS if round_ % 2 == 0 else BACKENDS[::-1]
                for backend in order:
                    output = work / f"{backend}.img"
                    runs[backend].append(build(config, output, backend))
                    output.unlink()
                    print(f"  round {round_ + 1} {backend}: {runs[backend][-1].seconds:.2f} s")
        best = {backend: min(run.seconds for run in runs[backend]) for backend in BACKENDS}
        median = {b: statistics.median(run.seconds for run in runs[b]) for b in BACKENDS}
        rss = {backend: max(run.max_rss_kib for run in runs[backend]) for backend in BACKENDS}
        print()
        print(f"content-heavy build: {content} MiB of content, best of {args.repeat}")
        print()
        print("| backend | best (s) | ratio | median (s) | ratio | peak RSS |")
        print("|---|---|---|---|---|---|")
        for b in BACKENDS:
            print(
                f"| {b} | {best[b]:.2f} | {best[b] / best['mounted']:.2f} | {median[b]:.2f} | "
                f"{median[b] / median['mounted']:.2f} | {rss[b] / 1024:.0f} MiB |"
            )
        print()
        print("steps of each backend's best build (seconds):")
        print()
        fastest = {b: min(runs[b], key=lambda run: run.seconds) for b in BACKENDS}
        print("| step | " + " | ".join(BACKENDS) + " |")
        print("|---|" + "---|" * len(BACKENDS))
        names = dict.fromkeys(name for b in BACKENDS for name in fastest[b].steps)
        for name in names:
            cells = " | ".join(f"{fastest[b].steps.get(name, 0.0):.2f}" for b in BACKENDS)
            print(f"| {name} | {cells} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
