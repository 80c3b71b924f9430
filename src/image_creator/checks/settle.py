"""What a check found wrong with this host: a warning each in check mode, one error in a
build."""

from __future__ import annotations

from image_creator.context import Context
from image_creator.errors import HostError
from image_creator.options import Mode


def settle(ctx: Context, problems: list[str], *, prefix: str = "", hint: str | None = None) -> None:
    """What this host lacks: one error in a build, a warning each in check mode."""
    if not problems:
        return
    if ctx.options.mode is Mode.BUILD:
        raise HostError(prefix + "; ".join(problems), hint=hint)
    for problem in problems:
        ctx.reporter.warning(f"a build here would fail: {problem}")
