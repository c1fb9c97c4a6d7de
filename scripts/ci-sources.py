#!/usr/bin/env python3
"""Lets a fresh clone reuse what the last CI run built from the same sources.

Cargo judges a workspace crate stale when a source file is newer than its last build, and a
fresh clone makes every file new: each CI run rebuilt every workspace crate (about 17 of its
minutes on 2 cores) from sources that had not changed. This keeps a record, in the target
directory, of each tracked file's content hash and the modification time it had when the last
run built from it; the next run gives every file whose content is unchanged that time back, so
cargo rebuilds only what depends on changed files.

The record is trusted only if nothing was built in the target directory since it was written (no
fingerprint newer than it): a build from other sources (a developer's working tree, another
branch) in between makes the next run rebuild as before.

  restore  before the build: give unchanged files their recorded times, note the run's sources
  save     after the run: record the sources the run built from (those unchanged during it)
"""
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/openledger-target"))
RECORD = TARGET / "ci-sources.json"
PENDING = TARGET / "ci-sources.pending.json"


def tracked_files():
    out = subprocess.run(["git", "ls-files", "-z"], check=True, capture_output=True).stdout
    return [name for name in out.decode().split("\0") if name and os.path.isfile(name)]


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def built_since(moment):
    """A cargo fingerprint written after `moment`, anywhere in the target directory."""
    for root, dirs, files in os.walk(TARGET):
        # Fingerprints sit in `.fingerprint` directories; skip the bulk (deps, build outputs).
        dirs[:] = [d for d in dirs if d not in ("deps", "build", "incremental", "examples", "node_modules")]
        if os.path.basename(os.path.dirname(root)) != ".fingerprint":
            continue
        for name in files:
            if os.stat(os.path.join(root, name)).st_mtime > moment:
                return os.path.join(root, name)
    return None


def restore():
    sources = {}
    restored = changed = 0
    record = json.loads(RECORD.read_text()) if RECORD.exists() else None
    newer = record and built_since(record["saved_at"])
    if record is None:
        print("ci-sources: no record of an earlier run; every crate builds")
    elif newer:
        print(f"ci-sources: built since the last run ({newer}); every crate builds")
        record = None
    for path in tracked_files():
        sha = digest(path)
        known = record and record["files"].get(path)
        if known and known[0] == sha:
            os.utime(path, ns=(known[1], known[1]))
            restored += 1
        elif record:
            changed += 1
        sources[path] = [sha, os.stat(path).st_mtime_ns]
    PENDING.write_text(json.dumps({"files": sources}))
    if record:
        print(f"ci-sources: {restored} files as last built, {changed} changed or new")


def save():
    if not PENDING.exists():
        print("ci-sources: no sources noted at the start of the run; nothing saved")
        return
    pending = json.loads(PENDING.read_text())["files"]
    files = {}
    for path, (sha, mtime) in pending.items():
        # A file changed during the run may or may not be what was built: left out.
        if os.path.isfile(path) and os.stat(path).st_mtime_ns == mtime and digest(path) == sha:
            files[path] = [sha, mtime]
    # Written after the run's last build, so every fingerprint of the run is older.
    RECORD.write_text(json.dumps({"saved_at": time.time(), "files": files}))
    PENDING.unlink()
    print(f"ci-sources: recorded {len(files)} files")


if __name__ == "__main__":
    {"restore": restore, "save": save}[sys.argv[1]]()
