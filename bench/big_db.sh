#!/usr/bin/env bash
# Big-database benchmark: a pgbench database dumped and backed up, then
# loaded back into a new database, by holdfast (plain SQL through the spool;
# `format = "custom"` reloaded with pg_restore --jobs; plain with
# `stream = true`, through a pipe, no spool) and the way a
# borgmatic user does it (`pg_dump | borg create --stdin-name`, then
# `borg extract --stdout | psql`), in one run. `pg_dump > /dev/null` alone
# is the floor for the dump. A second backup follows a minute of pgbench
# writes (--churn), to show what a day's changes add.
#
#   bench/big_db.sh [--scale 150] [--churn 60] [--work /var/tmp/hf-bigdb]
#
# PostgreSQL from $PGHOST/$PGPORT/$PGUSER (default 127.0.0.1:5432 postgres).
# The table is printed on stdout (Markdown); logs are in WORK/logs.
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(dirname "$SCRIPT_DIR")
SCALE=150 CHURN=60 WORK=/var/tmp/hf-bigdb
while [[ $# -gt 0 ]]; do
    case $1 in
        --scale) SCALE=$2; shift 2 ;;
        --churn) CHURN=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
HF=${HOLDFAST_BIN:-$REPO_ROOT/target/release/holdfast}
[[ -x $HF ]] || (cd "$REPO_ROOT" && cargo build --release --locked)
PASS=holdfast-bench-not-a-secret
export HOLDFAST_PASSPHRASE=$PASS BORG_PASSPHRASE=$PASS BORG_BASE_DIR=$WORK/borg-base HOLDFAST_CACHE_DIR=$WORK/cache
DB=hf_bigdb
rm -rf "$WORK"
mkdir -p "$WORK/logs"
LOGS=$WORK/logs

secs() { # COMMAND... -> seconds it took (its output to the log)
    local s e
    s=$(date +%s.%N)
    "$@" >>"$LOGS/steps.log" 2>&1
    e=$(date +%s.%N)
    printf '%.1f' "$(echo "$e - $s" | bc)"
}
size_mb() { du -sm "$1" | cut -f1; }

echo "creating $DB at pgbench scale $SCALE" >&2
dropdb --if-exists "$DB"
createdb "$DB"
pgbench -q -i -s "$SCALE" "$DB" >"$LOGS/pgbench-init.log" 2>&1
DB_MB=$(psql -XAtc "SELECT pg_database_size('$DB') / 1048576" postgres)
FLOOR=$(secs sh -c "pg_dump --format=plain $DB > /dev/null")

# holdfast jobs: one per format, each with its own repository and spool.
config() { # NAME FORMAT STREAM
    cat >"$WORK/$1.toml" <<EOF
[repositories.r]
path = "$WORK/$1-repo"
[jobs.$1]
spool = "$WORK/$1-spool"
state_dir = "$WORK/$1-state"
repositories = ["r"]
[[jobs.$1.databases]]
kind = "postgresql"
name = "$DB"
host = "$PGHOST"
port = $PGPORT
user = "$PGUSER"
format = "$2"
stream = $3
EOF
    "$HF" --config "$WORK/$1.toml" --repo r init >>"$LOGS/steps.log" 2>&1
}
# Peak bytes in SPOOL while COMMAND runs.
spool_peak() { # SPOOL COMMAND...
    local spool=$1 peak=0 now pid
    shift
    "$@" >>"$LOGS/steps.log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        now=$(du -sb "$spool" 2>/dev/null | cut -f1 || echo 0)
        ((now > peak)) && peak=$now
        sleep 0.2
    done
    wait "$pid"
    echo $((peak / 1048576))
}

declare -A BACKUP SECOND RESTORE STORED ADDED PEAK
for fmt in plain custom stream; do
    job=hf_$fmt
    case $fmt in
        stream) config "$job" plain true ;;
        *) config "$job" "$fmt" false ;;
    esac
    s=$(date +%s.%N)
    PEAK[$fmt]=$(spool_peak "$WORK/$job-spool" "$HF" --config "$WORK/$job.toml" run "$job")
    BACKUP[$fmt]=$(printf '%.1f' "$(echo "$(date +%s.%N) - $s" | bc)")
    STORED[$fmt]=$(size_mb "$WORK/$job-repo")
    RESTORE[$fmt]=$(secs "$HF" --config "$WORK/$job.toml" restore "$job" --database "$DB" --into "${DB}_${fmt}_r")
    dropdb --if-exists "${DB}_${fmt}_r"
done
borg init -e repokey "$WORK/borg-repo" >>"$LOGS/steps.log" 2>&1
BORG_BACKUP=$(secs sh -c "pg_dump --format=plain $DB | borg create --compression zstd,3 --stdin-name $DB.sql $WORK/borg-repo::one -")
BORG_STORED=$(size_mb "$WORK/borg-repo")
createdb "${DB}_borg_r"
BORG_RESTORE=$(secs sh -c "borg extract --stdout $WORK/borg-repo::one | psql -X -q -v ON_ERROR_STOP=1 --single-transaction ${DB}_borg_r")
dropdb --if-exists "${DB}_borg_r"

echo "pgbench writes for ${CHURN}s" >&2
pgbench -c 2 -T "$CHURN" "$DB" >"$LOGS/pgbench-run.log" 2>&1
for fmt in plain custom stream; do
    job=hf_$fmt
    before=$(size_mb "$WORK/$job-repo")
    SECOND[$fmt]=$(secs "$HF" --config "$WORK/$job.toml" run "$job")
    ADDED[$fmt]=$(($(size_mb "$WORK/$job-repo") - before))
done
before=$(size_mb "$WORK/borg-repo")
BORG_SECOND=$(secs sh -c "pg_dump --format=plain $DB | borg create --compression zstd,3 --stdin-name $DB.sql $WORK/borg-repo::two -")
BORG_ADDED=$(($(size_mb "$WORK/borg-repo") - before))
dropdb --if-exists "$DB"

echo
echo "pgbench scale $SCALE: database ${DB_MB} MiB; \`pg_dump > /dev/null\` ${FLOOR} s; $(nproc) cores"
echo
echo "| tool | dump + backup s | peak spool MiB | stored MiB | load s | 2nd backup s | 2nd adds MiB |"
echo "|---|---|---|---|---|---|---|"
echo "| holdfast, plain (psql) | ${BACKUP[plain]} | ${PEAK[plain]} | ${STORED[plain]} | ${RESTORE[plain]} | ${SECOND[plain]} | ${ADDED[plain]} |"
echo "| holdfast, custom (pg_restore --jobs) | ${BACKUP[custom]} | ${PEAK[custom]} | ${STORED[custom]} | ${RESTORE[custom]} | ${SECOND[custom]} | ${ADDED[custom]} |"
echo "| holdfast, plain, stream = true | ${BACKUP[stream]} | ${PEAK[stream]} | ${STORED[stream]} | ${RESTORE[stream]} | ${SECOND[stream]} | ${ADDED[stream]} |"
echo "| pg_dump \\| borg create --stdin | ${BORG_BACKUP} | 0 | ${BORG_STORED} | ${BORG_RESTORE} | ${BORG_SECOND} | ${BORG_ADDED} |"
