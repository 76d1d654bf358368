#!/usr/bin/env bash
# Mutation testing of the pure rules (stryker.config.json: which files, which unit tests): StrykerJS
# 8.7.1 (the last for Node 20) with its command runner, installed once into .tools/stryker (with the
# typescript its sandbox needs), outside the project's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.tools/stryker
if [ ! -x "$dir/node_modules/.bin/stryker" ]; then
  mkdir -p "$dir"
  npm install --silent --no-save --prefix "$dir" @stryker-mutator/core@8.7.1 "typescript@$(node -p 'require("typescript/package.json").version')"
fi
exec "$dir/node_modules/.bin/stryker" run "$@"
