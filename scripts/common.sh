# Sourced by the scripts beside it: messages prefixed with the script's name, and --help printing the script's
# header comment (its lines from the second to `set -euo pipefail`).
prog=$(basename "$0")
say() { echo "$prog: $*"; }
fail() {
    echo "$prog: FAILED: $*" >&2
    exit 1
}
bad() { # a bad argument: one line, exit 2
    echo "$prog: $* (--help lists the options)" >&2
    exit 2
}
usage() {
    sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    exit 0
}
need_value() { # need_value "$@" in an option's case: the option must have a value after it
    [ $# -ge 2 ] && [ -n "$2" ] || bad "$1 needs a value"
}
abs() { # abs PATH: PATH made absolute against the caller's folder, links kept (a venv's python is one)
    [ -z "$1" ] || realpath -ms -- "$1"
}
