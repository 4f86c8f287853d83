#!/usr/bin/env bash
# Runs every holdfast test on a fresh machine: installs and starts what the
# tests need when it is missing (PostgreSQL and MariaDB from Debian's
# packages, Garage from crates.io), then runs the whole suite. CI calls
# exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql postgresql-client)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server mariadb-client)
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The whole-system tests compare with the system's own tools.
command -v getfacl >/dev/null 2>&1 || need_apt+=(acl)
command -v getfattr >/dev/null 2>&1 || need_apt+=(attr)
command -v setcap >/dev/null 2>&1 || [ -x /usr/sbin/setcap ] || need_apt+=(libcap2-bin)
command -v chattr >/dev/null 2>&1 || [ -x /usr/bin/chattr ] || need_apt+=(e2fsprogs)
command -v script >/dev/null 2>&1 || need_apt+=(bsdutils)
command -v setpriv >/dev/null 2>&1 || need_apt+=(util-linux)
# `holdfast mount` is tested over the kernel's FUSE (/dev/fuse); fuse3 brings
# fusermount3 for mounts by users other than root.
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
command -v diff >/dev/null 2>&1 || need_apt+=(diffutils)
# `ssh://` repositories are tested against a real sshd on a loopback port.
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
# The Debian package is built (dpkg-shlibdeps), checked (lintian) and
# installed into a clean chroot (debootstrap; the test makes it once).
command -v dpkg-shlibdeps >/dev/null 2>&1 || need_apt+=(dpkg-dev)
command -v lintian >/dev/null 2>&1 || need_apt+=(lintian)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# PostgreSQL on 127.0.0.1:5432 with trust auth for user postgres.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "== starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
# MariaDB on 127.0.0.1:3306, root without a password.
if ! mariadb-admin -h 127.0.0.1 -P 3306 -u root status >/dev/null 2>&1; then
    echo "== starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    for _ in $(seq 1 30); do
        mariadb-admin -h 127.0.0.1 -P 3306 -u root status >/dev/null 2>&1 && break
        sleep 1
    done
fi

# Garage, the S3-compatible object store tests/cli/s3.rs runs as a 3-node
# cluster on loopback (the tests start and stop it themselves). Built once:
# 20-40 minutes on 2 cores; cargo keeps the binary in its bin directory.
if ! command -v garage >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/garage" ]; then
    echo "== installing Garage 2.5.0 (cargo install garage --locked, once)"
    cargo install garage --locked --version 2.5.0
fi

# cargo-deb, which makes the Debian package (scripts/package.sh).
if ! command -v cargo-deb >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb" ]; then
    echo "== installing cargo-deb 3.8.0 (cargo install cargo-deb --locked, once)"
    cargo install cargo-deb --locked --version 3.8.0
fi

echo "== running the test suite"
exec cargo test --locked --all-targets
