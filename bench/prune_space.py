#!/usr/bin/env python3
"""Space coming back: back up ROUNDS states of a tree in which a share of the
files change each round, forget the older half, prune, and compare the
repository with a fresh backup of the states that remain.

    bench/prune_space.py [--files 2000] [--min-kib 8 --max-kib 64] [--rounds 10] [--change 0.1]
                         [--text] [--tools holdfast,restic]

Files hold random bytes (nothing to compress), or with --text words from a
small vocabulary (compressible, like mail, logs or source code).

holdfast prunes twice with `--grace 0s` (the first repacks and marks, the
second deletes); restic prunes once (`--max-unused 5%`, its default). The
table gives each repository's size after the backups, after pruning, and the
size of a fresh repository holding only the remaining states, with the ratio
pruned / fresh (the target is <= 1.1) and the prune time.
"""

import argparse
import os
import random
import shutil
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HOLDFAST = os.environ.get("HOLDFAST_BIN", os.path.join(HERE, "..", "target", "release", "holdfast"))


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


WORDS = [w.encode() for w in (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write"
).split()]


def content(seed, size, text):
    rng = random.Random(seed)
    if not text:
        return rng.randbytes(size)
    out = b" ".join(rng.choices(WORDS, k=size // 3))
    return out[:size]


def write_state(src, files, rounds_done, change, sizes, text, seed=1):
    """The tree as it is after `rounds_done` rounds (deterministic)."""
    version = [0] * files
    rng = random.Random(seed)
    for r in range(1, rounds_done + 1):
        for f in rng.sample(range(files), int(files * change)):
            version[f] = r
    for f in range(files):
        d = os.path.join(src, f"d{f // 100:03}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"f{f:05}")
        lo, hi = sizes
        data = content(f * 1_000_003 + version[f], lo + (f * 7919) % (hi - lo), text)
        try:
            with open(path, "rb") as old:
                if old.read() == data:
                    continue
        except FileNotFoundError:
            pass
        with open(path, "wb") as out:
            out.write(data)


def sh(args, env):
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Holdfast:
    name = "holdfast"

    def init(self, repo, env):
        sh([HOLDFAST, "--repo", repo, "init"], env)

    def backup(self, repo, src, env):
        sh([HOLDFAST, "--repo", repo, "backup", src], env)

    def prune(self, repo, keep, env):
        for _ in range(2):
            sh([HOLDFAST, "--repo", repo, "prune", "--keep-last", str(keep), "--grace", "0s"], env)


class Restic:
    name = "restic"

    def init(self, repo, env):
        sh(["restic", "-r", repo, "init"], env)

    def backup(self, repo, src, env):
        sh(["restic", "-r", repo, "backup", "--compression", "auto", src], env)

    def prune(self, repo, keep, env):
        sh(["restic", "-r", repo, "forget", "--keep-last", str(keep), "--prune"], env)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--change", type=float, default=0.1)
    p.add_argument("--min-kib", type=int, default=8)
    p.add_argument("--max-kib", type=int, default=64)
    p.add_argument("--text", action="store_true", help="compressible files instead of random bytes")
    p.add_argument("--tools", default="holdfast,restic")
    p.add_argument("--work", default="/var/tmp/hf-prune")
    a = p.parse_args()
    env = dict(os.environ, HOLDFAST_PASSPHRASE="bench", RESTIC_PASSWORD="bench", HOLDFAST_NO_CACHE="1")
    tools = {"holdfast": Holdfast(), "restic": Restic()}
    keep = a.rounds // 2
    kind = "text" if a.text else "random"
    print(f"{a.files} {kind} files of {a.min_kib}-{a.max_kib} KiB, {a.rounds} rounds changing {a.change:.0%} each, the newest {keep} kept")
    print("| tool | after backups MB | after prune MB | fresh copy MB | pruned / fresh | prune s |")
    print("|---|---|---|---|---|---|")
    for name in a.tools.split(","):
        tool = tools[name]
        work = os.path.join(a.work, name)
        shutil.rmtree(work, ignore_errors=True)
        src = os.path.join(work, "src")
        full, fresh = os.path.join(work, "full"), os.path.join(work, "fresh")
        tool.init(full, env)
        tool.init(fresh, env)
        for r in range(a.rounds):
            write_state(src, a.files, r, a.change, (a.min_kib * 1024, a.max_kib * 1024), a.text)
            tool.backup(full, src, env)
            if r >= a.rounds - keep:
                tool.backup(fresh, src, env)
        before = du(full)
        start = time.perf_counter()
        tool.prune(full, keep, env)
        took = time.perf_counter() - start
        after, fresh_size = du(full), du(fresh)
        mb = 1e6
        print(
            f"| {name} | {before / mb:.1f} | {after / mb:.1f} | {fresh_size / mb:.1f} | "
            f"{after / fresh_size:.3f} | {took:.2f} |"
        )


if __name__ == "__main__":
    main()
