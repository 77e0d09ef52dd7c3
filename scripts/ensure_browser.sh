#!/bin/sh
# Browser tests drive Debian's Chromium through Playwright (never `playwright install`: it downloads).
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's chromium for the browser tests"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "Browser tests need /usr/bin/chromium: run 'sudo apt-get install chromium'." >&2
  exit 1
fi
