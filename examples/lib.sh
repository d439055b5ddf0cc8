# Sourced by every demo script (POSIX sh): the private work directory and socket, kuasar-ctl bound
# to them, step titles, starting the sandboxer, and the clean-up that removes every pod and stops
# the sandboxer and the task server it started.
#
# Before sourcing, set: repo (the repository root), kind (runc|wasm|quark|vmm) and leftovers (paths the
# clean-up also removes, may be empty).
# Defines: work, sock, ctl, step, start_sandboxer.

PATH="$repo/.venv/bin:$PATH"
work=$(mktemp -d "/tmp/kuasar-$kind-demo.XXXXXX")
sock="$work/$kind-sandboxer.sock"
ctl() { kuasar-ctl -s "$kind" --endpoint "$sock" --root "$work/ctl" --images "$work/images" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

sandboxer_pid=""
cleanup() {
    set +e
    if [ -n "$sandboxer_pid" ]; then
        for pod in $(ctl pods -q 2>/dev/null); do ctl rmp "$pod" >/dev/null; done
        kill -TERM "$sandboxer_pid" 2>/dev/null
        wait "$sandboxer_pid" 2>/dev/null
        # the task server and its front outlive the sandboxer on purpose (restart promise); the demo stops
        # them too: every process whose command line names this demo's --dir (the first task server is a
        # fork of the sandboxer and keeps the sandboxer's command line)
        pkill -TERM -f -- "$work/dir" 2>/dev/null
        i=0
        while pgrep -f -- "$work/dir" >/dev/null && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
    fi
    # shellcheck disable=SC2086 # leftovers is a list of paths
    rm -rf "$work" $leftovers
}
trap cleanup EXIT INT TERM

# start_sandboxer LOG COMMAND [ARGS...]: run the sandboxer in the background with its output in the
# file LOG ("-": on the terminal) and wait up to 20 s for it to listen on $sock.
start_sandboxer() {
    log=$1
    shift
    if [ "$log" = - ]; then "$@" & else "$@" >"$log" 2>&1 & fi
    sandboxer_pid=$!
    i=0
    while [ ! -S "$sock" ]; do
        if [ $i -ge 200 ] || ! kill -0 "$sandboxer_pid" 2>/dev/null; then
            echo "$1 did not start" >&2
            [ "$log" = - ] || cat "$log" >&2
            exit 1
        fi
        i=$((i + 1))
        sleep 0.1
    done
}
