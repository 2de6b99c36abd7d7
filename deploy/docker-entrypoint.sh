#!/bin/sh
# Entry point of the metallm image: read secrets from files, then run `metallm "$@"`.
#
# For each of REDIS_PASSWORD, REDIS_URL, OPENAI_API_KEY, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, a variable VAR_FILE names a file (a Docker or
# Kubernetes secret) whose content becomes VAR. With REDIS_PASSWORD set and REDIS_URL unset,
# REDIS_URL is built from REDIS_HOST (default redis), REDIS_PORT (6379) and REDIS_DB (0).
# Nothing here prints a secret.
set -eu
for var in REDIS_PASSWORD REDIS_URL OPENAI_API_KEY AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN; do
  file_var="${var}_FILE"
  eval "file=\${$file_var:-}"
  if [ -n "$file" ]; then
    if [ ! -r "$file" ]; then
      echo "metallm-entrypoint: error: $file_var=$file is not a readable file" >&2
      exit 2
    fi
    value="$(cat "$file")"
    export "$var=$value"
    unset "$file_var"
  fi
done
if [ -z "${REDIS_URL:-}" ] && [ -n "${REDIS_PASSWORD:-}" ]; then
  REDIS_URL="$(python -c 'import os, urllib.parse as u; print("redis://:%s@%s:%s/%s" % (u.quote(os.environ["REDIS_PASSWORD"], safe=""), os.environ.get("REDIS_HOST", "redis"), os.environ.get("REDIS_PORT", "6379"), os.environ.get("REDIS_DB", "0")))')"
  export REDIS_URL
elif [ -z "${REDIS_URL:-}" ] && [ -n "${REDIS_HOST:-}" ]; then
  export REDIS_URL="redis://${REDIS_HOST}:${REDIS_PORT:-6379}/${REDIS_DB:-0}"
fi
exec metallm "$@"
