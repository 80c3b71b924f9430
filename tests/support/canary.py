"""A canary tree on the host: hostile inputs aim at it, tests prove it did not change.

    canary = Canary.plant(tmp_path / "host")   # files, folders, a link, fixed modes
    ... run a build whose registry/base image/cache points at canary.root ...
    canary.assert_unchanged()                   # same entries, types, modes, bytes, targets

The snapshot covers every entry below the root (nothing may appear or disappear), so an
attack that creates ``root/x/y`` or overwrites ``root/etc/passwd`` is caught either way.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

# The tree planted: names an attacker would aim at, with recognisable content.
PLANTED: dict[str, bytes] = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/bash\n",
    "etc/shadow": b"root:*:19000:0:99999:7:::\n",
    "var/lib/data.bin": bytes(range(256)) * 16,
    "home/user/notes.txt": b"do not touch\n",
}


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> "type mode digest-or-target" of every entry below ``root``."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            relative = path.relative_to(root).as_posix()
            if stat.S_ISLNK(info.st_mode):
                found[relative] = f"link {mode:o} {os.readlink(path)}"
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = f"dir {mode:o}"
            elif stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[relative] = f"file {mode:o} {digest}"
            else:
                found[relative] = f"other {info.st_mode:o}"
    return found


@dataclass
class Canary:
    root: Path
    before: dict[str, str] = field(default_factory=dict)

    @classmethod
    def plant(cls, root: Path) -> Canary:
        for relative, content in PLANTED.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(0o644)
        (root / "link-to-etc").symlink_to("etc")
        return cls(root=root, before=snapshot(root))

    def assert_unchanged(self) -> None:
        after = snapshot(self.root)
        added = sorted(set(after) - set(self.before))
        removed = sorted(set(self.before) - set(after))
        changed = sorted(
            key for key in set(after) & set(self.before) if after[key] != self.before[key]
        )
        assert not (added or removed or changed), (
            f"the host's canary tree changed: added {added}, removed {removed}, changed {changed}"
        )
