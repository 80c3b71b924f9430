"""The console's overall bar (ui/console.py): several files at once, one line for them all."""

from __future__ import annotations

import io
import threading

from image_creator.ui.console import ConsoleReporter


def run_two_files(reporter: ConsoleReporter) -> None:
    ready = threading.Barrier(2)

    def one(label: str, size: int) -> None:
        with reporter.progress(label, size) as advance:
            ready.wait()  # both files are in progress at once
            for _ in range(4):
                advance(size // 4)

    with reporter.overall("all files", 3000):
        threads = [
            threading.Thread(target=one, args=("a.zim", 1000)),
            threading.Thread(target=one, args=("b.zim", 2000)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def test_without_a_terminal_each_file_and_the_total_get_a_line() -> None:
    stream = io.StringIO()
    run_two_files(ConsoleReporter(stream, interactive=False))
    lines = stream.getvalue().splitlines()
    assert sorted(lines[:2]) == ["    a.zim: 1000 bytes", "    b.zim: 1.95 KiB"]
    assert lines[2].startswith("    all files: 2.93 KiB in ")
    assert "\x1b" not in stream.getvalue()


def test_on_a_terminal_the_block_is_drawn_and_erased() -> None:
    stream = io.StringIO()
    reporter = ConsoleReporter(stream, interactive=True)
    with reporter.overall("all files", 3000), reporter.progress("a.zim", 1000) as advance:
        advance(500)
        with reporter._lock:  # what the redrawing thread does
            reporter._erase()
            reporter._draw()
        drawn = stream.getvalue()
        assert "    all files  16% 500 bytes / 2.93 KiB" in drawn
        assert "(1 in progress)" in drawn
        assert "      a.zim  50% 500 bytes / 1000 bytes" in drawn
        reporter.info("a message")
        advance(500)
    output = stream.getvalue()
    # the message is printed above the block, which is drawn again under it
    assert output.index("a message") > output.index("a.zim  50%")
    assert "\x1b[2F\x1b[J    a message\n    all files" in output
    assert (
        output.rstrip()
        .splitlines()[-1]
        .endswith("\x1b[J    all files: 1000 bytes in 0.0s (1.2 MiB/s)")
        or "all files: 1000 bytes in " in output.rstrip().splitlines()[-1]
    )
    assert "    a.zim: 1000 bytes" in output
