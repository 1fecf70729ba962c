#!/usr/bin/env bash
# The official RealWorld API suite (../shared/vendor/realworld, run with newman)
# against examples/conduit: three communities at once, one per strategy (schema, row,
# database), each with its own USERNAME and EMAIL; then the schema community is moved
# to the row strategy with `tenantry tenants move`, after the suite made its data, and
# the suite runs against it again. Every assertion must pass.
#
#   scripts/conduit-api-tests.sh            # a private PostgreSQL, removed afterwards
#   DATABASE_URL=postgres://... scripts/conduit-api-tests.sh   # a server of yours: the
#                                           # communities it creates are deleted at the end
#                                           # (CONDUIT_DATABASE_PREFIX if another registry
#                                           # there uses `tenant_`)
#
# Needs Node.js with npx (newman comes from the npm registry: NEWMAN overrides the
# package, COLLECTION the collection file).
set -euo pipefail
cd "$(dirname "$0")/.."

COLLECTION=${COLLECTION:-../shared/vendor/realworld/Conduit.postman_collection.json}
NEWMAN=${NEWMAN:-newman@6.2.2}
if ! command -v npx >/dev/null 2>&1; then
    echo "conduit-api-tests: npx (Node.js) is missing: install Node.js 18 or later" >&2
    exit 1
fi
if [ ! -f "$COLLECTION" ]; then
    echo "conduit-api-tests: no collection at $COLLECTION (set COLLECTION)" >&2
    exit 1
fi

cargo build -q -p conduit -p tenantry-cli
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
conduit_bin="$target_dir/debug/conduit"
cli_bin="$target_dir/debug/tenantry"
export CONDUIT_DATABASE_PREFIX=${CONDUIT_DATABASE_PREFIX:-tenant_}
cli() { "$cli_bin" --database-url "$db_url" --database-prefix "$CONDUIT_DATABASE_PREFIX" "$@"; }

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run="$(date +%s)-$$"
schema_t="cs-$run"
row_t="cr-$run"
db_t="cd-$run"
conduit_pid=""

cleanup() {
    status=$?
    if [ -n "${DATABASE_URL:-}" ] && [ -n "${db_url:-}" ]; then
        for t in "$schema_t" "$row_t" "$db_t"; do
            cli tenants delete "$t" --yes --force >/dev/null 2>&1 || true
        done
    fi
    if [ -n "$conduit_pid" ]; then
        # SIGINT: a graceful stop, which also stops and removes a private PostgreSQL.
        kill -INT "$conduit_pid" 2>/dev/null || true
        wait "$conduit_pid" 2>/dev/null || true
    fi
    if [ $status -ne 0 ]; then
        echo "conduit-api-tests: FAILED; the server's log:" >&2
        tail -40 "$work/conduit.log" >&2 || true
    fi
    rm -rf "$work"
    exit $status
}
trap cleanup EXIT

CONDUIT_DEMO_TENANTS="$schema_t:schema,$row_t:row,$db_t:database" RUST_LOG=${RUST_LOG:-warn} \
    "$conduit_bin" --port "$port" >"$work/conduit.log" 2>&1 &
conduit_pid=$!
for _ in $(seq 1 600); do
    if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$conduit_pid" 2>/dev/null; then
        echo "conduit-api-tests: conduit did not start" >&2
        exit 1
    fi
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/health" >/dev/null
db_url=${DATABASE_URL:-$(sed -n 's/.*database at \(postgres[^ ]*\).*/\1/p;T;q' "$work/conduit.log")}

# Fetch newman once, before the three runs race to.
npx -y "$NEWMAN" --version >/dev/null

suite() { # tenant, user name, log file
    npx -y "$NEWMAN" run "$COLLECTION" \
        --global-var "APIURL=http://127.0.0.1:$port/t/$1/api" \
        --global-var "USERNAME=$2" \
        --global-var "EMAIL=$2@mail.example" \
        --global-var "PASSWORD=password-$2" \
        --reporters cli --disable-unicode --color off >"$3" 2>&1
}

summary() { # log file
    grep -E '(requests|assertions) ' "$1" | tr -s ' ' | sed 's/^/    /' || true
}

failed=0
pids=()
for t in "$schema_t" "$row_t" "$db_t"; do
    suite "$t" "u-$t" "$work/$t.log" &
    pids+=($!)
done
i=0
for t in "$schema_t" "$row_t" "$db_t"; do
    if wait "${pids[$i]}"; then
        echo "conduit-api-tests: $t: every assertion passed"
    else
        echo "conduit-api-tests: $t: FAILED" >&2
        tail -60 "$work/$t.log" >&2
        failed=1
    fi
    summary "$work/$t.log"
    i=$((i + 1))
done
[ $failed -eq 0 ]

# The schema community, with the data the suite left (users, follows), moved to the
# row strategy while the server runs; then the suite again, with new users.
cli tenants move "$schema_t" --to-strategy row \
    --migrations examples/conduit/migrations/tenant >"$work/move.log" 2>&1 || {
    echo "conduit-api-tests: the move failed:" >&2
    cat "$work/move.log" >&2
    exit 1
}
shown="$(cli tenants show "$schema_t" --json)" || shown=""
grep -q '"strategy": *"row"' <<<"$shown" || {
    echo "conduit-api-tests: after the move, $schema_t is not a row tenant" >&2
    exit 1
}
# The member the first run registered came along, password and all.
curl -fsS -o /dev/null -H 'content-type: application/json' \
    -d "{\"user\":{\"email\":\"u-$schema_t@mail.example\",\"password\":\"password-u-$schema_t\"}}" \
    "http://127.0.0.1:$port/t/$schema_t/api/users/login" || {
    echo "conduit-api-tests: after the move, the first run's user cannot log in" >&2
    exit 1
}
echo "conduit-api-tests: moved $schema_t from schema to row; its first user still logs in"
if suite "$schema_t" "v-$schema_t" "$work/moved.log"; then
    echo "conduit-api-tests: $schema_t (moved to row): every assertion passed"
    summary "$work/moved.log"
else
    echo "conduit-api-tests: $schema_t (moved to row): FAILED" >&2
    tail -60 "$work/moved.log" >&2
    exit 1
fi
