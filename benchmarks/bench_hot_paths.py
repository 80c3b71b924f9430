"""Benchmark of the hot paths that move many bytes, each against a baseline run alongside.

Usage: ``.venv/bin/python benchmarks/bench_hot_paths.py [--size MiB] [--workdir DIR]
[--repeat N] [--only base,download,copy,tar]``

The script generates its own data in a temporary directory (removed at the end), then for
each case times our code and a baseline doing the same work, ``--repeat`` times each,
alternating, and prints the best times and their ratio (ours / baseline: below 1 is faster
than the baseline, above 1 slower). Figures are ratios measured in the same run on the same
machine, never absolute targets; nothing here asserts a time.

Every measurement runs in its own process, and its peak RSS is read with GNU time
(``/usr/bin/time -f %M``; without it, ``os.wait4``, an upper bound). Python children time
only the work (not the interpreter start and imports, but their RSS includes them, about
35 MiB); tools are timed from spawn to exit by this process.

Cases:

1. base image: ``fetch_base_image`` on a ``file://`` .xz image with a sha-256 checksum
   (decompressed, hashed, written sparse) vs ``xz -dc --no-sparse -T0 > file`` (a plain
   file, all cores), then vs ``xz -dc -T1 > file`` (one thread like Python's lzma, and
   sparse, as xz writes by default). The disk blocks of the outputs are compared.
2. download: ``open_stream`` + ``HashingReader`` (sha-256) + file writes, from an HTTP
   server on loopback (a thread of this process, sending with sendfile), vs
   ``requests.get(stream=True)`` + ``hashlib.sha256`` + 1 MiB writes.
3. cache-hit copy: ``copy_file`` vs ``cp --sparse=never``.
4. tar.gz extraction (8 files per MiB of ``--size``, most small): ``extract_tar_stream``
   on the opened file vs ``tar -xzf``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from image_creator.cache.downloads import Downloads, copy_file
from image_creator.checks.sources import inspect_base
from image_creator.config.model import BaseImage, Checksum
from image_creator.digests import ChecksumAlgo
from image_creator.fetch.archives import extract_tar_stream
from image_creator.fetch.checksums import HashingReader, new_hasher
from image_creator.fetch.client import HttpClient
from image_creator.progress import no_progress
from image_creator.steps.fetch_base_image import fetch_base_image

MIB = 1024 * 1024
CHUNK = MIB
SEED = 20240601
CASES = ("base", "download", "copy", "tar")

# --- measurement -------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    max_rss_kib: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Best:
    seconds: float
    max_rss_kib: int
    info: dict[str, Any]

    @classmethod
    def of(cls, runs: Sequence[Run]) -> Best:
        fastest = min(runs, key=lambda run: run.seconds)
        return cls(fastest.seconds, max(run.max_rss_kib for run in runs), fastest.info)


TIME = Path("/usr/bin/time")


def _spawn(argv: Sequence[str], *, stdout: Any = subprocess.PIPE) -> tuple[float, int, bytes]:
    """Run a command to its end: (wall seconds, its peak RSS in KiB, its stdout).

    The peak RSS comes from GNU time when installed: a child forked from this (big) Python
    process inherits its high-water mark across exec, so ``wait4`` here would report at least
    this process's own RSS. Without GNU time, that upper bound is what is reported.
    """
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-") as rss_file:
        wrapped = list(argv)
        if TIME.exists():
            wrapped = [str(TIME), "-f", "%M", "-o", rss_file.name, *argv]
        start = time.perf_counter()
        process = subprocess.Popen(wrapped, stdout=stdout)
        output = process.stdout.read() if process.stdout is not None else b""
        _pid, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.stdout is not None:
            process.stdout.close()
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit status {process.returncode}")
        measured = rss_file.read().strip().splitlines()
    rss = int(measured[-1]) if measured and measured[-1].isdigit() else usage.ru_maxrss
    return elapsed, rss, output


def run_tool(argv: Sequence[str], *, stdout_path: Path | None = None) -> Run:
    """A command-line baseline, timed from spawn to exit."""
    if stdout_path is None:
        elapsed, rss, _ = _spawn(argv, stdout=subprocess.DEVNULL)
    else:
        with stdout_path.open("wb") as out:
            elapsed, rss, _ = _spawn(argv, stdout=out)
    return Run(elapsed, rss)


def run_child(case: str, *args: str) -> Run:
    """A Python measurement in a fresh interpreter; it reports the seconds of its work."""
    _elapsed, rss, output = _spawn([sys.executable, __file__, "--child", case, *args])
    report: dict[str, Any] = json.loads(output.decode().strip().splitlines()[-1])
    return Run(float(report.pop("seconds")), rss, report)


def alternate(
    repeat: int, ours: Callable[[], Run], baseline: Callable[[], Run], cleanup: Callable[[], None]
) -> tuple[list[Run], list[Run]]:
    """``repeat`` runs of each, alternating which goes first; ``cleanup`` after each run."""
    ours_runs: list[Run] = []
    baseline_runs: list[Run] = []
    for index in range(repeat):
        order = [(ours, ours_runs), (baseline, baseline_runs)]
        if index % 2:
            order.reverse()
        for measure, runs in order:
            runs.append(measure())
            cleanup()
    return ours_runs, baseline_runs


# --- children: the Python side of each case ----------------------------------------------


@contextmanager
def _timed(report: dict[str, Any]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    report["seconds"] = time.perf_counter() - start


def child_ours_base(url: str, target: str, root_size: str, digest: str) -> dict[str, Any]:
    checksum = Checksum(algo=ChecksumAlgo.SHA256, value=digest)
    source = inspect_base(
        BaseImage(url=url, root_size=int(root_size), checksum=checksum), HttpClient()
    )
    path = Path(target)
    path.touch()  # the build hands over an empty file (partial_output)
    report: dict[str, Any] = {}
    with _timed(report):
        fetched = fetch_base_image(source, path, Downloads(HttpClient()), on_progress=no_progress)
    report["size"] = fetched.image_size
    return report


def child_ours_download(url: str, target: str) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with _timed(report):
        hasher = new_hasher(ChecksumAlgo.SHA256)
        with (
            HttpClient() as client,
            client.open_stream(url) as stream,
            Path(target).open("wb") as file,
        ):
            reader = HashingReader(stream, hasher)
            # as steps/files.py:_copy does
            while chunk := reader.read(CHUNK):
                file.write(chunk)
        report["digest"] = hasher.hexdigest()
    return report


def child_baseline_download(url: str, target: str) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with _timed(report):
        hasher = hashlib.sha256()
        with (
            requests.get(url, stream=True, timeout=60) as response,
            Path(target).open("wb") as file,
        ):
            response.raise_for_status()
            for chunk in response.iter_content(chunk_size=CHUNK):
                hasher.update(chunk)
                file.write(chunk)
        report["digest"] = hasher.hexdigest()
    return report


def child_ours_tar(archive: str, dest: str) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with _timed(report), Path(archive).open("rb") as file:
        report["bytes"] = extract_tar_stream(file, Path(dest), compression="gz").bytes_written
    return report


def child_ours_copy(source: str, target: str) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with _timed(report):
        copy_file(Path(source), Path(target))
    return report


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "ours-base": child_ours_base,
    "ours-download": child_ours_download,
    "baseline-download": child_baseline_download,
    "ours-tar": child_ours_tar,
    "ours-copy": child_ours_copy,
}


def child_main(argv: Sequence[str]) -> int:
    report = CHILDREN[argv[0]](*argv[1:])
    print(json.dumps(report))
    return 0


# --- data ----------------------------------------------------------------------------------


def _low_entropy(rng: random.Random, size: int) -> bytes:
    """Compressible bytes (16 symbols, ~2:1), like text or filesystem metadata."""
    table = bytes(b"abcdefghijklmnop"[i % 16] for i in range(256))
    return rng.randbytes(size).translate(table)


def make_image(path: Path, size: int, rng: random.Random) -> None:
    """A sparse source image: per 8 MiB, 1 MiB random, 1 MiB compressible, 6 MiB zeros
    (with a few stray bytes so that not every zero region is block-aligned)."""
    with path.open("wb") as file:
        for offset in range(0, size, MIB):
            kind = (offset // MIB) % 8
            if kind == 0:
                file.seek(offset)
                file.write(rng.randbytes(min(MIB, size - offset)))
            elif kind == 1:
                file.seek(offset)
                file.write(_low_entropy(rng, min(MIB, size - offset)))
            elif kind == 5:
                file.seek(offset + 12345)
                file.write(rng.randbytes(100))
        file.truncate(size)


def make_tree(root: Path, size_mib: int, rng: random.Random) -> tuple[int, int]:
    """Many small files in nested directories (8 per MiB of ``size_mib``, ~17 KiB each), four
    big ones (``size_mib / 32`` MiB each), a symlink per directory.
    Returns (file count, file bytes)."""
    count = max(200, size_mib * 8)
    sizes = [256, 1024, 4096, 16 * 1024, 64 * 1024]
    written = 0
    for index in range(count):
        directory = root / f"d{index // 256:03d}" / f"s{(index // 32) % 8}"
        directory.mkdir(parents=True, exist_ok=True)
        size = rng.choice(sizes)
        (directory / f"f{index:06d}.dat").write_bytes(_low_entropy(rng, size))
        written += size
        if index % 32 == 0:
            (directory / "link").symlink_to(f"f{index:06d}.dat")
    big = max(1, size_mib // 32) * MIB
    for index in range(4):
        data = rng.randbytes(big // 2) + _low_entropy(rng, big - big // 2)
        (root / f"big{index}.bin").write_bytes(data)
        written += big
    return count + 4, written


def make_random(path: Path, size: int) -> str:
    hasher = hashlib.sha256()
    with path.open("wb") as file:
        for offset in range(0, size, CHUNK):
            block = os.urandom(min(CHUNK, size - offset))
            hasher.update(block)
            file.write(block)
    return hasher.hexdigest()


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(CHUNK):
            hasher.update(block)
    return hasher.hexdigest()


def disk_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


def remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# --- local HTTP server ---------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _FileHandler)
        self.root = root


class _FileHandler(http.server.BaseHTTPRequestHandler):
    """GET of a file under the server root, sent with sendfile: the server costs little CPU
    and is the same for ours and the baseline."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        assert isinstance(self.server, _Server)
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        stat = path.stat()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(stat.st_size))
        self.send_header("ETag", f'"{stat.st_ino:x}-{stat.st_mtime_ns:x}"')
        self.end_headers()
        with path.open("rb") as file:
            self.connection.sendfile(file)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(root: Path) -> Iterator[str]:
    server = _Server(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- cases ---------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    ours: Best
    baseline: Best
    baseline_name: str
    mib: float
    notes: list[str] = field(default_factory=list)


def case_base_image(work: Path, size: int, repeat: int, rng: random.Random) -> list[Row]:
    image = work / "base.img"
    compressed = work / "base.img.xz"
    make_image(image, size, rng)
    with compressed.open("wb") as out:
        subprocess.run(["xz", "-T0", "-1", "-c", str(image)], stdout=out, check=True)
    digest = sha256_file(compressed)
    url = compressed.as_uri()
    ours_out = work / "base-ours.img"
    plain_out = work / "base-plain.img"
    disk: dict[str, int] = {}
    checked: list[bool] = []

    def ours() -> Run:
        run = run_child("ours-base", url, str(ours_out), str(size), digest)
        if run.info["size"] != size:
            raise RuntimeError(f"fetch_base_image wrote {run.info['size']} bytes, not {size}")
        if not checked:  # once: the sparse output is the image
            subprocess.run(["cmp", "-s", str(image), str(ours_out)], check=True)
            checked.append(True)
        disk["ours"] = disk_bytes(ours_out)
        return run

    def baseline(options: list[str]) -> Callable[[], Run]:
        def measure() -> Run:
            run = run_tool(["xz", "-dc", *options, str(compressed)], stdout_path=plain_out)
            disk["baseline"] = disk_bytes(plain_out)
            return run

        return measure

    def cleanup() -> None:
        remove(ours_out, plain_out)

    rows = []
    # the brief's baseline (plain file, all cores), then a like-for-like one: xz writes
    # sparse output by default, and Python's lzma decompresses on one thread
    for options in (["--no-sparse", "-T0"], ["-T1"]):
        ours_runs, baseline_runs = alternate(repeat, ours, baseline(options), cleanup)
        row = Row(
            "base image (.xz, sha-256, sparse)",
            Best.of(ours_runs),
            Best.of(baseline_runs),
            f"xz -dc {' '.join(options)} > file",
            size / MIB,
        )
        row.notes.append(
            f"disk used: ours {disk['ours'] / MIB:.1f} MiB, baseline"
            f" {disk['baseline'] / MIB:.1f} MiB, ratio {disk['ours'] / disk['baseline']:.3f}"
        )
        rows.append(row)
    rows[0].notes.append(
        f"image {size / MIB:.0f} MiB (1/8 random, 1/8 compressible, rest zeros),"
        f" .xz {compressed.stat().st_size / MIB:.1f} MiB"
    )
    remove(image, compressed)
    return rows


def case_download(work: Path, size: int, repeat: int, big: Path, digest: str) -> Row:
    target = work / "download.out"
    with serving(work) as base_url:
        url = f"{base_url}/{big.name}"

        def measure(case: str) -> Callable[[], Run]:
            def run() -> Run:
                result = run_child(case, url, str(target))
                if result.info["digest"] != digest or target.stat().st_size != size:
                    raise RuntimeError(f"{case}: wrong content downloaded")
                return result

            return run

        ours_runs, baseline_runs = alternate(
            repeat, measure("ours-download"), measure("baseline-download"), lambda: remove(target)
        )
    return Row(
        "download + sha-256 (HTTP, loopback)",
        Best.of(ours_runs),
        Best.of(baseline_runs),
        "requests + hashlib, 1 MiB",
        size / MIB,
    )


def case_tar(work: Path, size: int, repeat: int, rng: random.Random) -> Row:
    tree = work / "tree"
    archive = work / "tree.tar.gz"
    files, expected = make_tree(tree, size // MIB, rng)
    subprocess.run(["tar", "-I", "gzip -1", "-cf", str(archive), "-C", str(tree), "."], check=True)
    remove(tree)
    dest = work / "extracted"

    def ours() -> Run:
        run = run_child("ours-tar", str(archive), str(dest))
        if run.info["bytes"] != expected:
            raise RuntimeError(f"extract_tar_stream wrote {run.info['bytes']}, not {expected}")
        return run

    def baseline() -> Run:
        dest.mkdir()
        return run_tool(["tar", "-xzf", str(archive), "-C", str(dest)])

    ours_runs, baseline_runs = alternate(repeat, ours, baseline, lambda: remove(dest))
    row = Row(
        "tar.gz extraction",
        Best.of(ours_runs),
        Best.of(baseline_runs),
        "tar -xzf",
        expected / MIB,
    )
    row.notes.append(
        f"{files} files, {expected / MIB:.0f} MiB, archive {archive.stat().st_size / MIB:.1f} MiB"
    )
    remove(archive)
    return row


def case_copy(work: Path, size: int, repeat: int, big: Path) -> Row:
    target = work / "copy.out"

    def ours() -> Run:
        run = run_child("ours-copy", str(big), str(target))
        if target.stat().st_size != size:
            raise RuntimeError("copy_file: wrong size")
        return run

    def baseline() -> Run:
        return run_tool(["cp", "--sparse=never", str(big), str(target)])

    ours_runs, baseline_runs = alternate(repeat, ours, baseline, lambda: remove(target))
    return Row(
        "cache-hit copy",
        Best.of(ours_runs),
        Best.of(baseline_runs),
        "cp --sparse=never",
        size / MIB,
    )


# --- report --------------------------------------------------------------------------------


def print_table(rows: Sequence[Row]) -> None:
    header = (
        f"{'case':<36} {'MiB':>6} {'ours s':>7} {'base s':>7} {'ratio':>6}"
        f" {'ours MiB/s':>10} {'ours RSS':>9} {'base RSS':>9}  baseline"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = row.ours.seconds / row.baseline.seconds
        rate = row.mib / row.ours.seconds
        print(
            f"{row.case:<36} {row.mib:>6.0f} {row.ours.seconds:>7.3f} {row.baseline.seconds:>7.3f}"
            f" {ratio:>6.2f} {rate:>10.0f} {row.ours.max_rss_kib / 1024:>7.1f}Mi"
            f" {row.baseline.max_rss_kib / 1024:>7.1f}Mi  {row.baseline_name}"
        )
    notes = [(f"{row.case} vs {row.baseline_name}", note) for row in rows for note in row.notes]
    if notes:
        print()
        for case, note in notes:
            print(f"{case}: {note}")
    print()
    print(
        "ratio = ours / baseline, best of each (below 1: faster than the baseline)."
        " RSS = peak resident set of the measuring process (Python children include the"
        " interpreter and imports, ~35 MiB)."
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--size", type=int, default=512, help="MiB of the image and random file (default 512)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where to put the data (a temporary directory is made in it; default: $TMPDIR)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        default=set(CASES),
        help=f"comma-separated cases to run (default: all of {','.join(CASES)})",
    )
    args = parser.parse_args(argv)
    if not args.only <= set(CASES):
        parser.error(f"unknown case in --only: {','.join(sorted(args.only - set(CASES)))}")
    if args.size < 16:
        parser.error("--size must be at least 16 (MiB)")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    args = parse_args(argv)
    size = args.size * MIB
    parent = args.workdir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    needed = 3 * size + 64 * MIB
    free = shutil.disk_usage(parent).free
    if free < needed:
        print(f"need {needed // MIB} MiB free in {parent}, have {free // MIB} MiB", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-hot-paths-", dir=parent))
    rng = random.Random(SEED)
    started = time.perf_counter()
    try:
        print(f"data in {work}; {args.size} MiB; best of {args.repeat}", flush=True)
        rows: list[Row] = []
        if "base" in args.only:
            rows += case_base_image(work, size, args.repeat, rng)
            print("base image done", flush=True)
        if "download" in args.only or "copy" in args.only:
            big = work / "random.bin"
            digest = make_random(big, size)
            if "download" in args.only:
                rows.append(case_download(work, size, args.repeat, big, digest))
                print("download done", flush=True)
            if "copy" in args.only:
                rows.append(case_copy(work, size, args.repeat, big))
                print("copy done", flush=True)
            remove(big)
        if "tar" in args.only:
            rows.append(case_tar(work, size, args.repeat, rng))
            print("tar done", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(rows)
    print(f"total {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
