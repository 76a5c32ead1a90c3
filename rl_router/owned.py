"""Files rl-router writes: only into folders it may write, only over files it wrote, atomically.

Why: commands used to write where they were pointed. `train` into a folder holding a user's
`recipe.json` or `metrics.json` replaced them, `boundaries` replaced a `boundaries.json` in the
current folder, and `export` deleted whatever its manifest listed, `../` paths included. The
rules, enforced here for every writer:

- every folder we write carries a marker, `.rl-router-owned.json`, listing the files we wrote
  there (a training run's folder is ours whole: its marker says so);
- a file is written only when it does not exist yet or the marker lists it, and only under
  the folder (a plain name: no separator, no `..`, no link out);
- a run folder is claimed only when it is new, empty, or ours (marker, or an earlier run's
  `.rl-router.lock`);
- writes are atomic (a temporary file in the same folder, then a rename), so a kill never
  leaves half a file;
- the output path is checked (and created) before any work starts, so a path under a file,
  in /proc or behind a dangling link fails in a second, not after the run.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rl_router.errors import ConfigError

MARKER = ".rl-router-owned.json"
#: files that say a folder is an earlier rl-router run's, from before the marker existed
LEGACY_RUN_FILES = (".rl-router.lock",)
#: entries that never count as someone else's files
OURS_ALWAYS = {MARKER, ".rl-router.lock"}


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` through a temporary file beside it and a rename: readers see the
    old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def prepare_dir(path: str | Path, option: str) -> Path:
    """Create the folder `path` (and its parents) now and check that it takes files: a path
    under a file, in a read-only or virtual file system (/proc) or behind a dangling link is a
    one-line error naming `option`, before any work starts."""
    raw = str(path)
    if not raw.strip():
        raise ConfigError(option, "is empty", "give a folder, e.g. outputs/my-run")
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise ConfigError(option, f"{p} is a link to {os.readlink(p)}, which does not exist", "give a real folder, or fix the link")
    if p.exists() and not p.is_dir():
        raise ConfigError(option, f"{p} is a file", "give a folder (it is created if missing)")
    for parent in p.parents:
        if parent.is_symlink() and not parent.exists():
            raise ConfigError(option, f"{parent} is a link to {os.readlink(parent)}, which does not exist", "give a real folder, or fix the link")
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(option, f"{p} cannot be created: {parent} is a file", "give a folder path that is not under a file")
            break
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rl-router-probe-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(option, f"{p} cannot be written ({e.strerror or type(e).__name__})", "choose a folder you can write to") from None
    return p


def plain_name(name: Any) -> bool:
    """A file name inside a folder: no separator, not `.` / `..`, not empty."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\x00" not in name


class OwnedFolder:
    """A folder rl-router writes into, and the record (MARKER) of what it wrote there."""

    def __init__(self, path: str | Path, option: str, *, kind: str = "files"):
        self.path = prepare_dir(path, option)
        self.option, self.kind = option, kind
        self.marker = self.path / MARKER
        self.record = self._read_marker()

    def _read_marker(self) -> dict[str, Any]:
        if not self.marker.exists():
            return {"written_by": "rl-router", "kind": None, "files": []}
        try:
            rec = json.loads(self.marker.read_text())
            if not isinstance(rec, dict) or not isinstance(rec.get("files", []), list):
                raise ValueError("not a record")
        except (OSError, ValueError, RecursionError):
            raise ConfigError(self.option, f"{self.marker} is damaged", f"delete it if every file in {self.path} is rl-router's, else choose another folder") from None
        rec["files"] = [f for f in rec.get("files", []) if plain_name(f)]  # a listed '../x' is never ours
        return rec

    @property
    def whole(self) -> bool:
        """Is the whole folder ours: a run folder (claimed by `claim_run`), or an unmarked
        folder inside one (RUN/eval written before markers existed)?"""
        return self.record.get("kind") == "run" or (not self.marker.exists() and is_run(self.path.parent))

    def owns(self, name: str) -> bool:
        return plain_name(name) and (self.whole or name in self.record["files"])

    def foreign(self) -> list[str]:
        """The entries of the folder that are not ours."""
        return sorted(p.name for p in self.path.iterdir() if p.name not in OURS_ALWAYS and not self.owns(p.name))

    def target(self, name: str) -> Path:
        """`path/name`, after checking that writing it never replaces someone else's file."""
        if not plain_name(name):
            raise ValueError(f"not a plain file name: {name!r}")  # a bug of ours, not an input
        p = self.path / name
        if (p.exists() or p.is_symlink()) and not self.owns(name):
            raise ConfigError(self.option, f"{p} exists and rl-router did not write it", "move it away, or choose another output path; rl-router never replaces files it did not write")
        if p.is_symlink():
            raise ConfigError(self.option, f"{p} is a link", "rl-router writes files, not through links: remove the link")
        return p

    def check(self, *names: str) -> "OwnedFolder":
        """Before the work: every file about to be written may be written."""
        for n in names:
            self.target(n)
        return self

    def adopt(self, *names: str) -> None:
        """Record `names` (written by us, e.g. a folder renamed into place) in the marker."""
        new = [n for n in names if plain_name(n) and n not in self.record["files"]]
        if new or not self.marker.exists():
            self.record["files"] = sorted({*self.record["files"], *new})
            self.record["kind"] = self.record.get("kind") or self.kind
            atomic_write(self.marker, json.dumps(self.record, indent=1))

    def write(self, name: str, data: str | bytes) -> Path:
        p = self.target(name)
        self.adopt(name)  # recorded first: a kill between the two leaves a file we can replace
        return atomic_write(p, data)

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write(name, json.dumps(obj, indent=1, default=str))


def is_run(folder: Path) -> bool:
    """Is `folder` an rl-router training run's output (marked, or an earlier run's lock)?"""
    try:
        if (folder / MARKER).is_file() and json.loads((folder / MARKER).read_text()).get("kind") == "run":
            return True
    except (OSError, ValueError, AttributeError, RecursionError):
        return False
    return any((folder / n).exists() for n in LEGACY_RUN_FILES)


def claim_run(path: str | Path, option: str = "--output-dir") -> OwnedFolder:
    """A training run's output folder: new, empty, or an earlier rl-router run's; then marked
    as ours whole. Any other folder (a user's files in it) is refused before any work."""
    f = OwnedFolder(path, option, kind="run")
    if f.record.get("kind") != "run":
        legacy = any((f.path / n).exists() for n in LEGACY_RUN_FILES)
        theirs = f.foreign()  # empty inside an earlier run (RUN/sub), which is ours whole
        if theirs and not legacy:
            shown = ", ".join(theirs[:5]) + (f" and {len(theirs) - 5} more" if len(theirs) > 5 else "")
            raise ConfigError(option, f"{f.path} holds files rl-router did not write ({shown})", "choose a new or empty folder; rl-router never writes over files it did not write")
        f.record["kind"] = "run"
        atomic_write(f.marker, json.dumps(f.record, indent=1))
    return f


def output_file(path: str | Path, option: str, *also: str) -> tuple[OwnedFolder, str]:
    """A single output file (and `also`: files written beside it) chosen by the user: its folder
    is prepared and every name checked now, before the work that produces them."""
    p = Path(path)
    if not str(path).strip():
        raise ConfigError(option, "is empty", "give a file path")
    if p.is_dir():
        raise ConfigError(option, f"{p} is a folder", "give a file path inside it")
    folder = OwnedFolder(p.parent, option)
    folder.check(p.name, *also)
    return folder, p.name
