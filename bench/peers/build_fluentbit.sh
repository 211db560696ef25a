#!/usr/bin/env bash
# Build Fluent Bit from a source tree with only the tail input and the s3 output, outside the
# logferry repository, for bench/peers/fluentbit_vs_logferry.py.
#
# Usage: bench/peers/build_fluentbit.sh SOURCE_DIR [BUILD_DIR]
#   SOURCE_DIR  an unpacked Fluent Bit source tree (tested with v5.1.1); how it got there is the
#               caller's business (git archive of a tag, a release tarball, ...).
#   BUILD_DIR   default /tmp/fluentbit-build; the binary ends up in BUILD_DIR/bin/fluent-bit.
# Debian build deps: apt-get install -y cmake make gcc g++ flex bison libyaml-dev libssl-dev libsqlite3-dev pkg-config
#
# FLB_MINIMAL turns every plugin option off; FLB_IN_TAIL and FLB_OUT_S3 turn the two we need back on.
# The feature switches below drop what neither plugin needs (Lua, WASM, Kafka, Go proxy,
# the stream processor). SQLite stays on (5.1.1 does not compile with FLB_SQLDB=Off: flb_blob_db.c)
# but comes from Debian's libsqlite3-dev, so a source tree without the 9 MB amalgamation builds.
# FLB_HTTP_SERVER stays on (off, tools/xxd-c misses a header Monkey generates; the monitoring
# server is off at run time anyway). FLB_RELEASE gives -O2 -DNDEBUG, i.e. what a packaged Fluent Bit ships.
set -euo pipefail
src=${1:?usage: $0 SOURCE_DIR [BUILD_DIR]}
build=${2:-/tmp/fluentbit-build}
src=$(cd "$src" && pwd)
case "$build" in
  "$(git -C "$(dirname "$0")" rev-parse --show-toplevel 2>/dev/null || echo /nonexistent)"*)
    echo "refusing to build inside the repository: $build" >&2; exit 2;;
esac
mkdir -p "$build"
cmake -S "$src" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release -DFLB_RELEASE=On -DFLB_DEBUG=Off \
  -DFLB_MINIMAL=On -DFLB_IN_TAIL=On -DFLB_OUT_S3=On \
  -DFLB_AWS=On -DFLB_SIGNV4=On -DFLB_TLS=On \
  -DFLB_SQLDB=On -DFLB_PREFER_SYSTEM_LIB_SQLITE=On -DFLB_LUAJIT=Off -DFLB_WASM=Off -DFLB_KAFKA=Off -DFLB_ZIG=Off \
  -DFLB_PROXY_GO=Off -DFLB_CUSTOM_CALYPTIA=Off -DFLB_HTTP_SERVER=On \
  -DFLB_STREAM_PROCESSOR=Off -DFLB_EXAMPLES=Off -DFLB_SHARED_LIB=Off \
  -DFLB_TESTS_RUNTIME=Off -DFLB_TESTS_INTERNAL=Off -DFLB_BACKTRACE=Off \
  -DFLB_ARROW=Off -DFLB_AVRO_ENCODER=Off -DFLB_RIPSER=Off
cmake --build "$build" -j "${JOBS:-2}"
"$build/bin/fluent-bit" --version
"$build/bin/fluent-bit" --help 2>&1 | sed -n '/^Inputs/,/^Internal/p'
