#!/bin/sh
# One entrypoint, two modes:
#   serve (default)              TorchServe on 0.0.0.0:8080 (inference) and 8082 (metrics),
#                                in the foreground; management only on a Unix socket inside
#   score INPUT OUTPUT [opts]    the batch job with an embedded TorchServe; exits with the
#                                scorer's code (0 all rows scored, 2 some rows have errors,
#                                1 the job failed)
# Settings come from TABSERVE_* variables (TABSERVE_NO_AUTH=1, TABSERVE_WORKERS,
# TABSERVE_BATCH_SIZE, TABSERVE_MAX_BATCH_DELAY, TABSERVE_MODEL, ...); see the README.
set -eu
mode="${1:-serve}"
[ "$#" -gt 0 ] && shift
case "$mode" in
  serve)
    exec tabserve serve --foreground "$@"
    ;;
  score)
    if [ "$#" -lt 2 ]; then
      echo "usage: score INPUT OUTPUT [tabserve score options]" >&2
      exit 1
    fi
    input="$1"; output="$2"; shift 2
    exec tabserve score "$input" -o "$output" "$@"
    ;;
  *)
    exec "$mode" "$@"
    ;;
esac
