#!/usr/bin/env python3
"""Long histories: how `snapshots`, an unchanged backup (its parent lookup)
and `prune --dry-run` grow from a repository of 10 snapshots to one of N.

    bench/long_history.py [--snapshots 1000] [--work /var/tmp/hf-history] [--runs 5] [--daily]
                          [--compare OTHER_BINARY]

Each snapshot is a backup of a tiny tree with one file changed, so the
history, not the data, is what grows. Times are the best of --runs runs
(wall clock, seconds); the ratio column is N snapshots over 10. A key
unlock (argon2) is in every figure: it is the floor. The repositories are
local, so the snapshot cache (buckets only) plays no part.

--daily makes the histories look like a user's: one real prune merges the
index files every backup left (as a daily prune does), a second one with
--grace 0s deletes the packs the first marked (as the next day's prune
does: the default grace is an hour), and the snapshot files' times are set
one day apart, newest now (the backups are made seconds apart, so without
it a parent lookup must read every file).

--compare times a second holdfast binary (an older build, say) on the same
repositories in the same rounds, so the two tables share the machine's mood.
"""

import argparse
import os
import shutil
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def holdfast_bin():
    return os.environ.get("HOLDFAST_BIN", os.path.join(HERE, "..", "target", "release", "holdfast"))


def run(args, env, binary=None):
    subprocess.run([binary or holdfast_bin()] + args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def timed(args, env, binary):
    start = time.perf_counter()
    run(args, env, binary)
    return time.perf_counter() - start


def make_history(work, name, count, env):
    repo = os.path.join(work, name)
    src = os.path.join(work, "src-" + name)
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    with open(os.path.join(src, "a"), "w") as f:
        f.write("a file that never changes\n")
    run(["--repo", repo, "init"], env)
    for i in range(count):
        with open(os.path.join(src, "b"), "w") as f:
            f.write(f"version {i}\n")
        run(["--repo", repo, "backup", src], env)
    return repo, src


def as_daily(repo, env):
    """Merge the index files (a real prune that forgets nothing) and space
    the snapshot files' modification times a day apart, keeping their order."""
    run(["--repo", repo, "prune", "--keep-last", "100000"], env)
    run(["--repo", repo, "prune", "--keep-last", "100000", "--grace", "0s"], env)
    folder = os.path.join(repo, "snapshots")
    files = sorted(os.listdir(folder), key=lambda f: os.stat(os.path.join(folder, f)).st_mtime, reverse=True)
    now = time.time()
    for age, name in enumerate(files):
        t = now - age * 86400
        os.utime(os.path.join(folder, name), (t, t))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--snapshots", type=int, default=1000)
    p.add_argument("--work", default="/var/tmp/hf-history")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--daily", action="store_true", help="merged index, snapshot files a day apart")
    p.add_argument("--compare", help="a second holdfast binary, timed in the same rounds")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    env = dict(os.environ, HOLDFAST_PASSPHRASE="bench", HOLDFAST_NEW_PASSPHRASE="bench")
    started = time.perf_counter()
    small = make_history(a.work, "h10", 10, env)
    large = make_history(a.work, f"h{a.snapshots}", a.snapshots, env)
    print(f"made {a.snapshots + 10} snapshots in {time.perf_counter() - started:.0f} s")
    if a.daily:
        for repo, _ in (small, large):
            as_daily(repo, env)
    steps = [
        ("snapshots", lambda repo, src: ["--repo", repo, "snapshots"]),
        ("backup (unchanged)", lambda repo, src: ["--repo", repo, "backup", src]),
        ("prune --dry-run", lambda repo, src: ["--repo", repo, "prune", "--keep-last", "100000", "--dry-run"]),
    ]
    n = a.snapshots
    binaries = [holdfast_bin()] + ([a.compare] if a.compare else [])
    # Best of --runs, the binaries and sizes taking turns within each round.
    best = {}
    for _ in range(a.runs):
        for label, args in steps:
            for binary in binaries:
                for size, (repo, src) in (("10", small), ("n", large)):
                    t = timed(args(repo, src), env, binary)
                    key = (label, binary, size)
                    best[key] = min(best.get(key, t), t)
    print("(a local repository: the snapshot cache serves only repositories in a bucket)")
    for binary in binaries:
        print(f"\n{binary}\n")
        print(f"| step | 10 snapshots s | {n} snapshots s | ratio |")
        print("|---|---|---|---|")
        for label, _ in steps:
            t10, tn = best[(label, binary, "10")], best[(label, binary, "n")]
            print(f"| {label} | {t10:.3f} | {tn:.3f} | {tn / t10:.2f} |")


if __name__ == "__main__":
    main()
