#!/usr/bin/env python3
"""Checks the workspace's `rust-version` claims against its locked dependencies.

What it measures: for every workspace member, the highest `rust-version` declared by any
package it reaches in `Cargo.lock` through normal and build dependencies (every feature
of every member on, every target platform), plus the member's own dev-dependencies and
what they reach. It fails when one of those packages declares a newer Rust than the
member claims, when a member claims none, or when the claim is older than the member's
edition allows.

What it does not measure: whether our own code uses a newer language feature or std API
than the claim (clippy's `incompatible_msrv` lint covers std APIs; nothing here runs an
old compiler), nor versions other than the locked ones (a downstream lockfile may pick
others; Cargo's MSRV-aware resolver prefers compatible ones).

Usage: scripts/msrv.py [-v]   (-v lists each member's highest requirement)
"""

import json
import subprocess
import sys

# The first Rust release that accepts each edition.
EDITION_MIN = {"2015": (1, 0, 0), "2018": (1, 31, 0), "2021": (1, 56, 0), "2024": (1, 85, 0)}


def parse(version):
    # "1.85" and "1.85.0" are the same requirement.
    parts = [int(part) for part in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def show(version):
    major, minor, patch = version
    return f"{major}.{minor}" + (f".{patch}" if patch else "")


def main():
    verbose = "-v" in sys.argv[1:]
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--all-features"],
            check=True,
            stdout=subprocess.PIPE,
        ).stdout
    )
    packages = {p["id"]: p for p in metadata["packages"]}
    nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}

    def edges(pkg_id, with_dev):
        for dep in nodes[pkg_id]["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if kinds - {"dev"} or (with_dev and "dev" in kinds):
                yield dep["pkg"]

    failures = []
    for member in metadata["workspace_members"]:
        pkg = packages[member]
        name = pkg["name"]
        if not pkg.get("rust_version"):
            failures.append(f"{name}: declares no rust-version")
            continue
        claim = parse(pkg["rust_version"])
        edition_min = EDITION_MIN[pkg["edition"]]
        if claim < edition_min:
            failures.append(
                f"{name}: claims {show(claim)}, but edition {pkg['edition']} needs {show(edition_min)}"
            )

        # Breadth-first from the member: its dev-dependencies count, theirs do not.
        # `via` keeps one path back to the member, to say why a package is reached.
        via = {member: None}
        queue = [(member, True)]
        while queue:
            current, with_dev = queue.pop(0)
            for dep in edges(current, with_dev):
                if dep not in via:
                    via[dep] = current
                    queue.append((dep, False))

        highest = (0, 0, 0)
        highest_by = []
        for dep in via:
            if dep == member or not packages[dep].get("rust_version"):
                continue
            needed = parse(packages[dep]["rust_version"])
            label = f"{packages[dep]['name']} {packages[dep]['version']}"
            if needed > highest:
                highest, highest_by = needed, [label]
            elif needed == highest:
                highest_by.append(label)
            if needed > claim:
                chain = []
                step = dep
                while step is not None:
                    chain.append(packages[step]["name"])
                    step = via[step]
                failures.append(
                    f"{name}: claims {show(claim)}, but {label} needs {show(needed)}"
                    f" (via {' <- '.join(chain)})"
                )
        if verbose:
            print(
                f"{name}: claims {show(claim)}; highest dependency requirement"
                f" {show(highest)} ({', '.join(sorted(highest_by))})"
            )

    if failures:
        print("rust-version claims that are not true:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        sys.exit(1)
    print(f"rust-version claims hold for {len(metadata['workspace_members'])} workspace members")


if __name__ == "__main__":
    main()
