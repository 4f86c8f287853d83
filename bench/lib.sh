# Helpers the bench scripts share (source it after WORK is set).

# A new, empty ext4 at WORK/out/NAME, its image beside it, so restores land
# on a disk as a user's do (and not on one that has just deleted many
# files): fresh_disk NAME [SIZE, default 2G]
fresh_disk() {
    truncate -s "${2:-2G}" "$WORK/out/$1.img"
    mkfs.ext4 -q -F "$WORK/out/$1.img"
    mkdir -p "$WORK/out/$1"
    mount -o loop "$WORK/out/$1.img" "$WORK/out/$1"
}
drop_disk() { umount "$WORK/out/$1"; rm -f "$WORK/out/$1.img"; }

# The environment every tool's steps run in (after WORK is set): cargo's
# bin directory on PATH, one passphrase for every tool in its own variable,
# every cache under WORK/cache.
tools_env() {
    export PATH=$HOME/.cargo/bin:$PATH
    local pass=holdfast-bench-not-a-secret
    export HOLDFAST_PASSPHRASE=$pass RESTIC_PASSWORD=$pass BORG_PASSPHRASE=$pass RUSTIC_PASSWORD=$pass
    export XDG_CACHE_HOME=$WORK/cache RESTIC_CACHE_DIR=$WORK/cache/restic BORG_BASE_DIR=$WORK/cache/borg
    export BUPSTASH_KEY=$WORK/bupstash.key BUPSTASH_QUERY_CACHE=$WORK/cache/bq
}
