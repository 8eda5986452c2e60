#!/usr/bin/env bash
# Replay the README's GPU steps at the real LLaVA-Med-7B shape (random bf16 weights) in one go.
#
# On the GPU box (device tool; one H200, ~8 minutes: 462 s and 515 s measured), from the repository root:
#
#     SLAKEVQA_MISTRAL_TOKENIZER=bench_data/tokenizer.model PYTHONPATH=src bash benchmarks/gpu_walkthrough.sh
#
#   carry: ["bench_data", "gpu_wheels"]   (~44 MiB together; the limit is 64 MiB)
#
# Prepare both here first (both folders are git-ignored; never commit them):
#
#     .venv/bin/python benchmarks/prepare_walk_data.py --slake_root ../shared/slake/Slake1.0
#         # -> bench_data/walk/Slake1.0 (English questions of 8 train, 3 validation, 4 test
#         #    images of real SLAKE) and bench_data/tokenizer.model (Mistral-7B, from mistral-common)
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#         --platform manylinux2014_x86_64 -d gpu_wheels bitsandbytes==0.50.2
#         # the box has no network: QLoRA's bitsandbytes travels as this wheel (needs torch, numpy, packaging)
#     python3 -m pip download --no-deps --only-binary=:all: -d gpu_wheels liger-kernel==0.8.5
#         # the gpu extra: Liger's Triton kernels for training (pure Python; needs torch, triton)
#
# CPU rehearsal here (tiny model of the same architecture, fp32, no QLoRA; a few minutes):
#
#     bash benchmarks/gpu_walkthrough.sh --tiny
#
# Steps (benchmarks/gpu_walkthrough.py has the details): 0 build an original-format
# checkpoint; 1 convert-checkpoint + check; 2 train, kill -9 at the first checkpoint,
# resume, TensorBoard probes, then SIGTERM at the first checkpoint (exit 75) and resume; 3 eval the LoRA folder; 4 merge; 5 eval the merged folder
# (answers must equal step 3's); 6 plain transformers on the merged folder (ids must equal
# slakevqa's encoder); 7 compare + report; 8 QLoRA train + eval; 9 fp16 train, eval in
# fp16 and fp32. Each prints "PASS|FAIL|SKIP  step  seconds  peak GPU"; the table goes to
# $OUT/walkthrough.md and walkthrough.json, step logs to $OUT/logs.tar.gz. Exit code 1 if
# a step did not pass. Extra arguments go to gpu_walkthrough.py (--keep, --work, --budget).
#
# A second device call covers the README's other GPU lines (~6 min estimated; rehearsed with --tiny):
#
#     SLAKEVQA_MISTRAL_TOKENIZER=bench_data/tokenizer.model PYTHONPATH=src bash benchmarks/gpu_walkthrough.sh --part extra
#
# zero-shot eval of the original-format folder itself (converted once into the cache), score,
# full fine-tuning (--no-use_lora), the hybrid CLOSED objective, --mode diagnose.
set -euo pipefail
cd "$(dirname "$0")/.."

# The venv here; the box's python3 there (the working tree travels without .venv).
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"

tiny=0
for arg in "$@"; do [ "$arg" = "--tiny" ] && tiny=1; done

# The box has no network: QLoRA's bitsandbytes and the gpu extra's liger-kernel (training's default
# --kernels auto takes it when installed) travel as wheels in gpu_wheels/.
for package in bitsandbytes liger_kernel; do
    if [ "$tiny" = 0 ] && ! "$PYTHON" -c "import $package" 2>/dev/null; then
        if ls gpu_wheels/$package-*.whl >/dev/null 2>&1; then
            # --target: a private folder, no write into the box's site-packages; --no-compile: faster.
            "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site gpu_wheels/$package-*.whl
            case ":${PYTHONPATH:-}:" in *:/tmp/site:*) ;; *) export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" ;; esac
        else
            echo "note: no gpu_wheels/$package-*.whl and no $package installed (bitsandbytes: the QLoRA steps fail;"
            echo "      liger_kernel: training runs --kernels plain)"
        fi
    fi
done

# The Mistral tokenizer: bench_data's copy when present (the box cannot install mistral-common).
if [ -z "${SLAKEVQA_MISTRAL_TOKENIZER:-}" ] && [ -f bench_data/tokenizer.model ]; then
    export SLAKEVQA_MISTRAL_TOKENIZER=bench_data/tokenizer.model
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"

exec "$PYTHON" benchmarks/gpu_walkthrough.py "$@"
