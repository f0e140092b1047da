#!/bin/sh
# mgpu: a self-extracting executable (build-config/launcher.sh + an uncompressed tar of
# PyInstaller's one-dir build, assembled by build-config/assemble.py). The first run of this
# file by a user unpacks the program into a private cache directory, once per content hash;
# every run then exec()s the unpacked program, with the caller's arguments and environment.
#
#   cache:  $MGPU_CACHE_DIR, else /var/cache/mgpu as root, else $XDG_CACHE_HOME/mgpu, else
#           $HOME/.cache/mgpu when HOME is a directory of the user's own (not after a `sudo -u`
#           that kept another user's HOME), else /tmp/mgpu-cache-UID; the program is
#           CACHE/HASH/mgpu.
#   safety: CACHE, CACHE/HASH and the program CACHE/HASH/mgpu must belong to the effective
#           user and must not be writable by group or others, checked before every exec() of
#           the program (we create them with umask 077); the archive is checked against its
#           sha256 before it is unpacked (sha256sum, else `shasum -a 256`, else openssl; with
#           none of them the launcher refuses to unpack).
#
# The fast path (already unpacked) runs shell builtins plus one `find` for the permission bits,
# which no POSIX sh builtin can read (about 1 ms of a 17 ms `mgpu --version`). Variables are
# _mgpu_* shell variables, never exported; commands run in subshells with their own PATH.
# Nothing below the final `exit` is shell code: the archive starts at byte @MGPU_OFFSET@.
_mgpu_hash=@MGPU_HASH@
_mgpu_sha256=@MGPU_SHA256@
_mgpu_offset=@MGPU_OFFSET@
_mgpu_size=@MGPU_SIZE@

_mgpu_uid=
if [ -n "${MGPU_CACHE_DIR:-}" ]; then
    _mgpu_base=$MGPU_CACHE_DIR
else
    # The effective uid, without a process: the third field of /proc/self/status's Uid: line.
    if [ -r /proc/self/status ]; then
        while read -r _mgpu_key _mgpu_real _mgpu_uid _mgpu_rest; do
            [ "$_mgpu_key" = Uid: ] && break
            _mgpu_uid=
        done </proc/self/status
    fi
    [ -n "$_mgpu_uid" ] || _mgpu_uid=$(PATH=/usr/bin:/bin id -u) || exit 1
    if [ "$_mgpu_uid" = 0 ]; then
        _mgpu_base=/var/cache/mgpu
    else
        case ${XDG_CACHE_HOME:-} in
            /*) _mgpu_base=$XDG_CACHE_HOME/mgpu ;;
            *) case ${HOME:-} in
                   /?*) if [ -d "$HOME" ] && [ -O "$HOME" ]; then _mgpu_base=$HOME/.cache/mgpu; else _mgpu_base=/tmp/mgpu-cache-$_mgpu_uid; fi ;;
                   *) _mgpu_base=/tmp/mgpu-cache-$_mgpu_uid ;;
               esac ;;
        esac
    fi
fi
case $_mgpu_base in
    /*) ;;
    *) echo "mgpu: the cache directory '$_mgpu_base' is not an absolute path: set MGPU_CACHE_DIR to an absolute path" >&2
       exit 1 ;;
esac
_mgpu_dir=$_mgpu_base/$_mgpu_hash

# The unpacked program is there, ours, and runnable. Builtins only ([ is a builtin of every
# POSIX sh that matters: dash, bash, busybox).
_mgpu_ready() {
    [ -O "$_mgpu_base" ] && [ -O "$_mgpu_dir" ] && [ ! -L "$_mgpu_dir" ] && [ -O "$_mgpu_dir/mgpu" ] \
        && [ -x "$_mgpu_dir/mgpu" ]
}

# Run the program once it is ready, unless the cache, its HASH directory or the program itself
# may be written by group or others (who could then swap what runs as the user): one line and
# exit 1. A single process (POSIX find; `/.` follows a cache directory that is a symbolic link).
_mgpu_run() {
    _mgpu_loose=$(PATH=/usr/bin:/bin find "$_mgpu_base/." "$_mgpu_dir/." "$_mgpu_dir/mgpu" -prune \
        \( -perm -020 -o -perm -002 \) -print 2>/dev/null) || {
        echo "mgpu: cannot check the permissions of $_mgpu_dir ('find' failed; install findutils): set MGPU_CACHE_DIR to a private directory of your own" >&2
        exit 1
    }
    if [ -n "$_mgpu_loose" ]; then
        _mgpu_loose=${_mgpu_loose%%"
"*}
        _mgpu_loose=${_mgpu_loose%/.}
        echo "mgpu: refusing $_mgpu_loose: it is writable by group or others (chmod go-w $_mgpu_loose, or set MGPU_CACHE_DIR to a private directory of your own)" >&2
        exit 1
    fi
    exec "$_mgpu_dir/mgpu" "$@"
}

# Fast path.
if _mgpu_ready; then
    _mgpu_run "$@"
fi

# Slow path: check (and create) the cache, unpack into a private temporary directory, publish
# it atomically under its hash. In a subshell: its PATH, umask and traps stay there.
(
    PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin
    umask 077
    _mgpu_fail() {
        echo "mgpu: $*" >&2
        exit 1
    }
    _mgpu_fix="set MGPU_CACHE_DIR to a private directory of your own"
    if [ ! -e "$_mgpu_base" ] && [ ! -L "$_mgpu_base" ]; then
        mkdir -p "$_mgpu_base" 2>/dev/null || [ -d "$_mgpu_base" ] \
            || _mgpu_fail "cannot create the cache directory $_mgpu_base: $_mgpu_fix"
    fi
    [ -d "$_mgpu_base" ] || _mgpu_fail "the cache directory $_mgpu_base is not a directory: $_mgpu_fix"
    [ -O "$_mgpu_base" ] \
        || _mgpu_fail "refusing the cache directory $_mgpu_base: it belongs to another user ($_mgpu_fix)"
    _mgpu_loose=$(find "$_mgpu_base/." -prune \( -perm -020 -o -perm -002 \) -print 2>/dev/null) \
        || _mgpu_fail "cannot check the permissions of $_mgpu_base ('find' failed): $_mgpu_fix"
    [ -z "$_mgpu_loose" ] \
        || _mgpu_fail "refusing the cache directory $_mgpu_base: it is writable by group or others (chmod go-w it, or $_mgpu_fix)"
    if [ -e "$_mgpu_dir" ] || [ -L "$_mgpu_dir" ]; then
        { [ -O "$_mgpu_dir" ] && [ ! -L "$_mgpu_dir" ]; } \
            || _mgpu_fail "refusing $_mgpu_dir: it belongs to another user or is a symbolic link (remove it, or $_mgpu_fix)"
        [ -f "$_mgpu_dir/mgpu" ] \
            || _mgpu_fail "$_mgpu_dir is incomplete: remove it and run mgpu again"
        [ -O "$_mgpu_dir/mgpu" ] \
            || _mgpu_fail "refusing $_mgpu_dir/mgpu: it belongs to another user (remove $_mgpu_dir, or $_mgpu_fix)"
        [ -x "$_mgpu_dir/mgpu" ] \
            || _mgpu_fail "cannot execute $_mgpu_dir/mgpu (a noexec file system?): $_mgpu_fix"
        exit 0  # unpacked by a concurrent first run since the fast-path check
    fi

    # Leftovers of runs killed while unpacking (SIGKILL, power loss), after an hour.
    find "$_mgpu_base/." ! -name . -prune -name '.partial.*' -mmin +60 -exec rm -rf {} + 2>/dev/null
    _mgpu_tmp=$(mktemp -d "$_mgpu_base/.partial.XXXXXX") \
        || _mgpu_fail "cannot create a directory in $_mgpu_base: $_mgpu_fix"
    trap 'rm -rf "$_mgpu_tmp"' EXIT
    trap 'exit 1' HUP INT TERM
    # Copy the archive once, check that copy, unpack that copy: a truncated or corrupted
    # download is never published, even if this file is replaced meanwhile.
    tail -c +"$_mgpu_offset" "$0" >"$_mgpu_tmp/.archive" \
        || _mgpu_fail "cannot read the archive in $0 (into $_mgpu_tmp: disk full?)"
    set -- $(wc -c <"$_mgpu_tmp/.archive")
    [ "$1" = "$_mgpu_size" ] \
        || _mgpu_fail "$0 is damaged (its archive has $1 bytes instead of $_mgpu_size): copy it again"
    # Never unpacked unchecked: sha256sum (coreutils), else shasum (perl), else openssl.
    if command -v sha256sum >/dev/null 2>&1; then
        _mgpu_sum=$(sha256sum <"$_mgpu_tmp/.archive") || _mgpu_sum=
    elif command -v shasum >/dev/null 2>&1; then
        _mgpu_sum=$(shasum -a 256 <"$_mgpu_tmp/.archive") || _mgpu_sum=
    elif command -v openssl >/dev/null 2>&1; then
        # "SHA2-256(stdin)= HEX" (OpenSSL 3) or "(stdin)= HEX": the last word.
        _mgpu_sum=$(openssl dgst -sha256 <"$_mgpu_tmp/.archive") && _mgpu_sum=${_mgpu_sum##*[= ]} \
            || _mgpu_sum=
    else
        _mgpu_fail "cannot check $0 before unpacking it: no sha256sum, shasum or openssl found (install coreutils)"
    fi
    [ -n "$_mgpu_sum" ] || _mgpu_fail "cannot compute the sha256 of the archive in $0 (in $_mgpu_tmp)"
    set -- $_mgpu_sum
    [ "$1" = "$_mgpu_sha256" ] || _mgpu_fail "$0 is damaged (sha256 mismatch): copy it again"
    # -o: files belong to whoever unpacks (never to the uid recorded in the archive).
    tar -xof "$_mgpu_tmp/.archive" -C "$_mgpu_tmp" \
        || _mgpu_fail "cannot unpack $0 into $_mgpu_tmp ('tar' failed: disk full?)"
    rm -f "$_mgpu_tmp/.archive"
    [ -f "$_mgpu_tmp/mgpu" ] || _mgpu_fail "$0 is damaged (no mgpu in its archive): copy it again"
    chmod 700 "$_mgpu_tmp"
    # rename(2) is atomic and refuses a non-empty target: one concurrent run wins, the others
    # drop their copy and use the winner's.
    if mv -T "$_mgpu_tmp" "$_mgpu_dir" 2>/dev/null; then
        _mgpu_tmp=
    elif [ ! -e "$_mgpu_dir/mgpu" ]; then
        _mgpu_fail "cannot move $_mgpu_tmp to $_mgpu_dir"
    fi
    [ -x "$_mgpu_dir/mgpu" ] \
        || _mgpu_fail "cannot execute $_mgpu_dir/mgpu (a noexec file system?): $_mgpu_fix"
    exit 0
) || exit 1
if _mgpu_ready; then
    _mgpu_run "$@"
fi
echo "mgpu: cannot run $_mgpu_dir/mgpu" >&2
exit 1
