"""A whole cold build through the CLI against its floors: decompression + max(network, disk).

    .venv/bin/python benchmarks/bench_cold_build.py [--size MiB] [--repeat N] [--cap-mib M]
        [-T N] [--content all|plain|tree] [--workdir DIR]

Issue 12's target: the cold build of bench_hot_paths.py's scenario takes at most
1.25 x (decompression floor + max(network floor, disk floor)), floors measured in the same run
on the same data. Run as root (the build mounts the data partition: the default backend as
root), with no cache (no ``--cache-dir``), so every byte is downloaded.

The scenario (generated in a temporary directory under ``--workdir``, removed at the end):

- base image: ``image_creator.demo.make_base_image`` (boot FAT32, root and data ext4) whose
  root filesystem holds ``--size``/16 MiB of random and ``--size``/16 MiB of compressible
  bytes (bench_hot_paths's kinds of data), compressed with ``xz -T0``, with its sha-256. It
  stays small: the bulk of a real build is its content;
- content, each file with its sha-256: two random files of ``--size``/2 MiB (``via: direct``)
  and a tar.gz of bench_hot_paths's tree for ``--size`` (8 small files per MiB, four bigger
  ones; ``via: gztar``).

Everything is served over loopback HTTP by the tests' server (bench_downloads.py's mirror, in
a process of its own: Range, ETag, and with ``--cap-mib`` a cap on each connection).

Measured, alternating, ``--repeat`` times each, every one a process of its own timed from
spawn to exit by this script:

- build: ``image-creator -T N --report FILE CONFIG OUT`` (``-T``, default 4). The report gives the
  time of each step; its last one, "Computing the image's sha256", runs only because of
  ``--report``, so it is taken off the build's time (both are printed);
- decompression floor: ``xz -dc -T0 base.img.xz > file`` (a file on the same filesystem;
  xz writes it sparse, as the build does);
- network floor: all content files downloaded at once into a folder on the same filesystem,
  one connection per file, by ``curl -Z`` (parallel transfers) on an uncapped mirror, or by
  ``aria2c -j4 -s5 -x5`` on a capped one (the tool a capped mirror calls for: curl would only
  measure the cap);
- disk floor: the downloaded content files (the two plain files and the .tar.gz as
  downloaded, from the page cache) copied to the same filesystem by ``dd bs=8M
  conv=fsync``, one file after the other; the time is their sum. The build writes the tree
  extracted, a little more than the archive: this floor is, if anything, low.

Printed: best and median of each; the formula ``decompression + max(network, disk)`` of the
best floors (and of the medians); the ratio build / formula (target <= 1.25); the median CPU
time (user + system, children included, from ``os.wait4``); the peak RSS (GNU time,
``/usr/bin/time -f %M``; else ``os.wait4``, an upper bound); the build's median time per step
from its reports, and what its wall time spent outside them.

``--content plain`` or ``tree`` builds (and measures the floors) with only the plain files or
only the archive, to see what each costs; ``-T`` is passed to the build (with ``--cap-mib``,
aria2c opens up to 5 connections per file, the build at most ``-T`` in all).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from image_creator.demo import make_base_image

if not __package__:  # run as a script: the sibling benchmarks are imported from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_downloads import Mirror
from benchmarks.bench_hot_paths import (
    MIB,
    SEED,
    TIME,
    make_random,
    make_tree,
    sha256_file,
)

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / ".venv" / "bin" / "image-creator"
SHA256_STEP = "Computing the image's sha256"
OUTSIDE = "outside the steps: start, imports, unmounting (writeback), exit"


# --- measurement -------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    max_rss_kib: int
    cpu_seconds: float  # user + system, its children included


def spawn(argv: Sequence[str], *, stdout: Path | None = None, log: Path | None = None) -> Run:
    """Run a command to its end, timed from spawn to exit; its peak RSS from GNU time.

    A child forked from this Python process inherits its high-water mark across exec, so
    without GNU time ``wait4`` gives an upper bound."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-") as rss_file:
        wrapped = list(argv)
        if TIME.exists():
            wrapped = [str(TIME), "-f", "%M", "-o", rss_file.name, *argv]
        out = stdout.open("wb") if stdout is not None else subprocess.DEVNULL
        err = log.open("ab") if log is not None else None
        try:
            start = time.perf_counter()
            process = subprocess.Popen(wrapped, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            _pid, status, usage = os.wait4(process.pid, 0)
            elapsed = time.perf_counter() - start
        finally:
            if stdout is not None and not isinstance(out, int):
                out.close()
            if err is not None:
                err.close()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            hint = f" (see {log})" if log is not None else ""
            raise SystemExit(f"{' '.join(argv)}: exit status {process.returncode}{hint}")
        measured = rss_file.read().strip().splitlines()
    rss = int(measured[-1]) if measured and measured[-1].isdigit() else usage.ru_maxrss
    return Run(elapsed, rss, usage.ru_utime + usage.ru_stime)


@dataclass
class Series:
    name: str
    what: str
    runs: list[Run] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(run.seconds for run in self.runs)

    @property
    def median(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    @property
    def median_cpu(self) -> float:
        return statistics.median(run.cpu_seconds for run in self.runs)

    @property
    def max_rss_kib(self) -> int:
        return max(run.max_rss_kib for run in self.runs)


# --- the scenario ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    base_xz: Path
    base_sha256: str
    plain: dict[str, str]  # file name -> sha256
    archive: str | None
    archive_sha256: str
    tree_bytes: int
    tree_files: int

    @property
    def content(self) -> list[str]:
        return [*self.plain, *([self.archive] if self.archive else [])]

    def only(self, which: str) -> Scenario:
        """The content this run builds with: ``all``, ``plain`` or ``tree``."""
        if which == "plain":
            return dataclasses.replace(self, archive=None)
        if which == "tree":
            return dataclasses.replace(self, plain={})
        return self


def _compressible(rng: random.Random, size: int) -> bytes:
    table = bytes(b"abcdefghijklmnop"[i % 16] for i in range(256))
    return rng.randbytes(size).translate(table)


def make_scenario(served: Path, work: Path, size_mib: int) -> Scenario:
    rng = random.Random(SEED)
    part = max(1, size_mib // 16) * MIB
    root_files = {
        "etc/hostname": b"offspot\n",
        "opt/random.bin": rng.randbytes(part),
        "opt/compressible.bin": _compressible(rng, part),
    }
    layout = make_base_image(
        work / "base.img", root_files=root_files, root_mib=2 * part // MIB + 48, xz=True
    )
    assert layout.xz_path is not None
    (work / "base.img").unlink()
    base_xz = layout.xz_path.replace(served / "base.img.xz")

    plain = {}
    for index in range(2):
        name = f"big{index}.bin"
        plain[name] = make_random(served / name, size_mib * MIB // 2)

    tree = work / "tree"
    tree.mkdir()
    tree_files, tree_bytes = make_tree(tree, size_mib, rng)
    archive = served / "tree.tar.gz"
    subprocess.run(["tar", "-I", "gzip -1", "-cf", str(archive), "-C", str(tree), "."], check=True)
    shutil.rmtree(tree)
    return Scenario(
        base_xz=base_xz,
        base_sha256=sha256_file(base_xz),
        plain=plain,
        archive=archive.name,
        archive_sha256=sha256_file(archive),
        tree_bytes=tree_bytes,
        tree_files=tree_files,
    )


def write_config(path: Path, scenario: Scenario, url: Callable[[str], str]) -> None:
    def sha256(value: str) -> dict[str, str]:
        return {"algo": "sha-256", "value": value}

    files: list[dict[str, Any]] = [
        {"url": url(name), "to": f"/data/contents/{name}", "checksum": sha256(digest)}
        for name, digest in scenario.plain.items()
    ]
    if scenario.archive is not None:
        files.append(
            {
                "url": url(scenario.archive),
                "to": "/data/contents/tree",
                "via": "gztar",
                "checksum": sha256(scenario.archive_sha256),
            }
        )
    config = {
        "base": {"source": url(scenario.base_xz.name), "checksum": sha256(scenario.base_sha256)},
        "files": files,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


# --- the sides ---------------------------------------------------------------------------


def remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def measure_build(
    config: Path,
    work: Path,
    steps: list[dict[str, float]],
    *,
    check: Scenario | None,
    plain_size: int,
    concurrency: int,
) -> Run:
    output = work / "out.img"
    report_path = work / "report.json"
    run = spawn(
        [str(CLI), "-T", str(concurrency), "--report", str(report_path), str(config), str(output)],
        log=work / "build.log",
    )
    report = json.loads(report_path.read_text())
    timings = {step["name"]: float(step["seconds"]) for step in report["steps"]}
    timings[OUTSIDE] = run.seconds - sum(timings.values())
    steps.append(timings)
    if check is not None:  # once: the content arrived whole
        verify_output(report, check, plain_size)
    remove(output, report_path)
    # the sha256 step is one core busy: its seconds come off the CPU time too
    sha256_seconds = timings.get(SHA256_STEP, 0.0)
    return Run(run.seconds - sha256_seconds, run.max_rss_kib, run.cpu_seconds - sha256_seconds)


def verify_output(report: dict[str, Any], scenario: Scenario, plain_size: int) -> None:
    """The build verified every checksum (it fails otherwise); the sizes are checked here."""
    written = {Path(entry["to"]).name: entry for entry in report["files"]}
    for name in scenario.plain:
        if written[name]["bytes_written"] != plain_size:
            raise SystemExit(f"build: {name} has {written[name]['bytes_written']} bytes")
    if scenario.archive is not None and written["tree"]["bytes_written"] < scenario.tree_bytes:
        raise SystemExit(f"build: the tree has {written['tree']['bytes_written']} bytes")
    connections = ", ".join(f"{name} {written[name]['connections']}" for name in scenario.plain)
    print(f"  build checked; connections: {connections or '-'}", flush=True)


def measure_network(urls: Sequence[str], into: Path, capped: bool, log: Path) -> Run:
    into.mkdir()
    if capped:
        argv = [
            "aria2c",
            "-q",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--file-allocation=falloc",
            "--console-log-level=error",
            "--summary-interval=0",
            "-d",
            str(into),
            "-Z",
            "-j4",
            "-s5",
            "-x5",
            *urls,
        ]
    else:
        argv = ["curl", "-sS", "-f", "-Z", "--output-dir", str(into)]
        for url in urls:
            argv += ["-O", url]
    return spawn(argv, log=log)


def measure_disk(sources: Sequence[Path], into: Path, log: Path) -> Run:
    into.mkdir()
    runs = [
        spawn(
            ["dd", f"if={source}", f"of={into / source.name}", "bs=8M", "conv=fsync"],
            log=log,
        )
        for source in sources
    ]
    return Run(
        sum(run.seconds for run in runs),
        max(run.max_rss_kib for run in runs),
        sum(run.cpu_seconds for run in runs),
    )


# --- the run -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--size", type=int, default=512, help="MiB of plain content (default 512), see above"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument(
        "--cap-mib",
        type=int,
        default=0,
        help="cap each connection of the mirror at this many MiB/s (default: no cap)",
    )
    parser.add_argument(
        "--content",
        choices=("all", "plain", "tree"),
        default="all",
        help="build with all the content (default), only the plain files or only the tar.gz",
    )
    parser.add_argument(
        "-T",
        dest="concurrency",
        type=int,
        default=4,
        help="the build's -T: connections at once (default 4, the CLI's default)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where to put the data (a temporary directory is made in it; default: $TMPDIR)",
    )
    args = parser.parse_args(argv)
    if args.size < 32:
        parser.error("--size must be at least 32 (MiB)")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run as root: the build mounts the data partition", file=sys.stderr)
        return 2
    for tool in ("aria2c" if args.cap_mib else "curl", "xz", "dd"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing (Debian: apt-get install aria2 curl)", file=sys.stderr)
            return 2
    parent = args.workdir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    needed = 6 * args.size * MIB
    free = shutil.disk_usage(parent).free
    if free < needed:
        print(f"need {needed // MIB} MiB free in {parent}, have {free // MIB} MiB", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-cold-build-", dir=parent))
    started = time.perf_counter()
    mirror: Mirror | None = None
    try:
        served = work / "served"
        served.mkdir()
        scenario = make_scenario(served, work, args.size).only(args.content)
        print(
            f"# data in {work}: base {scenario.base_xz.stat().st_size / MIB:.1f} MiB .xz;"
            f" content {', '.join(scenario.content)}; best of {args.repeat}",
            flush=True,
        )
        mirror = Mirror(served, conn_cap=args.cap_mib * MIB or None)
        config = work / "config.yaml"
        write_config(config, scenario, mirror.url)
        downloaded = work / "downloaded"
        copied = work / "copied"
        decompressed = work / "decompressed.img"
        log = work / "tools.log"
        steps: list[dict[str, float]] = []
        build = Series(
            "build", f"image-creator -T {args.concurrency} CONFIG OUT (as root, no cache)"
        )
        xz = Series("decompression floor", "xz -dc -T0 base.img.xz > file")
        network = Series(
            "network floor",
            "aria2c -Z -j4 -s5 -x5 (all content files)"
            if args.cap_mib
            else "curl -Z (all content files, one connection each)",
        )
        disk = Series("disk floor", "dd bs=8M conv=fsync of each downloaded content file")
        urls = [mirror.url(name) for name in scenario.content]

        def floors() -> None:
            xz.runs.append(
                spawn(["xz", "-dc", "-T0", str(scenario.base_xz)], stdout=decompressed, log=log)
            )
            remove(decompressed)
            network.runs.append(measure_network(urls, downloaded, bool(args.cap_mib), log))
            for name, digest in scenario.plain.items():
                if sha256_file(downloaded / name) != digest:
                    raise SystemExit(f"network floor: {name} has the wrong content")
            sources = [downloaded / name for name in scenario.content]
            disk.runs.append(measure_disk(sources, copied, log))
            remove(downloaded, copied)

        def cold_build() -> None:
            build.runs.append(
                measure_build(
                    config,
                    work,
                    steps,
                    check=None if build.runs else scenario,  # the first build is checked
                    plain_size=args.size * MIB // 2,
                    concurrency=args.concurrency,
                )
            )

        for index in range(args.repeat):
            order: list[Callable[[], None]] = [cold_build, floors]
            if index % 2:
                order.reverse()
            for side in order:
                side()
            print(
                f"  round {index + 1}: build {build.runs[-1].seconds:.2f}s,"
                f" xz {xz.runs[-1].seconds:.2f}s, network {network.runs[-1].seconds:.2f}s,"
                f" disk {disk.runs[-1].seconds:.2f}s",
                flush=True,
            )
        content_mib = sum((served / name).stat().st_size for name in scenario.content) / MIB
        print_results(
            build,
            [xz, network, disk],
            steps=steps,
            args=args,
            content_mib=content_mib,
            scenario=scenario,
        )
    finally:
        if mirror is not None:
            mirror.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.0f}s")
    return 0


def print_results(
    build: Series,
    floors: Sequence[Series],
    *,
    steps: Sequence[dict[str, float]],
    args: argparse.Namespace,
    content_mib: float,
    scenario: Scenario,
) -> None:
    xz, network, disk = floors
    formula = xz.best + max(network.best, disk.best)
    formula_median = xz.median + max(network.median, disk.median)
    cap = f"{args.cap_mib} MiB/s per connection" if args.cap_mib else "no cap"
    parts = [f"{len(scenario.plain)} x {args.size // 2} MiB plain"] if scenario.plain else []
    if scenario.archive is not None:
        parts.append(
            f"tar.gz of {scenario.tree_files} files, {scenario.tree_bytes / MIB:.0f} MiB extracted"
        )
    what = ", ".join(parts)
    print()
    print(
        f"# cold build, {os.cpu_count()} cores; content {content_mib:.0f} MiB to download"
        f" ({what}); mirror: {cap}"
    )
    header = f"{'':<22} {'best s':>7} {'median s':>8} {'CPU s':>6} {'peak RSS':>9}  what"
    print(header)
    print("-" * len(header))
    for series in (build, *floors):
        print(
            f"{series.name:<22} {series.best:>7.2f} {series.median:>8.2f}"
            f" {series.median_cpu:>6.2f} {series.max_rss_kib / 1024:>7.1f}Mi  {series.what}"
        )
    print(
        f"{'formula':<22} {formula:>7.2f} {formula_median:>8.2f} {'':>16}"
        "  decompression + max(network, disk)"
    )
    print(
        f"{'ratio':<22} {build.best / formula:>7.2f} {build.median / formula_median:>8.2f}"
        f" {'':>16}  build / formula (target <= 1.25)"
    )
    print()
    print("build steps (median s over the runs, from --report):")
    names = list(dict.fromkeys(name for timings in steps for name in timings))
    for name in names:
        values = [timings[name] for timings in steps if name in timings]
        note = " (only for --report: taken off the build time)" if name == SHA256_STEP else ""
        print(f"  {statistics.median(values):7.2f}  {name}{note}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
