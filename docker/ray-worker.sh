#!/usr/bin/env bash
# Start a Ray worker on one GPU of this host, claimed with a lock, and join the head.
#
# Docker hands every replica of a service the same devices (a reservation of
# `count: 1` is GPU 0 for all of them), so `docker compose up --scale
# ray-worker=N` would stack N workers on one GPU. Instead each replica sees all
# of the host's GPUs and claims the first free one by holding an flock on
# /data/locks/gpu<i> (a volume the replicas share) for as long as its raylet
# runs; a replica that dies releases its GPU with its process.
#
# Environment: RAY_HEAD_ADDRESS (host:port of the head's GCS, required),
# RAY_WORKER_NUM_CPUS (optional; Ray counts the container's CPUs otherwise),
# LOCK_DIR (default /data/locks).
set -euo pipefail

: "${RAY_HEAD_ADDRESS:?set RAY_HEAD_ADDRESS to the GCS address of the head, e.g. ray-head:6379}"
lock_dir="${LOCK_DIR:-/data/locks}"
mkdir -p "$lock_dir"

num_gpus="$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true)"
if [[ "$num_gpus" -eq 0 ]]; then
    echo "ray-worker: no GPU visible (is the NVIDIA container toolkit installed?)" >&2
    exit 1
fi

cpus=()
if [[ -n "${RAY_WORKER_NUM_CPUS:-}" ]]; then
    cpus=(--num-cpus="$RAY_WORKER_NUM_CPUS")
fi

busy=75  # flock's exit code when the GPU is already claimed
for ((gpu = 0; gpu < num_gpus; gpu++)); do
    rc=0
    CUDA_VISIBLE_DEVICES="$gpu" flock --nonblock --conflict-exit-code "$busy" "$lock_dir/gpu$gpu" \
        ray start --address="$RAY_HEAD_ADDRESS" --num-gpus=1 "${cpus[@]}" --block || rc=$?
    if [[ "$rc" -ne "$busy" ]]; then
        exit "$rc"
    fi
done
echo "ray-worker: all $num_gpus GPUs of this host are claimed by other workers; scale down" >&2
exit 1
