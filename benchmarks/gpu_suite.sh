#!/usr/bin/env bash
# Run GPU jobs in priority order inside one device call, each within what is left of a time budget, and
# pack what each wrote into $OUT/suite.tar.gz after every job (a call stopped at its limit still returns
# the jobs that finished; the device tool returns at most 8 files, so the walkthroughs' files travel packed).
#
#     SLAKEVQA_TOKENIZERS=bench_data/tokenizers bash benchmarks/gpu_suite.sh 540 cuda_tests gemma3 med qwen2_5_vl
#     #   carry ["bench_data/Slake1.0", "bench_data/tokenizers", "bench_data/tokenizer.model", "bench_data/walk",
#     #          "gpu_wheels/liger_kernel-0.8.5-py3-none-any.whl"]
#
# Jobs: cuda_tests (the CUDA-only tests of the attention kernels, flat packing and reused decoding); med
# (gpu_walkthrough.sh's LLaVA-Med steps up to eval: build, convert, check, LoRA killed and resumed, probes, SIGTERM
# and resume, eval); llava_1_5, qwen2_5_vl, gemma3 (that family's walkthrough, with the fast backend's speed on
# bench_data/Slake1.0's English test split); eval_med (benchmarks/eval_stages.py at LLaVA-Med's shape: the default,
# whose prefill lays the images' rows end to end, against padded rows and against reused decoding, full and
# trained lengths, images prepared in the timing serially and by worker threads); prefetch (benchmarks/image_prefetch.py:
# the host's image preparation per family, serial and threaded); transfer (benchmarks/pixel_transfer.py: a batch's images
# to the device, joined and cast on the host against on the device); train_med (benchmarks/train_packing.py at LLaVA-Med's shape: the default, flat rows, against
# padded rows and +keep8); compile_med (eager vs compiled layers, loss for loss, LoRA dropout 0 and 0.05);
# eval_FAMILY (benchmarks/family_eval_speed.py: fast vs plain, and fast with reused decoding, in one run);
# train_FAMILY (benchmarks/train_packing.py: one row per question vs packed, varlen, Liger). A job gets the budget
# left minus 10 s, at most its own cap.
set -uo pipefail
cd "$(dirname "$0")/.."
budget="$1"; shift
out="${OUT:-/tmp/gpu_suite_out}"
mkdir -p "$out/suite"
began=$(date +%s)
export PYTHONUNBUFFERED=1 SLAKEVQA_MISTRAL_TOKENIZER="${SLAKEVQA_MISTRAL_TOKENIZER:-bench_data/tokenizer.model}"
tiny="${TINY:+--tiny}"  # TINY=1: a CPU rehearsal (tiny models; the walkthroughs need bench_data/walk only)
# train_packing's +liger needs liger-kernel importable here too (the walkthroughs install it for themselves)
if [ -z "$tiny" ] && ! python3 -c "import liger_kernel" 2>/dev/null && ls gpu_wheels/liger_kernel-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site gpu_wheels/liger_kernel-*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

left() { echo $(( budget - ($(date +%s) - began) - 10 )); }

run_job() {  # name cap command...
    local name="$1" cap="$2"; shift 2
    local seconds; seconds=$(left)
    (( seconds > cap )) && seconds=$cap
    if (( seconds < 30 )); then
        echo "SKIP  $name  (budget spent)" | tee -a "$out/suite/summary.txt"; return
    fi
    echo "== $name ($seconds s) $(date -u +%H:%M:%S)"
    local start; start=$(date +%s)
    timeout "$seconds" "$@" > "$out/suite/$name.log" 2>&1
    local rc=$?
    echo "rc $rc  $name  $(( $(date +%s) - start )) s" | tee -a "$out/suite/summary.txt"
    tail -n 14 "$out/suite/$name.log"
    tar -czf "$out/suite.tar.gz" -C "$out" suite
}

for job in "$@"; do
    case "$job" in
        cuda_tests)
            run_job "$job" 60 env PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" python3 -m pytest -q -p no:cacheprovider \
                tests/test_kernels_segment_attention.py tests/test_evaluation_rows.py tests/test_decode_workspace.py \
                tests/test_flat_packing.py -k cuda ;;
        med)
            run_job "$job" 280 bash benchmarks/gpu_walkthrough.sh $tiny --steps 0_,1a,1b,2a,2b,2c,3_ \
                --budget $(( $(left) > 280 ? 270 : $(left) - 10 )) --out "$out/suite/med" ;;
        llava_1_5|qwen2_5_vl|gemma3)
            run_job "$job" 300 bash benchmarks/gpu_walkthrough.sh $tiny --part family --family "$job" \
                --speed_root bench_data/Slake1.0 --budget $(( $(left) > 300 ? 290 : $(left) - 10 )) \
                --out "$out/suite/$job" ;;
        eval_med)
            run_job "$job" 300 env PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" python3 benchmarks/eval_stages.py $tiny \
                --slake_root bench_data/Slake1.0 --batch_size 256 \
                --settings rows,rows+padded,rows+reuse,rows+trained,rows+reuse+trained,rows+cold,rows+cold+prefetch \
                --out "$out/suite/eval_med.json" ;;
        eval_*)
            run_job "$job" 240 env PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" python3 benchmarks/family_eval_speed.py $tiny --family "${job#eval_}" \
                --slake_root bench_data/Slake1.0 --plain_limit 96 --out "$out/suite/$job" ;;
        prefetch)  # the host's image preparation per family, serial against worker threads (no GPU work)
            run_job "$job" 90 env PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" python3 benchmarks/image_prefetch.py \
                --slake_root bench_data/Slake1.0 --workers 0,4,8,15 --out "$out/suite/$job.json" ;;
        transfer)  # a batch's images to the device: joined and cast on the host (the old way) against on the device
            run_job "$job" 90 env PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" python3 benchmarks/pixel_transfer.py \
                --slake_root bench_data/Slake1.0 --out "$out/suite/$job.json" ;;
        train_med)  # LLaVA-Med's 80 samples/s target: the default (flat rows) against padded rows and +keep8
            run_job "$job" 240 env PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" python3 benchmarks/train_packing.py $tiny \
                --slake_root bench_data/Slake1.0 --steps 6 --warmup 2 \
                --modes packed+ckpt+varlen+liger@64,packed+ckpt+varlen+liger+padded@64,packed+ckpt+keep8+varlen+liger@64 \
                --out "$out/suite/$job.json" ;;
        compile_med)  # why compiled layers left the eager loss curve at 7B (RESULTS.md, issue 15): with and without dropout
            for dropout in 0 0.05; do
                run_job "${job}_$dropout" 200 env PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" python3 benchmarks/train_packing.py \
                    $tiny --slake_root bench_data/Slake1.0 --steps 4 --warmup 2 --lora_dropout "$dropout" \
                    --modes packed+ckpt@64,packed+ckpt+compile@64 --out "$out/suite/${job}_$dropout.json"
            done ;;
        train_*)
            run_job "$job" 240 env PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" python3 benchmarks/train_packing.py $tiny --family "${job#train_}" \
                --slake_root bench_data/Slake1.0 --steps 4 --warmup 2 \
                --modes naive+ckpt@16,packed+ckpt@64,packed+ckpt+varlen@64,packed+ckpt+varlen+liger@64 \
                --out "$out/suite/$job.json" ;;
        *) echo "unknown job $job" ;;
    esac
done
cat "$out/suite/summary.txt"
