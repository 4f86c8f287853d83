#!/usr/bin/env python3
"""Deterministic mixed data set for the holdfast benchmark (stdlib only).

    gen_dataset.py DIR [--scale S] [--seed N]          # generate a fresh data set
    gen_dataset.py DIR --mutate [--round N]            # modify it in place

Layout at --scale 1.0 (about 0.46 GB, plus one sparse file):

    sql/dump.sql          ~200 MB  SQL dump, one INSERT per row (compresses ~3-5x)
    sql/archive_2022.sql   ~25 MB  a second, smaller dump
    small/...             ~20,000 text-ish files of 0.5-8 KB (txt/json/html/ini/csv/log)
                                   in directories 3-4 levels deep, 20-50 files each
    bin/*                 ~100 MB  incompressible random bytes in five files
    dup/*                  ~50 MB  byte-identical copies of sql/archive_2022.sql and
                                   two bin/ files
    sparse/big.img          1 GiB  apparent size, ~1 MiB of data at four offsets
                                   (not scaled, not counted in the 0.46 GB)

--mutate (deterministic for a given data set and --round):
    * sql/dump.sql: about 2% of the rows are rewritten, in a dozen contiguous runs
      inside the middle half of the file; a few rows are deleted and a few new
      rows inserted there too (so later content shifts). Everything else stays
      byte-identical.
    * small/: ~0.7% of files get their content edited, ~0.3% are only touched
      (mtime bumped, content unchanged), and ~0.1% new files are added.

All content comes from random.Random instances seeded from (seed, section name),
so the same arguments give the same bytes (for a given Python version >= 3.9).
"""

import argparse
import json
import os
import re
import shutil
import sys
import time
from random import Random

MiB = 1024 * 1024
GiB = 1024 * MiB

# --------------------------------------------------------------------------
# word lists
# --------------------------------------------------------------------------

WORDS = """
the of and to in is that it was for on are as with his they at be this from have or
by one had not but what all were when we there can an your which their said if do
will each about how up out them then she many some so these would other into has more
her two like him see time could no make than first been its who now people my made
over did down only way find use may water long little very after words called just
where most know get through back much before go good new write our used me man too any
day same right look think also around another came come work three word must because
does part even place well such here take why things help put years different away
again off went old number great tell men say small every found still between name
should home big give air line set own under read last never us left end along while
might next sound below saw something thought both few those always looked show large
often together asked house world going want school important until form food keep
children feet land side without boy once animal life enough took four head above kind
began almost live page got earth need far hand high year mother light country father
let night picture being study second soon story since white ever paper hard near
sentence better best across during today however sure knew try told young sun thing
whole hear example heard several change answer room sea against top turned learn
point city play toward five himself usually money seen car morning body upon family
later turn move face door cut done group true leave color red friends easy order
customer account payment shipping invoice refund delivery product service support
request update status pending complete shipment warehouse return issue ticket
lorem ipsum dolor sit amet consectetur adipiscing elit sed eiusmod tempor incididunt
labore dolore magna aliqua enim minim veniam quis nostrud exercitation ullamco laboris
nisi aliquip commodo consequat duis aute irure reprehenderit voluptate velit esse
cillum fugiat nulla pariatur excepteur sint occaecat cupidatat proident sunt culpa
officia deserunt mollit anim est laborum
""".split()
# Zipf-like word frequencies, as in natural text.
WORD_CW = []
_acc = 0.0
for _i in range(len(WORDS)):
    _acc += 1.0 / (_i + 3) ** 0.9
    WORD_CW.append(_acc)

FIRST = """James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William
Barbara Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel
Nancy Matthew Betty Anthony Margaret Mark Sandra Donald Ashley Steven Kimberly Paul
Emily Andrew Donna Joshua Michelle Kenneth Carol Kevin Amanda Brian Dorothy George
Melissa Timothy Deborah Ronald Stephanie Jason Rebecca Edward Sharon Jeffrey Laura
Ryan Cynthia Jacob Kathleen Gary Amy Nicholas Angela Eric Shirley Jonathan Anna Stephen
Brenda Larry Pamela Justin Emma Scott Nicole Brandon Helen Benjamin Samantha Samuel
Katherine Gregory Christine Alexander Debra Frank Rachel Patrick Carolyn Raymond Janet
Jack Catherine Dennis Maria Jerry Heather Tyler Diane Aaron Ruth Jose Julie Adam Olivia
Nathan Joyce Henry Virginia Zachary Victoria Douglas Kelly Peter Lauren Kyle Christina
Noah Joan Ethan Evelyn Jeremy Judith Walter Megan Christian Andrea Keith Cheryl Roger
Hannah Terry Jacqueline Austin Martha Sean Gloria Gerald Teresa Carl Ann Harold Sara
Dylan Madison Arthur Frances Lawrence Kathryn Jordan Janice Jesse Jean Bryan Abigail
Billy Alice Bruce Judy Gabriel Sophia Joe Grace Logan Denise Alan Amber Juan Doris
Albert Marilyn Willie Danielle Elijah Beverly Wayne Isabella Randy Theresa Vincent
Diana Mason Natalie Roy Brittany Ralph Charlotte Bobby Marie Russell Kayla Bradley
Alexis Philip Lori Eugene""".split()
LAST = """Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez
Hernandez Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez
Thompson White Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King
Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell
Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins
Reyes Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson
Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James
Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers Long Ross
Foster Jimenez Powell Jenkins Perry Russell Sullivan Bell Coleman Butler Henderson
Barnes Gonzales Fisher Vasquez Simmons Romero Jordan Patterson Alexander Hamilton
Graham Reynolds Griffin Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis
Tran Medina Aguilar Stevens Murray Ford Castro Marshall Owens Harrison Fernandez
McDonald Woods Washington Kennedy Wells Vargas Henry Chen Freeman Webb Tucker Guzman
Burns Crawford Olson Simpson Porter Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon
Munoz Hunt Hicks Holmes Palmer Wagner Black Robertson Boyd Rose Stone Salazar Fox
Warren Mills Meyer Rice Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver
Ryan Gardner Payne Grant Dunn Kelley Spencer Hawkins Arnold Pierce Vazquez Hansen
Peters Santos Hart Bradley Knight Elliott Cunningham Duncan Armstrong Hudson Carroll
Lane Riley Andrews Alvarado Ray Delgado Berry Perkins Hoffman Johnston Matthews
Pena Richards Contreras Willis Carpenter Lawrence Sandoval""".split()
DOMAINS = """gmail.com yahoo.com hotmail.com outlook.com example.com example.org mail.com
proton.me icloud.com fastmail.com gmx.de web.de orange.fr yandex.ru qq.com
acme-corp.com globex.net initech.io umbrella.co hooli.xyz""".split()
STREET_NAMES = """Main Oak Pine Maple Cedar Elm Washington Lake Hill Park Walnut
Sunset Lincoln Jackson Church River Highland Willow Meadow Forest Spring Ridge Chestnut
Mill Dogwood Jefferson Cherry Railroad Center Franklin Madison Sycamore Birch Valley
Prospect Broad Grove Bridge Market High Union Water Front Harbor Orchard""".split()
STREET_TYPES = "St Ave Rd Blvd Ln Dr Ct Way Pl Terrace".split()
CITIES = """Springfield Riverside Franklin Greenville Bristol Clinton Fairview Salem
Madison Georgetown Arlington Ashland Burlington Manchester Oxford Dover Hudson Milton
Newport Auburn Dayton Lexington Milford Winchester Kingston Jackson Chester Marion
Portland Columbia Lebanon Hamilton Camden Shelby Troy Cleveland Lancaster Richmond
Berlin Hamburg Munich Lyon Marseille Toulouse Porto Lisbon Seville Valencia Turin
Milan Naples Krakow Gdansk Brno Graz Ghent Utrecht Aarhus Bergen Uppsala Tampere""".split()
COUNTRIES = """US US US US GB DE FR ES IT NL PL PT SE NO DK FI AT BE CZ IE CA AU NZ
JP BR MX IN ZA""".split()
STATUSES = ["active"] * 6 + ["inactive", "suspended", "pending", "closed"]
ORDER_STATUSES = ["delivered"] * 5 + ["shipped", "shipped", "processing", "pending",
                                      "cancelled", "refunded", "returned"]
ADJ = """Premium Classic Deluxe Compact Portable Wireless Smart Organic Vintage Modern
Rustic Ergonomic Heavy-Duty Lightweight Stainless Bamboo Ceramic Leather Cotton
Recycled Waterproof Foldable Adjustable Digital Analog Solar""".split()
NOUN = """Chair Desk Lamp Kettle Blender Backpack Jacket Headphones Keyboard Mouse
Monitor Speaker Notebook Pen Mug Bottle Tent Blanket Pillow Towel Watch Wallet Umbrella
Bicycle Helmet Drill Hammer Saw Router Camera Tripod Charger Cable Adapter Printer
Scanner Toaster Grill Pan Knife Spoon Fork Plate Bowl Vase Rug Shelf Cabinet""".split()
CURRENCIES = ["USD"] * 5 + ["EUR"] * 3 + ["GBP", "JPY", "CAD", "AUD"]
LEVELS = ["INFO"] * 12 + ["DEBUG"] * 5 + ["WARN"] * 2 + ["ERROR"]
SOURCES = """auth api.gateway billing scheduler mailer worker.1 worker.2 worker.3 cron
search indexer payments inventory shipping webhooks""".split()
EXTS = ["txt", "md", "json", "json", "html", "ini", "conf", "csv", "log", "yaml"]

EPOCH_2019 = 1546300800  # 2019-01-01T00:00:00Z
_DAYS = []


def _days_table():
    """Precomputed 'YYYY-MM-DD' strings for 2019-01-01 + n days (fast timestamps)."""
    if not _DAYS:
        for d in range(0, 365 * 8):
            _DAYS.append(time.strftime("%Y-%m-%d", time.gmtime(EPOCH_2019 + d * 86400)))
    return _DAYS


def ts(sec):
    """'YYYY-MM-DD HH:MM:SS' for EPOCH_2019 + sec (0 <= sec < 8 years)."""
    days = _days_table()
    d, rem = divmod(int(sec), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{days[d % len(days)]} {h:02d}:{m:02d}:{s:02d}"


def words(r, n):
    return " ".join(r.choices(WORDS, cum_weights=WORD_CW, k=n))


def sentence(r, lo=5, hi=16):
    s = words(r, r.randint(lo, hi))
    return s[0].upper() + s[1:] + "."


def sentences(r, lo, hi):
    return " ".join(sentence(r) for _ in range(r.randint(lo, hi)))


def rng(seed, name):
    # str seeds are hashed with SHA-512 by random.Random: stable across runs.
    return Random(f"holdfast-bench:{seed}:{name}")


def log(quiet, msg):
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# SQL dump
# --------------------------------------------------------------------------

SCHEMA = {
    "customers": """CREATE TABLE `customers` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `first_name` varchar(64) NOT NULL,
  `last_name` varchar(64) NOT NULL,
  `email` varchar(255) NOT NULL,
  `phone` varchar(32) DEFAULT NULL,
  `street` varchar(255) DEFAULT NULL,
  `city` varchar(128) DEFAULT NULL,
  `postal_code` varchar(16) DEFAULT NULL,
  `country` char(2) NOT NULL,
  `created_at` datetime NOT NULL,
  `updated_at` datetime NOT NULL,
  `balance` decimal(12,2) NOT NULL DEFAULT '0.00',
  `status` varchar(16) NOT NULL,
  `notes` text,
  PRIMARY KEY (`id`),
  UNIQUE KEY `email` (`email`),
  KEY `idx_country_status` (`country`,`status`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;""",
    "orders": """CREATE TABLE `orders` (
  `id` bigint(20) NOT NULL AUTO_INCREMENT,
  `customer_id` int(11) NOT NULL,
  `product` varchar(255) NOT NULL,
  `sku` varchar(32) NOT NULL,
  `quantity` int(11) NOT NULL,
  `unit_price` decimal(10,2) NOT NULL,
  `currency` char(3) NOT NULL,
  `status` varchar(16) NOT NULL,
  `created_at` datetime NOT NULL,
  `shipped_at` datetime DEFAULT NULL,
  `comment` text,
  PRIMARY KEY (`id`),
  KEY `fk_customer` (`customer_id`),
  CONSTRAINT `fk_customer` FOREIGN KEY (`customer_id`) REFERENCES `customers` (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;""",
    "events": """CREATE TABLE `events` (
  `id` bigint(20) NOT NULL AUTO_INCREMENT,
  `ts` datetime(3) NOT NULL,
  `level` varchar(8) NOT NULL,
  `source` varchar(64) NOT NULL,
  `customer_id` int(11) DEFAULT NULL,
  `message` text NOT NULL,
  PRIMARY KEY (`id`),
  KEY `idx_ts` (`ts`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;""",
}
# Fraction of the dump's bytes per table, in dump order.
TABLE_SHARE = [("customers", 0.30), ("orders", 0.45), ("events", 0.25)]


def row_customers(r, i):
    fn, ln = r.choice(FIRST), r.choice(LAST)
    email = f"{fn.lower()}.{ln.lower()}{r.randint(1, 9999)}@{r.choice(DOMAINS)}"
    phone = f"'+1-{r.randint(200, 999)}-{r.randint(200, 999)}-{r.randint(1000, 9999)}'" \
        if r.random() < 0.8 else "NULL"
    street = f"{r.randint(1, 9999)} {r.choice(STREET_NAMES)} {r.choice(STREET_TYPES)}"
    created = i * 97 + r.randint(0, 5000)
    updated = created + r.randint(0, 86400 * 300)
    notes = f"'{sentences(r, 1, 3)}'" if r.random() < 0.5 else "NULL"
    return (f"({i},'{fn}','{ln}','{email}',{phone},'{street}','{r.choice(CITIES)}',"
            f"'{r.randint(10000, 99999)}','{r.choice(COUNTRIES)}','{ts(created)}',"
            f"'{ts(updated)}',{r.randint(0, 2500000) / 100:.2f},'{r.choice(STATUSES)}',"
            f"{notes})")


def row_orders(r, i):
    created = i * 41 + r.randint(0, 3000)
    st = r.choice(ORDER_STATUSES)
    shipped = f"'{ts(created + r.randint(3600, 86400 * 6))}'" \
        if st in ("shipped", "delivered", "returned") else "NULL"
    comment = f"'{sentence(r)}'" if r.random() < 0.35 else "NULL"
    return (f"({i},{r.randint(1, 250000)},'{r.choice(ADJ)} {r.choice(NOUN)}',"
            f"'SKU-{r.randint(100000, 999999)}',{r.randint(1, 12)},"
            f"{r.randint(199, 99999) / 100:.2f},'{r.choice(CURRENCIES)}','{st}',"
            f"'{ts(created)}',{shipped},{comment})")


def row_events(r, i):
    t = i * 7 + r.randint(0, 6)
    cust = str(r.randint(1, 250000)) if r.random() < 0.7 else "NULL"
    src = r.choice(SOURCES)
    lvl = r.choice(LEVELS)
    msg = f"{src}: {words(r, r.randint(4, 14))} (request_id={r.getrandbits(64):016x}, " \
          f"took {r.randint(1, 2500)}ms)"
    return f"({i},'{ts(t)}.{r.randint(0, 999):03d}','{lvl}','{src}',{cust},'{msg}')"


ROW_FN = {"customers": row_customers, "orders": row_orders, "events": row_events}


def insert_line(table, row):
    return f"INSERT INTO `{table}` VALUES {row};\n"


def write_sql_dump(path, target_bytes, r, dbname):
    with open(path, "w", encoding="ascii", buffering=4 * MiB) as f:
        f.write(f"-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n--\n"
                f"-- Host: db-primary.internal    Database: {dbname}\n"
                "-- ------------------------------------------------------\n"
                "-- Server version\t8.0.36\n\n"
                "/*!40101 SET NAMES utf8mb4 */;\n/*!40103 SET TIME_ZONE='+00:00' */;\n"
                "/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */;\n"
                "/*!40014 SET @OLD_FOREIGN_KEY_CHECKS=@@FOREIGN_KEY_CHECKS, "
                "FOREIGN_KEY_CHECKS=0 */;\n\n")
        written = 0
        for table, share in TABLE_SHARE:
            f.write(f"--\n-- Table structure for table `{table}`\n--\n\n"
                    f"DROP TABLE IF EXISTS `{table}`;\n{SCHEMA[table]}\n\n"
                    f"--\n-- Dumping data for table `{table}`\n--\n\n"
                    f"LOCK TABLES `{table}` WRITE;\n"
                    f"/*!40000 ALTER TABLE `{table}` DISABLE KEYS */;\n")
            fn = ROW_FN[table]
            limit = written + int(target_bytes * share)
            i = 1
            while written < limit:
                batch = [insert_line(table, fn(r, i + k)) for k in range(500)]
                i += 500
                chunk = "".join(batch)
                f.write(chunk)
                written += len(chunk)
            f.write(f"/*!40000 ALTER TABLE `{table}` ENABLE KEYS */;\nUNLOCK TABLES;\n\n")
        f.write("/*!40014 SET FOREIGN_KEY_CHECKS=@OLD_FOREIGN_KEY_CHECKS */;\n"
                "/*!40014 SET UNIQUE_CHECKS=@OLD_UNIQUE_CHECKS */;\n\n"
                "-- Dump completed on 2024-05-14  3:12:07\n")


# --------------------------------------------------------------------------
# small files
# --------------------------------------------------------------------------

def small_content(r, ext, size):
    parts, n = [], 0
    if ext == "json":
        obj = {"name": words(r, 2).replace(" ", "-"), "version":
               f"{r.randint(0, 9)}.{r.randint(0, 30)}.{r.randint(0, 99)}",
               "enabled": r.random() < 0.7, "settings": {}, "items": []}
        for k in range(r.randint(3, 10)):
            obj["settings"][words(r, 1) + f"_{k}"] = r.choice(
                [r.randint(0, 10000), words(r, r.randint(1, 4)), r.random() < 0.5])
        text = json.dumps(obj, indent=2)
        while len(text) < size:
            obj["items"].append({"id": r.randint(1, 10 ** 6), "label": words(r, 3),
                                 "owner": f"{r.choice(FIRST)} {r.choice(LAST)}",
                                 "created": ts(r.randint(0, 86400 * 1500)),
                                 "tags": words(r, r.randint(1, 4)).split()})
            text = json.dumps(obj, indent=2)
        return text[:size] + "\n"
    if ext == "html":
        parts.append(f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                     f"<title>{sentence(r, 2, 6)}</title>\n"
                     "<link rel=\"stylesheet\" href=\"/static/site.css\">\n</head>\n<body>\n"
                     f"<h1>{sentence(r, 2, 5)}</h1>\n")
        n = sum(map(len, parts))
        while n < size:
            p = (f"<div class=\"section\">\n  <h2>{sentence(r, 2, 5)}</h2>\n"
                 f"  <p>{sentences(r, 2, 5)}</p>\n"
                 f"  <a href=\"/{words(r, 2).replace(' ', '/')}.html\">{words(r, 2)}</a>\n</div>\n")
            parts.append(p)
            n += len(p)
        parts.append("</body>\n</html>\n")
    elif ext in ("ini", "conf", "yaml"):
        while n < size:
            sec = words(r, 1)
            p = f"[{sec}]\n" if ext != "yaml" else f"{sec}:\n"
            for _ in range(r.randint(3, 9)):
                key = words(r, 2).replace(" ", "_")
                val = r.choice([str(r.randint(0, 65535)), words(r, r.randint(1, 3)),
                                "true", "false", f"/var/lib/{words(r, 1)}/{words(r, 1)}"])
                p += f"{key} = {val}\n" if ext != "yaml" else f"  {key}: {val}\n"
            p += "\n"
            parts.append(p)
            n += len(p)
    elif ext == "csv":
        parts.append("id,name,email,city,amount,created_at\n")
        while n < size:
            fn, ln = r.choice(FIRST), r.choice(LAST)
            p = (f"{r.randint(1, 10 ** 6)},{fn} {ln},{fn.lower()}@{r.choice(DOMAINS)},"
                 f"{r.choice(CITIES)},{r.randint(0, 10 ** 6) / 100:.2f},"
                 f"{ts(r.randint(0, 86400 * 1500))}\n")
            parts.append(p)
            n += len(p)
    elif ext == "log":
        t = r.randint(0, 86400 * 1500)
        while n < size:
            t += r.randint(0, 30)
            p = f"{ts(t)} {r.choice(LEVELS):5} [{r.choice(SOURCES)}] {sentence(r, 4, 14)}\n"
            parts.append(p)
            n += len(p)
    else:  # txt, md
        if ext == "md":
            parts.append(f"# {sentence(r, 2, 6)}\n\n")
        while n < size:
            p = sentences(r, 2, 7) + "\n\n"
            parts.append(p)
            n += len(p)
    return "".join(parts)[:size]


def write_small(root, count, r, quiet):
    total, made, leaf = 0, 0, 0
    while made < count:
        # small/<a>/<b>/<c>[/<d>]: depth 3 or 4, 20-50 files per directory
        parts = [f"{WORDS[(leaf // 100) % len(WORDS)]}-{leaf // 100:02d}",
                 f"{WORDS[(leaf // 10 * 7) % len(WORDS)]}-{(leaf // 10) % 10}",
                 f"{WORDS[(leaf * 13) % len(WORDS)]}-{leaf % 10}"]
        if leaf % 3 == 0:
            parts.append(f"sub-{r.randint(0, 99):02d}")
        d = os.path.join(root, *parts)
        os.makedirs(d, exist_ok=True)
        for k in range(min(r.randint(20, 50), count - made)):
            ext = r.choice(EXTS)
            size = int(min(8192, max(512, r.lognormvariate(8.1, 0.6))))
            data = small_content(r, ext, size)
            with open(os.path.join(d, f"{words(r, 1)}_{k:03d}.{ext}"), "w") as f:
                f.write(data)
            total += len(data)
            made += 1
        leaf += 1
    log(quiet, f"  small/: {made} files in {leaf} leaf dirs, {total / MiB:.1f} MiB")
    return total


# --------------------------------------------------------------------------
# binaries, duplicates, sparse
# --------------------------------------------------------------------------

BIN_FILES = [("video.mp4", 0.40), ("photos.tar.xz", 0.25), ("backup.tar.zst", 0.20),
             ("model.bin", 0.10), ("firmware.img", 0.05)]


def write_random(path, size, r):
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 8 * MiB)
            f.write(r.randbytes(n))
            left -= n


def write_sparse(path, size, r):
    piece = 256 * 1024
    offsets = [0, (size // 3) & ~0xFFFF, (2 * size // 3) & ~0xFFFF, size - piece]
    with open(path, "wb") as f:
        for off in offsets:
            f.seek(off)
            f.write(r.randbytes(piece))
        f.truncate(size)


def generate(root, scale, seed, sparse_size, quiet):
    t0 = time.time()
    for d in ("sql", "small", "bin", "sparse", "dup"):
        os.makedirs(os.path.join(root, d), exist_ok=True)

    dump_bytes = int(200 * MiB * scale)
    log(quiet, f"  sql/dump.sql ({dump_bytes / MiB:.0f} MiB target)")
    write_sql_dump(os.path.join(root, "sql", "dump.sql"), dump_bytes, rng(seed, "dump"), "shop")
    write_sql_dump(os.path.join(root, "sql", "archive_2022.sql"), int(25 * MiB * scale),
                   rng(seed, "archive"), "shop_archive_2022")

    write_small(os.path.join(root, "small"), max(20, int(20000 * scale)), rng(seed, "small"),
                quiet)

    r = rng(seed, "bin")
    for name, share in BIN_FILES:
        write_random(os.path.join(root, "bin", name), int(100 * MiB * scale * share), r)

    # dup/: byte-identical copies, 25 + 20 + 5 = ~50 MB at scale 1
    shutil.copyfile(os.path.join(root, "sql", "archive_2022.sql"),
                    os.path.join(root, "dup", "archive_2022.sql.copy"))
    shutil.copyfile(os.path.join(root, "bin", "backup.tar.zst"),
                    os.path.join(root, "dup", "backup-copy.tar.zst"))
    shutil.copyfile(os.path.join(root, "bin", "firmware.img"),
                    os.path.join(root, "dup", "firmware-old.img"))

    write_sparse(os.path.join(root, "sparse", "big.img"), sparse_size, rng(seed, "sparse"))
    log(quiet, f"generated {root} in {time.time() - t0:.1f}s")


# --------------------------------------------------------------------------
# mutation
# --------------------------------------------------------------------------

INSERT_RE = re.compile(rb"^INSERT INTO `(\w+)` VALUES \((\d+),")


def mutate_dump(path, r, quiet):
    with open(path, "rb") as f:
        nlines = sum(buf.count(b"\n") for buf in iter(lambda: f.read(4 * MiB), b""))
    lo, hi = nlines // 4, 3 * nlines // 4
    n_mod = max(1, nlines // 50)                  # ~2% of the rows
    runs = 12
    run_len = max(1, n_mod // runs)
    span = (hi - lo) // runs
    plan = {}
    for k in range(runs):                         # one run per slice of the middle half
        start = lo + k * span + r.randint(0, max(0, span - run_len))
        for i in range(start, start + run_len):
            plan[i] = "mod"
    for _ in range(3):                            # a few deletions and insertions
        start = r.randint(lo, hi)
        for i in range(start, start + max(1, nlines // 5000)):
            plan.setdefault(i, "del")
        plan.setdefault(r.randint(lo, hi), "ins")

    new_id = 50_000_000
    counts = {"mod": 0, "del": 0, "ins": 0}
    tmp = path + ".mutate.tmp"
    with open(path, "rb") as fin, open(tmp, "wb", buffering=4 * MiB) as fout:
        for i, line in enumerate(fin):
            action = plan.get(i)
            m = INSERT_RE.match(line) if action else None
            if m is None:
                fout.write(line)
                continue
            table = m.group(1).decode()
            if action == "mod":
                row = ROW_FN[table](r, int(m.group(2)))
                fout.write(insert_line(table, row).encode())
            elif action == "ins":
                fout.write(line)
                for _ in range(r.randint(5, 40)):
                    new_id += 1
                    fout.write(insert_line(table, ROW_FN[table](r, new_id)).encode())
                    counts["ins"] += 1
                continue
            counts[action] += 1
    shutil.copystat(path, tmp)
    os.replace(tmp, path)
    log(quiet, f"  sql/dump.sql: {nlines} lines, modified {counts['mod']} rows, "
               f"deleted {counts['del']}, inserted {counts['ins']}")


def mutate_small(root, r, quiet):
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files.extend(os.path.join(dirpath, fn) for fn in sorted(filenames))
    n = len(files)
    picked = r.sample(files, max(2, n // 100))    # ~1%
    now = time.time()
    n_touch = n_edit = 0
    for k, path in enumerate(picked):
        if k % 10 < 3:                            # 30%: touch only
            os.utime(path, (now, now))
            n_touch += 1
            continue
        with open(path) as f:                     # 70%: edit a line in the middle, append one
            lines = f.read().split("\n")
        mid = len(lines) // 2
        lines[mid] = sentence(r) + " " + lines[mid]
        lines.append(f"# edited {r.getrandbits(32):08x}")
        with open(path, "w") as f:
            f.write("\n".join(lines))
        n_edit += 1
    dirs = sorted({os.path.dirname(p) for p in files})
    n_new = max(5, n // 1000)
    newdir = os.path.join(root, "new-since-first-backup")
    os.makedirs(newdir, exist_ok=True)
    for k in range(n_new):
        d = newdir if k % 2 else r.choice(dirs)
        ext = r.choice(EXTS)
        size = r.randint(512, 8192)
        with open(os.path.join(d, f"new_{k:04d}_{words(r, 1)}.{ext}"), "w") as f:
            f.write(small_content(r, ext, size))
    log(quiet, f"  small/: {n} files, edited {n_edit}, touched {n_touch}, added {n_new}")


def mutate(root, seed, rnd, quiet):
    t0 = time.time()
    for need in ("sql/dump.sql", "small"):
        if not os.path.exists(os.path.join(root, need)):
            sys.exit(f"gen_dataset: {root}/{need} missing; generate the data set first")
    mutate_dump(os.path.join(root, "sql", "dump.sql"), rng(seed, f"mutate-sql-{rnd}"), quiet)
    mutate_small(os.path.join(root, "small"), rng(seed, f"mutate-small-{rnd}"), quiet)
    log(quiet, f"mutated {root} in {time.time() - t0:.1f}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="target directory")
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = ~0.5 GB (default)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sparse-size", type=int, default=GiB,
                    help="apparent size of sparse/big.img in bytes (default 1 GiB, not scaled)")
    ap.add_argument("--mutate", action="store_true", help="modify an existing data set in place")
    ap.add_argument("--round", type=int, default=1, help="mutation round (seeds the mutation)")
    ap.add_argument("--force", action="store_true", help="generate into a non-empty directory")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args()

    if a.mutate:
        mutate(a.dir, a.seed, a.round, a.quiet)
        return
    if a.scale <= 0:
        sys.exit("gen_dataset: --scale must be > 0")
    if os.path.isdir(a.dir) and os.listdir(a.dir) and not a.force:
        sys.exit(f"gen_dataset: {a.dir} is not empty (use --force to write into it anyway)")
    generate(a.dir, a.scale, a.seed, a.sparse_size, a.quiet)


if __name__ == "__main__":
    main()
