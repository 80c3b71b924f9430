"""Downloads on a network-shaped loopback: segmented (ours) vs aria2c vs curl vs one connection.

    .venv/bin/python benchmarks/bench_downloads.py [--size-mib 1024] [--files 4]
        [--files-size-mib 256] [--mirror-size-mib 512] [--cap-mib 16] [--host-cap-mib 32]
        [--repeat 2] [--only single,multi,mirrors,uncapped] [--workdir DIR]

Each mirror is tests/support/httpserver.py's server in a process of its own (Range, ETag,
and a cap on each connection, ``--cap-mib`` MiB/s, or on the whole host, ``--host-cap-mib``).
Every command runs in a process of its own and is timed whole (interpreter start included);
each side runs ``--repeat`` times, alternating, the best time counts; every output is checked
against the source's sha256 (ours also hashes while downloading, as a build does; aria2c and
curl do not). Scenarios:

- single: one ``--size-mib`` file, per-connection cap: ours (5 connections) vs
  ``aria2c -s5 -x5`` vs curl (curl runs once: it is the slowest by far);
- multi: ``--files`` files of ``--files-size-mib`` at once, per-connection cap: ours
  (``-T 20``: 4 files x 5 connections) vs ``aria2c -j4 -s5 -x5``;
- mirrors: one ``--mirror-size-mib`` file on two mirrors, each capped per host: ours over
  both (the first names the second in ``m.bin.meta4``, as MirrorBrain does) vs ours from a
  third with no metalink (and aria2c given both URLs, for reference);
- uncapped: one ``--size-mib`` file, no cap: ours segmented vs ours on one connection
  (today's path) vs aria2c and curl.

Ratios are ours / the other side (below 1: ours is faster), but for mirrors: the throughput of
two mirrors over one (above 1: faster).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from image_creator.cache.downloads import Downloads
from image_creator.digests import ChecksumAlgo
from image_creator.fetch.checksums import HashingReader, new_hasher
from image_creator.fetch.client import HttpClient

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
BLOCK = 8 * MIB


# the mirror process ---------------------------------------------------------------------


def serve(folder: Path, port_file: Path, conn_cap: int | None, host_cap: int | None) -> None:
    sys.path.insert(0, str(REPO))
    # the tests' server, importable once the repository is on the path (not installed)
    from tests.support.httpserver import HttpServer  # noqa: PLC0415

    with HttpServer() as server:
        for path in sorted(folder.iterdir()):
            server.add_file(f"/{path.name}", path)
            if conn_cap:
                server.fault(f"/{path.name}", slow=conn_cap)
        server.cap_host(host_cap)
        port_file.write_text(str(server.port))
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()


class Mirror:
    def __init__(
        self, folder: Path, *, conn_cap: int | None = None, host_cap: int | None = None
    ) -> None:
        self.folder = folder
        port_file = folder.parent / f".port-{os.getpid()}-{id(self)}"
        argv = [sys.executable, __file__, "--serve", str(folder), "--port-file", str(port_file)]
        if conn_cap:
            argv += ["--conn-cap", str(conn_cap)]
        if host_cap:
            argv += ["--host-cap", str(host_cap)]
        self.process = subprocess.Popen(argv)
        while not port_file.exists() or not port_file.read_text():
            if self.process.poll() is not None:
                raise SystemExit("the mirror did not start")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        port_file.unlink()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# our client process ---------------------------------------------------------------------


def client(urls: Sequence[str], out: Path, *, connections: int, mode: str) -> None:
    """Download ``urls`` (several at once) into ``out`` the way a build places plain files:
    segmented (mode ``seg``: over the mirrors the source names too), or one stream each
    (``single``). Prints each file's sha256."""
    limiter = threading.BoundedSemaphore(connections)
    http = HttpClient(connections=connections + 2)  # one per run, as a build makes it
    downloads = Downloads(http, connections=limiter)

    def one(url: str) -> str:
        target = out / url.rsplit("/", 1)[1]
        hasher = new_hasher(ChecksumAlgo.SHA256)
        remote = http.probe(url)
        with downloads.open(url, remote=remote, segmentable=mode == "seg") as fetched:
            if fetched.segmented is not None:
                fetched.segmented.into(target, hasher)
            else:
                reader = HashingReader(fetched.stream, hasher)
                with target.open("wb") as file:
                    while chunk := reader.read(MIB):
                        file.write(chunk)
        return hasher.hexdigest()

    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        for digest in pool.map(one, urls):
            print(digest)


# the runs -------------------------------------------------------------------------------


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(BLOCK)
    with path.open("wb") as file:
        written = 0
        while written < size:
            # a different block each time: no two pieces alike
            part = (written.to_bytes(8, "little") + block)[: min(BLOCK, size - written)]
            file.write(part)
            digest.update(part)
            written += len(part)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


Command = Callable[[Path], list[str]]


def timed(command: Command, out: Path, expected: dict[str, str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    argv = command(out)
    started = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    elapsed = time.monotonic() - started
    for name, digest in expected.items():
        got = sha256_of(out / name)
        if got != digest:
            raise SystemExit(f"{argv[0]}: {name} has sha256 {got}, expected {digest}")
    shutil.rmtree(out)
    return elapsed


def best_of(
    sides: dict[str, tuple[Command, int]], out: Path, expected: dict[str, str]
) -> dict[str, float]:
    """Each side's best time, the sides alternating, each run its number of times."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    rounds = max(count for _, count in sides.values())
    for index in range(rounds):
        for name, (command, count) in sides.items():
            if index < count:
                seconds = timed(command, out, expected)
                times[name].append(seconds)
                print(f"    {name}: {seconds:.2f}s", flush=True)
    return {name: min(values) for name, values in times.items()}


def ours(urls: Sequence[str], *, connections: int, mode: str) -> Command:
    return lambda out: [
        sys.executable,
        __file__,
        "--client",
        mode,
        "--out",
        str(out),
        "-T",
        str(connections),
        *urls,
    ]


def aria2c(urls: Sequence[str], *options: str, mirrors: bool = False) -> Command:
    def command(out: Path) -> list[str]:
        base = [
            "aria2c",
            "-q",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--file-allocation=falloc",
            "--console-log-level=error",
            "--summary-interval=0",
            "-d",
            str(out),
            *options,
        ]
        if mirrors:
            return [*base, *urls]  # one file, these URLs its mirrors
        listing = out / ".list"
        listing.write_text("".join(f"{url}\n" for url in urls))
        return [*base, "-i", str(listing)]

    return command


def curl(url: str) -> Command:
    return lambda out: ["curl", "-s", "-f", "-o", str(out / url.rsplit("/", 1)[1]), url]


def report(title: str, times: dict[str, float], ratios: list[tuple[str, str, str, float]]) -> None:
    print(f"\n## {title}")
    for name, seconds in times.items():
        print(f"  {name:<28} {seconds:8.2f} s")
    for label, ours_side, other, target in ratios:
        ratio = times[ours_side] / times[other]
        print(f"  {label:<28} {ratio:8.2f}   (target {target})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--files-size-mib", type=int, default=256)
    parser.add_argument("--mirror-size-mib", type=int, default=512)
    parser.add_argument("--cap-mib", type=int, default=16)
    parser.add_argument("--host-cap-mib", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", default="single,multi,mirrors,uncapped")
    parser.add_argument("--workdir", type=Path, default=None)
    # internal: the mirror and client processes
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--conn-cap", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--host-cap", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("-T", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("urls", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port_file, args.conn_cap, args.host_cap)
        return 0
    if args.client:
        client(args.urls, args.out, connections=args.T, mode=args.client)
        return 0
    for tool in ("aria2c", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing (apt-get install aria2 curl)")
    only = set(args.only.split(","))
    cap = args.cap_mib * MIB
    repeat = args.repeat
    with tempfile.TemporaryDirectory(prefix="bench-downloads-", dir=args.workdir) as folder:
        work = Path(folder)
        out = work / "out"
        print(
            f"# bench_downloads: {os.cpu_count()} cores, caps {args.cap_mib} MiB/s per "
            f"connection, {args.host_cap_mib} MiB/s per host; best of {repeat}",
            flush=True,
        )

        if only & {"single", "uncapped"}:
            big = work / "big"
            big.mkdir()
            digest = make_file(big / "big.bin", args.size_mib * MIB)
            expected = {"big.bin": digest}
        if "single" in only:
            mirror = Mirror(big, conn_cap=cap)
            try:
                url = mirror.url("big.bin")
                print(f"\n# single: {args.size_mib} MiB, {args.cap_mib} MiB/s per connection")
                times = best_of(
                    {
                        "ours (5 connections)": (ours([url], connections=5, mode="seg"), repeat),
                        "aria2c -s5 -x5": (aria2c([url], "-s5", "-x5"), repeat),
                        "curl": (curl(url), 1),
                    },
                    out,
                    expected,
                )
            finally:
                mirror.stop()
            report(
                f"one {args.size_mib} MiB file, {args.cap_mib} MiB/s per connection",
                times,
                [
                    ("ours / aria2c", "ours (5 connections)", "aria2c -s5 -x5", 1.1),
                    ("ours / curl", "ours (5 connections)", "curl", 0.25),
                ],
            )

        if "multi" in only:
            several = work / "several"
            several.mkdir()
            digests = {
                f"f{index}.bin": make_file(several / f"f{index}.bin", args.files_size_mib * MIB)
                for index in range(args.files)
            }
            mirror = Mirror(several, conn_cap=cap)
            try:
                urls = [mirror.url(name) for name in digests]
                print(f"\n# multi: {args.files} x {args.files_size_mib} MiB at once")
                times = best_of(
                    {
                        "ours (-T 20)": (
                            ours(urls, connections=5 * args.files, mode="seg"),
                            repeat,
                        ),
                        "aria2c -j4 -s5 -x5": (aria2c(urls, "-j4", "-s5", "-x5"), repeat),
                    },
                    out,
                    digests,
                )
            finally:
                mirror.stop()
            shutil.rmtree(several)
            report(
                f"{args.files} files of {args.files_size_mib} MiB at once",
                times,
                [("ours / aria2c", "ours (-T 20)", "aria2c -j4 -s5 -x5", 1.1)],
            )

        if "mirrors" in only:
            shared = work / "shared"
            shared.mkdir()
            digest = make_file(shared / "m.bin", args.mirror_size_mib * MIB)
            host_cap = args.host_cap_mib * MIB
            second = Mirror(shared, host_cap=host_cap)
            one = Mirror(shared, host_cap=host_cap)  # the same file, with no metalink
            # the first names the second in a metalink, as MirrorBrain does
            (shared / "m.bin.meta4").write_text(
                '<?xml version="1.0" encoding="UTF-8"?>'
                '<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="m.bin">'
                f'<size>{args.mirror_size_mib * MIB}</size><hash type="sha-256">{digest}</hash>'
                f'<url priority="1">{second.url("m.bin")}</url></file></metalink>'
            )
            first = Mirror(shared, host_cap=host_cap)
            try:
                urls = [first.url("m.bin"), second.url("m.bin")]
                print(
                    f"\n# mirrors: {args.mirror_size_mib} MiB, {args.host_cap_mib} MiB/s per host"
                )
                times = best_of(
                    {
                        "ours, one mirror": (
                            ours([one.url("m.bin")], connections=5, mode="seg"),
                            repeat,
                        ),
                        "ours, two mirrors": (ours(urls[:1], connections=5, mode="seg"), repeat),
                        "aria2c -s5 -x5, two mirrors": (
                            aria2c(urls, "-s5", "-x5", mirrors=True),
                            repeat,
                        ),
                    },
                    out,
                    {"m.bin": digest},
                )
            finally:
                first.stop()
                second.stop()
                one.stop()
            shutil.rmtree(shared)
            print(f"\n## one file on two mirrors, {args.host_cap_mib} MiB/s per host")
            for name, seconds in times.items():
                print(f"  {name:<28} {seconds:8.2f} s")
            speedup = times["ours, one mirror"] / times["ours, two mirrors"]
            print(f"  {'two mirrors / one (speed)':<28} {speedup:8.2f}   (target >= 1.8)")

        if "uncapped" in only:
            mirror = Mirror(big)
            try:
                url = mirror.url("big.bin")
                print(f"\n# uncapped: {args.size_mib} MiB, no cap")
                times = best_of(
                    {
                        "ours, segmented": (ours([url], connections=5, mode="seg"), repeat + 1),
                        "ours, one connection": (
                            ours([url], connections=5, mode="single"),
                            repeat + 1,
                        ),
                        "aria2c -s5 -x5": (aria2c([url], "-s5", "-x5"), repeat),
                        "curl": (curl(url), repeat),
                    },
                    out,
                    expected,
                )
            finally:
                mirror.stop()
            report(
                f"one {args.size_mib} MiB file, no cap",
                times,
                [
                    ("segmented / one connection", "ours, segmented", "ours, one connection", 1.05),
                    ("segmented / aria2c", "ours, segmented", "aria2c -s5 -x5", 1.1),
                ],
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
