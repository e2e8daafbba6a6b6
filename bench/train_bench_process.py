"""The training bench's processes: the ``_worker`` and ``_reload`` modes that run in the child
processes, and running one child with its output logged and a timeout."""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ----------------------------------------------------------------------------------------------
# subprocess modes
# ----------------------------------------------------------------------------------------------


def worker(argv: list[str]) -> int:
    """``_worker RESULT -- <trainer.finetune args>``: run the trainer in this process, then
    write this rank's peak GPU memory to ``RESULT.rank<R>.json``."""
    result = Path(argv[0])
    trainer_argv = argv[2:] if argv[1:2] == ["--"] else argv[1:]
    import torch

    from trainer.finetune import main

    profile_step = int(os.environ.get("GLMFT_BENCH_PROFILE_STEP", "0"))
    if profile_step and os.environ.get("RANK", "0") == "0":  # one rank speaks for all
        _add_profiler(profile_step, result.parent / "profile.json")
    if os.environ.get("GLMFT_BENCH_DISABLE_CUDNN_SDP") == "1":
        # pytorch/pytorch#196678: cuDNN SDPA backward NaN with a mask on H100/H200 (torch 2.11+)
        torch.backends.cuda.enable_cudnn_sdp(False)
    t0 = time.time()
    rc = main(trainer_argv)
    rank = int(os.environ.get("RANK", "0"))
    record: dict[str, Any] = {"rank": rank, "rc": rc, "wall_s": round(time.time() - t0, 2)}
    # host memory high-water mark (KiB on Linux): CPU Adam's states live here under offload
    record["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if torch.cuda.is_available():
        record["device"] = torch.cuda.get_device_name()
        record["max_memory_allocated"] = torch.cuda.max_memory_allocated()
        record["max_memory_reserved"] = torch.cuda.max_memory_reserved()
    Path(f"{result}.rank{rank}.json").write_text(json.dumps(record))
    return rc


def _add_profiler(first_step: int, path: Path) -> None:
    """Profile training steps ``first_step + 1`` and ``+ 2`` of the trainer built next: GPU busy
    time against wall time (how launch-bound the step is) and the top kernels."""
    import torch
    from transformers import TrainerCallback

    from trainer import finetune

    class ProfileCallback(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.prof: Any = None
            self.t0 = 0.0

        def on_step_begin(self, _args: Any, state: Any, _control: Any, **_kw: Any) -> None:
            if state.global_step == first_step and self.prof is None:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                    torch.cuda.synchronize()
                self.prof = torch.profiler.profile(activities=activities)
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_step_end(self, _args: Any, state: Any, _control: Any, **_kw: Any) -> None:
            if self.prof is None or state.global_step != first_step + 2:
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = (time.perf_counter() - self.t0) / 2
            self.prof.__exit__(None, None, None)
            path.write_text(json.dumps(_profile_summary(self.prof, wall), indent=1))
            self.prof = None

    original = finetune.GlmSeq2SeqTrainer.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.add_callback(ProfileCallback())

    finetune.GlmSeq2SeqTrainer.__init__ = init  # type: ignore[method-assign]


_KERNEL_KINDS = (
    ("communication", ("nccl",)),  # on their own stream, overlapping compute
    ("attention", ("flash", "fmha", "attention", "mem_eff")),  # before cutlass matmuls
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "matmul", "sm90")),
    ("cross-entropy", ("log_softmax", "nll_loss", "softmax")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
)


def _profile_summary(prof: Any, wall_s: float) -> dict[str, Any]:
    """Per step: wall time, GPU compute kernel time (busy share), kernel time by kind (NCCL's
    collectives apart: they run beside compute, not in the busy share), top kernels."""
    from torch.autograd import DeviceType

    kernels: dict[str, float] = {}
    for evt in prof.events():
        if evt.device_type == DeviceType.CUDA:
            kernels[evt.name] = kernels.get(evt.name, 0.0) + evt.device_time / 1e3 / 2
    kinds: dict[str, float] = {}
    for name, ms in kernels.items():
        lower = name.lower()
        kind = next((k for k, keys in _KERNEL_KINDS if any(x in lower for x in keys)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + ms
    busy = sum(ms for kind, ms in kinds.items() if kind != "communication")
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:15]
    cpu_ops = sorted(
        ((e.key, e.self_cpu_time_total / 1e3 / 2) for e in prof.key_averages()),
        key=lambda kv: -kv[1],
    )[:10]
    return {
        "wall_ms_per_step": round(wall_s * 1e3, 1),
        "gpu_kernel_ms_per_step": round(busy, 1),
        "gpu_busy": round(busy / (wall_s * 1e3), 3) if wall_s else None,
        "kernel_ms_by_kind": {k: round(v, 1) for k, v in sorted(kinds.items())},
        "top_kernels_ms": [[name[:90], round(ms, 2)] for name, ms in top],
        "top_cpu_self_ms": [[name[:60], round(ms, 2)] for name, ms in cpu_ops],
    }


def reload_check(argv: list[str]) -> int:
    """``_reload CHECKPOINT DATA_DIR RESULT``: load a saved full model in a new process and run
    one forward pass with labels on four training rows."""
    checkpoint, data_dir, result = Path(argv[0]), Path(argv[1]), Path(argv[2])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data import LeftPadCollator
    from trainer.template import SpecialTokens, encode_train

    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    t_load = time.perf_counter() - t0
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    special = SpecialTokens.from_tokenizer(tokenizer)
    lines = (data_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    features = []
    for line in lines:
        ex = encode_train(
            tokenizer, special, json.loads(line)["messages"], combine=True, max_length=1025
        )
        features.append({"input_ids": ex.input_ids, "labels": ex.labels})
    collated = LeftPadCollator(pad_id=special.endoftext)(features)
    batch = {k: v.to(device) for k, v in collated.items()}
    with torch.no_grad():
        loss = float(model(**batch).loss)
    record = {
        "ok": math.isfinite(loss),
        "loss": loss,
        "load_s": round(t_load, 2),
        "params": sum(p.numel() for p in model.parameters()),
        "class": type(model).__name__,
    }
    result.write_text(json.dumps(record))
    print(json.dumps(record))
    return 0 if record["ok"] else 1


# ----------------------------------------------------------------------------------------------
# running a child process
# ----------------------------------------------------------------------------------------------


def run_process(
    cmd: list[str], log: Path, timeout: float, env: dict[str, str]
) -> tuple[int, float]:
    """Run ``cmd`` in its own process group, tee-ing its output to ``log``; kill it at timeout."""
    t0 = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        if proc.stdout is None:
            raise RuntimeError("no stdout pipe")
        deadline = time.monotonic() + timeout
        timed_out = False
        for line in proc.stdout:
            fh.write(line)
            if _interesting(line):
                sys.stdout.write("    | " + line)
                sys.stdout.flush()
            if time.monotonic() > deadline:
                timed_out = True
                break
        if timed_out or proc.poll() is None:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            fh.write(f"\n[train_bench] killed after {timeout:.0f} s\n")
            return 124, time.perf_counter() - t0
    return proc.returncode, time.perf_counter() - t0


def _interesting(line: str) -> bool:
    keys = (
        "Error",
        "error",
        "Traceback",
        "trainable params",
        "'loss'",
        "train_runtime",
        "killed",
        "out of memory",
        "Exception",
        "rank0]:",
        'ok":',
    )
    return any(k in line for k in keys) and "Warning" not in line
