# Shared by the benchmark scripts (sourced, not run).

die() { echo "$(basename "$0" .sh): $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }

# install_missing COMMAND:PACKAGE...: apt-get installs the packages whose command is missing
# (`postgresql` is looked for as Debian's initdb), then checks for cargo.
install_missing() {
    local need=() pair cmd pkg
    for pair in "$@"; do
        cmd=${pair%%:*} pkg=${pair#*:}
        if [ "$cmd" = initdb ]; then
            ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=("$pkg")
        else
            command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
        fi
    done
    if [ ${#need[@]} -gt 0 ]; then
        say "installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs)"
}

# target_dir: the cargo target directory of this workspace.
target_dir() {
    cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'
}
