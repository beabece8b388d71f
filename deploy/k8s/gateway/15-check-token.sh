#!/bin/sh
# Runs before the nginx image renders its templates: an empty token would make the header
# "Bearer " valid, a placeholder would be a known password. Refuse to start instead.
set -eu
token="${SMOOTHEXPLAIN_TOKEN:-}"
case "$token" in
  *REPLACE* | *[!A-Za-z0-9._~+/=-]*)
    echo "smoothexplain gateway: the token in Secret smoothexplain-token is a placeholder or has characters outside [A-Za-z0-9._~+/=-]" >&2
    exit 1
    ;;
esac
if [ "${#token}" -lt 32 ] || [ "${#token}" -gt 96 ]; then
  echo "smoothexplain gateway: the token in Secret smoothexplain-token must have 32 to 96 characters" >&2
  exit 1
fi
