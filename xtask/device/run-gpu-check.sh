#!/usr/bin/env bash
# run-gpu-check.sh: llorch-checkpoint's GPU check, from the device bundle that
# `cargo xtask device-bundle` makes. Needs no cargo, no Rust and no network:
# CMake, a C/C++ compiler, tar, sha256sum and, for the GPU, nvcc.
#
#   ./run-gpu-check.sh RESULTS_DIR [--cpu-only] [--runs N] [--work DIR] [--jobs N]
#
# 1. checks the bundle (SHA256SUMS), unpacks the pinned llama.cpp from its
#    .crate (sha256 checked);
# 2. builds llama.cpp with CMake (CUDA, backends as loadable modules:
#    GGML_BACKEND_DL; with --cpu-only the CPU backend alone, same layout);
# 3. generates the default synthetic GPT-2 with the bundled model tool and
#    checks it is byte-identical to the one the bundle was made beside;
# 4. extracts the checkpoints on the CPU (--n-gpu-layers 0) and on the GPU
#    (--n-gpu-layers 99), with and without extraction;
# 5. validates both runs (llorch-checkpoint-validate), compares GPU against CPU
#    (llorch-checkpoint-diff: NMSE, max abs error, buffers; logits too), checks
#    whether logits with and without extraction are bitwise equal, and times
#    decoding with and without extraction (median of --runs runs each);
# 6. prints a summary and writes RESULTS_DIR/summary.json.
#
# Environment: CMAKE (the cmake to use; default: cmake on PATH), NINJA (default:
# ninja on PATH, else Makefiles), CUDACXX (nvcc; default: on PATH or
# /usr/local/cuda/bin/nvcc), CUDA_ARCHITECTURES (default: the GPU present, e.g. 90
# for an H100, from nvidia-smi), LLORCH_CUDA_FA (ON: also build the flash-attention
# kernels, which no run here uses; default OFF).
# Exit status: 0 when every check passed (bitwise logits and timings are
# reported, not judged), 1 when one failed, 2 on a usage or setup error.
set -euo pipefail

usage() {
    sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "run-gpu-check: error: $*" >&2
    exit 2
}
step() { echo; echo "== $*"; }

BUNDLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RESULTS="" CPU_ONLY=0 RUNS=9 WORK="" JOBS=$(nproc 2>/dev/null || echo 4)
while (($#)); do
    case "$1" in
        --cpu-only) CPU_ONLY=1 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift ;;
        --work) WORK=${2:?--work needs a directory}; shift ;;
        --jobs) JOBS=${2:?--jobs needs a number}; shift ;;
        -h | --help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [[ -z "$RESULTS" ]] || usage; RESULTS=$1 ;;
    esac
    shift
done
[[ -n "$RESULTS" ]] || usage
[[ "$RUNS" =~ ^[0-9]+$ ]] && ((RUNS >= 7)) || die "--runs must be a number of at least 7 (the timing is a median)"
mkdir -p "$RESULTS" && RESULTS=$(cd "$RESULTS" && pwd)
WORK=${WORK:-$BUNDLE/work}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
exec > >(tee "$RESULTS/run-gpu-check.log") 2>&1
STARTED=$SECONDS

# shellcheck source=/dev/null
source "$BUNDLE/bundle.env"
BIN=$BUNDLE/bin
MANIFEST=$BUNDLE/manifests/gpt2.yaml
PROMPT="Hello world"
# verify.rs's PERF_PROMPT: ~120 tokens of ordinary English, long enough for stable timings.
PERF_PROMPT="The history of natural language processing generally started in the 1950s, although work can be \
found from earlier periods. In 1950, Alan Turing published an article titled Computing Machinery and Intelligence which \
proposed what is now called the Turing test as a criterion of intelligence. The Georgetown experiment in 1954 involved \
fully automatic translation of more than sixty Russian sentences into English. The authors claimed that within three or \
five years, machine translation would be a solved problem. However, real progress was much slower, and after a report \
in 1966 found that ten years of research had failed to fulfill the expectations, funding was dramatically reduced."
PERF_TOKENS=16

step "tools"
for tool in tar sha256sum ldd; do
    command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install tar coreutils libc-bin)"
done
CMAKE=${CMAKE:-$(command -v cmake || true)}
[[ -n "$CMAKE" && -x "$CMAKE" ]] || die "cmake not found: install it (apt-get install cmake) or set CMAKE=/path/to/cmake"
GENERATOR=()
NINJA=${NINJA:-$(command -v ninja || true)}
[[ -n "$NINJA" && -x "$NINJA" ]] && GENERATOR=(-G Ninja "-DCMAKE_MAKE_PROGRAM=$NINJA")
if ((CPU_ONLY)); then
    VARIANT=cpu-dl
    GPU_NAME="none (--cpu-only)"
else
    VARIANT=cuda
    NVCC=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
    [[ -x "$NVCC" ]] || die "nvcc not found (not on PATH, not \$CUDACXX, not /usr/local/cuda/bin/nvcc): install the CUDA toolkit, or pass --cpu-only"
    export CUDACXX=$NVCC
    GPU_NAME=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)
    GPU_NAME=${GPU_NAME:-unknown (nvidia-smi gave nothing)}
fi
# The binaries were built elsewhere (glibc >= 2.34): find out now, not after the build.
"$BIN/llorch-checkpoint-diff" --version >/dev/null \
    || die "the bundled binaries do not run here (they need x86-64 Linux with glibc 2.34 or later; this has $(ldd --version | head -1))"
echo "cmake:   $CMAKE ($("$CMAKE" --version | head -1))"
echo "ninja:   ${NINJA:-none, Makefiles}"
((CPU_ONLY)) || echo "nvcc:    $NVCC ($("$NVCC" --version | tail -1))"
echo "gpu:     $GPU_NAME"
echo "bundle:  $BUNDLE (project $PROJECT_COMMIT, llama.cpp $LLAMA_PIN)"
echo "work:    $WORK"
echo "results: $RESULTS"

step "bundle integrity (SHA256SUMS)"
(cd "$BUNDLE" && sha256sum --check --quiet SHA256SUMS) || die "the bundle is damaged: files differ from SHA256SUMS"
echo "ok"

step "llama.cpp source: $LLAMA_PIN"
SRC=$WORK/llama.cpp
STAMP="$LLAMA_CRATE_SHA256"
if [[ -d "$SRC" && "$(cat "$WORK/llama.cpp.stamp" 2>/dev/null)" == "$STAMP" ]]; then
    echo "up to date: $SRC"
else
    echo "$LLAMA_CRATE_SHA256  $BUNDLE/$LLAMA_CRATE" | sha256sum --check --quiet \
        || die "$LLAMA_CRATE does not have the pinned sha256 $LLAMA_CRATE_SHA256"
    rm -rf "$WORK/.staging" "$SRC" "$WORK/llama.cpp.stamp"
    mkdir -p "$WORK/.staging"
    depth=$(awk -F/ '{print NF}' <<<"$LLAMA_CRATE_SUBDIR")
    tar -xzf "$BUNDLE/$LLAMA_CRATE" -C "$WORK/.staging" --strip-components="$depth" "$LLAMA_CRATE_SUBDIR"
    mv "$WORK/.staging" "$SRC"
    echo "$STAMP" >"$WORK/llama.cpp.stamp"
fi

step "build llama.cpp ($VARIANT) with CMake"
BUILD=$WORK/build-$VARIANT
mapfile -t DEFINES < <(grep -v '^#' "$BUNDLE/cmake/$VARIANT.defines" | sed '/^$/d; s/^/-D/')
if ((!CPU_ONLY)); then
    # Only the GPU present: `native` (the defines' choice) needs CMake >= 3.24, so name it when nvidia-smi can.
    CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ' || true)}
    [[ -n "$CUDA_ARCHITECTURES" ]] && DEFINES+=("-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES")
    # Every run here has flash attention off (--flash-attn off below: the
    # manifest's scores only exist without it), so its kernels, about half of
    # the CUDA compile time, are not built unless LLORCH_CUDA_FA=ON.
    DEFINES+=("-DGGML_CUDA_FA=${LLORCH_CUDA_FA:-OFF}")
fi
echo "defines: ${DEFINES[*]}"
t0=$SECONDS
"$CMAKE" -S "$SRC" -B "$BUILD" "${GENERATOR[@]}" "${DEFINES[@]}" >"$RESULTS/cmake-configure.log" 2>&1 \
    || { tail -30 "$RESULTS/cmake-configure.log"; die "CMake could not configure llama.cpp (log: $RESULTS/cmake-configure.log)"; }
"$CMAKE" --build "$BUILD" --config Release -j "$JOBS" >"$RESULTS/cmake-build.log" 2>&1 \
    || { tail -40 "$RESULTS/cmake-build.log"; die "building llama.cpp failed (log: $RESULTS/cmake-build.log)"; }
BUILD_SECONDS=$((SECONDS - t0))
LIBS=$BUILD/bin
WANT=(libllama.so libggml.so libggml-base.so libggml-cpu.so)
((CPU_ONLY)) || WANT+=(libggml-cuda.so)
for lib in "${WANT[@]}"; do
    [[ -e "$LIBS/$lib" ]] || die "the build finished but $LIBS/$lib is missing"
done
echo "built in ${BUILD_SECONDS} s: $(cd "$LIBS" && ls lib*.so | tr '\n' ' ')"

# The bundled binaries were linked on another machine: they must find these libraries.
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LLORCH_GGML_BACKEND_DIR=$LIBS
resolved=$(ldd "$BIN/llorch-checkpoint-extractor" | awk '/libllama/ {print $3}')
[[ "$resolved" == "$LIBS/"* ]] || die "the extractor loads libllama from '$resolved', not from $LIBS"
echo "the bundled extractor loads $resolved"

step "model: $MODEL_FILE"
TOK=$BUNDLE/tokenizer
(cd "$TOK" && printf '%s  %s\n' "$ENCODER_JSON_SHA256" encoder.json "$VOCAB_BPE_SHA256" vocab.bpe | sha256sum --check --quiet) \
    || die "the bundled tokenizer files do not have their pinned sha256"
MODEL=$WORK/models/$MODEL_FILE
mkdir -p "$WORK/models"
if [[ -f "$MODEL" && "$(sha256sum "$MODEL" | cut -d' ' -f1)" == "$MODEL_SHA256" ]]; then
    echo "up to date: $MODEL"
else
    t0=$SECONDS
    # shellcheck disable=SC2086 # MODEL_ARGS is a list of flags
    "$BIN/llorch-checkpoint-model" generate --out "$MODEL" $MODEL_ARGS --no-stats \
        --encoder-json "$TOK/encoder.json" --vocab-bpe "$TOK/vocab.bpe"
    echo "generated in $((SECONDS - t0)) s"
fi
MODEL_SHA=$(sha256sum "$MODEL" | cut -d' ' -f1)
MODEL_SAME=false
if [[ "$MODEL_SHA" == "$MODEL_SHA256" ]]; then
    MODEL_SAME=true
    echo "sha256 $MODEL_SHA: the same bytes as on the machine that made the bundle"
else
    echo "WARNING: sha256 $MODEL_SHA differs from the bundle's record $MODEL_SHA256 (the comparison below is still CPU vs GPU on this model)"
fi

extract() { # OUT_DIR NGL [extractor flags...]
    local out=$1 ngl=$2
    shift 2
    rm -rf "$out"
    "$BIN/llorch-checkpoint-extractor" -m "$MODEL" --manifest "$MANIFEST" --n-gpu-layers "$ngl" --flash-attn off --out "$out" "$@"
}

step "extraction: CPU (--n-gpu-layers 0) and GPU (--n-gpu-layers 99), with and without extraction"
for ngl in 0 99; do
    extract "$RESULTS/ngl$ngl" "$ngl" -p "$PROMPT" -n 1
    extract "$RESULTS/ngl$ngl-noextract" "$ngl" -p "$PROMPT" -n 1 --no-extract
done

FAILED=()
step "validate the checkpoint files (llorch-checkpoint-validate)"
declare -A VALID
for ngl in 0 99; do
    if "$BIN/llorch-checkpoint-validate" "$RESULTS/ngl$ngl" --manifest "$MANIFEST" | tee "$RESULTS/validate-ngl$ngl.txt"; then
        VALID[$ngl]=true
    else
        VALID[$ngl]=false
        FAILED+=("validate ngl$ngl")
    fi
done

step "GPU (ngl99) against CPU (ngl0): llorch-checkpoint-diff"
COMPARE_PASS=true
"$BIN/llorch-checkpoint-diff" compare "$RESULTS/ngl0" "$RESULTS/ngl99" --manifest "$MANIFEST" --json "$RESULTS/compare.json" \
    | tee "$RESULTS/compare.txt" || { COMPARE_PASS=false; FAILED+=("GPU vs CPU beyond the NMSE bound"); }
# Which buffers the GPU run read its checkpoints from.
GPU_BUFFERS=$(grep -o '"buffer_b": "[^"]*"' "$RESULTS/compare.json" | cut -d'"' -f4 | sort | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}')
USED_GPU=false
grep -q '"buffer_b": "CUDA' "$RESULTS/compare.json" && USED_GPU=true
if ((CPU_ONLY)); then
    USED_GPU_CHECK="n/a (--cpu-only)"
elif [[ $USED_GPU == true ]]; then
    USED_GPU_CHECK="yes ($GPU_BUFFERS)"
else
    USED_GPU_CHECK="NO ($GPU_BUFFERS)"
    FAILED+=("the ngl99 run read no checkpoint from a CUDA buffer")
fi

step "logits with and without extraction"
declare -A BITWISE
for ngl in 0 99; do
    if cmp -s "$RESULTS/ngl$ngl/logits.bin" "$RESULTS/ngl$ngl-noextract/logits.bin"; then
        BITWISE[$ngl]=true
        echo "ngl$ngl: bitwise equal"
    else
        BITWISE[$ngl]=false
        echo "ngl$ngl: NOT bitwise equal (reported, not judged: fused or split kernels may round differently)"
    fi
done
"$BIN/llorch-checkpoint-diff" compare "$RESULTS/ngl99-noextract" "$RESULTS/ngl99" --logits-only --json "$RESULTS/logits-ngl99.json" \
    | tail -2 || true

step "decode time with and without extraction, GPU (ngl99): $RUNS alternating runs each, -n $PERF_TOKENS"
TIMING=$RESULTS/timing
rm -rf "$TIMING" && mkdir -p "$TIMING"
WITH=() WITHOUT=()
for i in $(seq 1 "$RUNS"); do
    for side in with without; do
        flags=(-p "$PERF_PROMPT" -n "$PERF_TOKENS")
        if [[ $side == with ]]; then flags+=(--steps all); else flags+=(--no-extract); fi
        extract "$TIMING/$side-$i" 99 "${flags[@]}" >"$TIMING/$side-$i.log" 2>&1 \
            || { cat "$TIMING/$side-$i.log"; die "timing run $side-$i failed"; }
        find "$TIMING/$side-$i" -type f ! -name run.json -delete # keep run.json, drop tensors and logits
        if [[ $side == with ]]; then WITH+=("$TIMING/$side-$i"); else WITHOUT+=("$TIMING/$side-$i"); fi
    done
done
"$BIN/llorch-checkpoint-diff" timing --with "${WITH[@]}" --without "${WITHOUT[@]}" --json "$RESULTS/timing.json" \
    | tee "$RESULTS/timing.txt"

step "summary"
PASS=true
((${#FAILED[@]} == 0)) || PASS=false
failed_json=""
((${#FAILED[@]} == 0)) || failed_json=$(printf '"%s",' "${FAILED[@]}")
cat >"$RESULTS/summary.json" <<EOF
{
  "pass": $PASS,
  "failed": [${failed_json%,}],
  "cpu_only": $( ((CPU_ONLY)) && echo true || echo false),
  "gpu": "${GPU_NAME//\"/}",
  "bundle": { "project_commit": "$PROJECT_COMMIT", "llama_cpp": "$LLAMA_PIN" },
  "build": { "variant": "$VARIANT", "dir": "$BUILD", "seconds": $BUILD_SECONDS },
  "model": { "file": "$MODEL", "sha256": "$MODEL_SHA", "identical_to_bundle_record": $MODEL_SAME },
  "validate": { "ngl0": ${VALID[0]}, "ngl99": ${VALID[99]} },
  "used_gpu": $USED_GPU,
  "gpu_vs_cpu": $(cat "$RESULTS/compare.json"),
  "logits_bitwise_with_vs_without_extraction": { "ngl0": ${BITWISE[0]}, "ngl99": ${BITWISE[99]} },
  "timing_ngl99": $(cat "$RESULTS/timing.json"),
  "seconds": $((SECONDS - STARTED))
}
EOF
printf '%-44s %s\n' \
    "gpu" "$GPU_NAME" \
    "llama.cpp build ($VARIANT, GGML_BACKEND_DL)" "${BUILD_SECONDS} s" \
    "model byte-identical to the bundle's record" "$MODEL_SAME" \
    "checkpoint files valid: ngl0 / ngl99" "${VALID[0]} / ${VALID[99]}" \
    "ngl99 checkpoints read from a GPU buffer" "$USED_GPU_CHECK" \
    "GPU vs CPU (NMSE bound in compare.txt)" "$($COMPARE_PASS && echo ok || echo FAIL): $(tail -1 "$RESULTS/compare.txt")" \
    "logits bitwise with/without extraction" "ngl0 ${BITWISE[0]}, ngl99 ${BITWISE[99]}" \
    "decode time with/without extraction (ngl99)" "$(tail -1 "$RESULTS/timing.txt" | sed 's/^ratio with\/without extraction: //'), median of $RUNS"
echo
echo "results: $RESULTS (summary.json, compare.txt, timing.txt, run-gpu-check.log) in $((SECONDS - STARTED)) s"
if [[ $PASS == true ]]; then
    echo "PASS"
else
    echo "FAIL: ${FAILED[*]}"
    exit 1
fi
