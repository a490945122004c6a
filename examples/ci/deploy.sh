#!/usr/bin/env bash
# Tell Hatchery that CI deployed a commit, then follow the migration run to its end.
#
#   HATCHERY_URL=https://hatchery.example HATCHERY_TOKEN=hat_... \
#     examples/ci/deploy.sh PROJECT ENVIRONMENT COMMIT_SHA DEPLOYMENT_ID
#
# PROJECT is the project's id or slug. Needs curl; uses jq when present.
# Exit status: 0 when the run succeeded, 1 when it failed or was cancelled, 2 on a
# timeout (HATCHERY_TIMEOUT seconds, default 900), 3 when the deployment was refused.
# An api that cannot answer for now (5xx, 429, no connection) is tried again, with
# back-off, until the timeout: only a 4xx refusal exits 3.
set -euo pipefail

usage() { echo "usage: $0 PROJECT ENVIRONMENT COMMIT_SHA DEPLOYMENT_ID" >&2; exit 64; }
[ $# -eq 4 ] || usage
project=$1 environment=$2 commit=$3 deployment_id=$4
: "${HATCHERY_URL:?set HATCHERY_URL}" "${HATCHERY_TOKEN:?set HATCHERY_TOKEN}"
api="${HATCHERY_URL%/}/api/v1"
timeout=${HATCHERY_TIMEOUT:-900}
deadline=$((SECONDS + timeout))
auth="Authorization: Bearer $HATCHERY_TOKEN"

# field NAME < json: the first string value of NAME, or nothing (jq when present, else
# grep and sed, which know JSON's escaped quotes and backslashes but nothing fancier).
field() {
    if command -v jq >/dev/null; then
        jq -r --arg name "$1" '[.. | objects | .[$name]? // empty | strings][0] // empty' \
            2>/dev/null || true
    else
        { grep -oE "\"$1\": *\"([^\"\\\\]|\\\\.)*\"" || true; } | head -n 1 |
            sed -E 's/^"[^"]*": *"//; s/"$//; s/\\"/"/g; s/\\\\/\\/g'
    fi
}

request() { # METHOD PATH [BODY]: prints the body, then the status on its own line
    curl -sS --max-time 60 -X "$1" -H "$auth" -H "Content-Type: application/json" \
        ${3:+--data "$3"} -w '\n%{http_code}' "$api$2" || printf '\n000'
}

# persist METHOD PATH [BODY]: the answer of a request tried again while the api cannot
# answer (5xx, 429, no connection: status 000); prints the body, then the status.
persist() {
    local answer status pause=1
    while :; do
        answer=$(request "$@")
        status=$(printf '%s' "$answer" | tail -n 1)
        case $status in
            000 | 429 | 5??) ;;
            *) printf '%s' "$answer"; return ;;
        esac
        if [ $((SECONDS + pause)) -ge $deadline ]; then
            echo "hatchery: the api did not answer in time ($status)" >&2
            exit 2
        fi
        sleep "$pause"
        pause=$((pause < 8 ? pause * 2 : 10))
    done
}

if ! [[ $project =~ ^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$ ]]; then
    found=$(persist GET "/projects?slug=$project")
    project=$(printf '%s' "$found" | sed '$d' | field id)
    [ -n "$project" ] || { echo "hatchery: no project '$1'" >&2; exit 3; }
fi

body=$(printf '{"environment":"%s","commit_sha":"%s","deployment_id":"%s"}' \
    "$environment" "$commit" "$deployment_id")
# Sending it again is safe: a deployment id makes one run.
answer=$(persist POST "/projects/$project/deployments" "$body")
status=$(printf '%s' "$answer" | tail -n 1)
answer=$(printf '%s' "$answer" | sed '$d')
if [ "$status" != 202 ] && [ "$status" != 200 ]; then
    echo "hatchery: deployment refused ($status): $(printf '%s' "$answer" | field detail)" >&2
    exit 3
fi
run=$(printf '%s' "$answer" | field id)
echo "run $run: migrating $environment to $commit"

# Follow the run's events; on a dropped connection or an error answer, back off and
# resume after the last event seen.
last="" pause=1
while [ $SECONDS -lt $deadline ]; do
    event="" outcome=""
    while IFS= read -r line; do
        line=${line%$'\r'}
        case $line in
            id:*) last=${line#id: } pause=1 ;;
            event:*) event=${line#event: } ;;
            data:*)
                data=${line#data: }
                step=$(printf '%s' "$data" | field step)
                case $event in
                    step.started) echo "  $step ..." ;;
                    step.progress) echo "  $step: $(printf '%s' "$data" | field message)" ;;
                    step.succeeded) echo "  $step done" ;;
                    step.failed) echo "  $step FAILED: $(printf '%s' "$data" | field error)" ;;
                    run.succeeded | run.failed | run.cancelled) outcome=$event ;;
                esac
                ;;
        esac
        [ -z "$outcome" ] || break
    done < <(curl -sS -N -f --max-time $((deadline - SECONDS)) -H "$auth" \
        -H "Accept: text/event-stream" "$api/runs/$run/events${last:+?after=$last}" || true)
    case $outcome in
        run.succeeded) echo "run $run succeeded"; exit 0 ;;
        run.failed | run.cancelled)
            echo "run $run ${outcome#run.}" >&2
            exit 1
            ;;
    esac
    sleep "$pause"
    pause=$((pause < 8 ? pause * 2 : 10))
done
echo "hatchery: run $run did not finish within ${timeout}s" >&2
exit 2
