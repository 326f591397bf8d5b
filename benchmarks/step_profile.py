"""Where one model's train step spends its time: a jax.profiler trace of the timed steps joined
with the compiled HLO, written as a markdown table.

  .venv/bin/python benchmarks/step_profile.py --model=unext --size=256 --batch=8 --steps=10
  .venv/bin/python benchmarks/step_profile.py --model=unet --features=32 --size=128

Each kernel event in the trace carries the name of its HLO instruction; the HLO gives that
instruction's opcode and the op_name of the JAX code that produced it. The table sums kernel
time per step by op_name scope (the model's module path, forward `jvp(...)` or backward
`transpose(jvp(...))`), by kind, and lists the largest kernels.

One correction the trace needs on CPU: XLA's CPU convolutions run asynchronously on the Eigen
pool, and their event covers only the launch. Their time shows as gaps in which no kernel event
is open; each such gap is counted here for the convolution launched last before it (also gaps
between steps, a few ms, land on the step's last convolution). On GPUs the kernels are read from
the device's processes ('/device:GPU:0' in the trace), each joined to its HLO instruction by
the `hlo_op` its event carries (cuDNN's and cuBLAS's kernels under their custom call); there
the kernel events cover the work, and the time between them is the device's idle time (this
GPU reading follows how public tools read these traces and is tested on a synthetic trace;
no GPU trace has been read with it yet).

`--from_trace=DIR` reads a trace and `train_step.hlo.txt` written earlier (`jaxseg bench
--profile=DIR`, e.g. on a lent GPU machine whose files came back) instead of running the step.
"""

import collections
import datetime
import glob
import gzip
import json
import os
import re
import sys
import tempfile

from absl import app, flags

from jaxseg.allocator import reexec_with_malloc_defaults

_MODEL = flags.DEFINE_string("model", "unext", "registry model name")
_FEATURES = flags.DEFINE_integer("features", 16, "model.features: 16 for UNeXt, 32 for the LGG "
                                  "UNet, as in vs_torch.py")
_SIZE = flags.DEFINE_integer("size", 256, "square input side")
_BATCH = flags.DEFINE_integer("batch", 8, "batch size")
_DTYPE = flags.DEFINE_string("dtype", "float32", "model.dtype")
_CONV_IMPL = flags.DEFINE_string("conv_impl", "auto", "model.conv_impl")
_STEPS = flags.DEFINE_integer("steps", 10, "traced steps (after 5 warm-up steps)")
_DEPTH = flags.DEFINE_integer("depth", 3, "op_name scope depth to sum by")
_TOP = flags.DEFINE_integer("top", 25, "rows per table")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results"), "folder")
_FROM = flags.DEFINE_string("from_trace", None, "a folder with a trace and train_step.hlo.txt "
                            "(jaxseg bench --profile): read it instead of running the step; "
                            "--steps must be the traced step count")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_instructions(hlo_text: str) -> dict:
  """{instruction name: (shape, opcode, op_name or '?')} from compiled HLO text."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      op = _OP_NAME.search(line)
      out.setdefault(m.group(1), (m.group(2), m.group(3), op.group(1) if op else "?"))
  return out


def _kind(name: str, opcode: str) -> str:
  if opcode != "fusion":
    return opcode
  if name.startswith(("ynn_fusion", "xnn_fusion")):
    return "fusion (library)"
  if "copy" in name or "transpose" in name:
    return "fusion (copy / transpose)"
  return "fusion"


def _device_pids(events: list) -> set:
  """The trace's accelerator processes ('/device:GPU:0', ...); none in a CPU trace."""
  return {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
          and e.get("args", {}).get("name", "").startswith("/device:")}


def _kernel_events(events: list, instructions: dict) -> list:
  """(start, end, HLO instruction) of the trace's kernels: on CPU the host events named after
  an instruction; with accelerator processes in the trace, their events, by their hlo_op."""
  devices = _device_pids(events)
  out = []
  for e in events:
    if e.get("ph") != "X":
      continue
    if devices:
      name = e.get("args", {}).get("hlo_op") if e.get("pid") in devices else None
    else:
      name = e.get("name")
    if name in instructions:
      out.append((e["ts"], e["ts"] + e["dur"], name))
  return sorted(out)


def summarize(events: list, instructions: dict, steps: int, depth: int = 3) -> dict:
  """Per-step milliseconds from trace events ("X" events with name, ts, dur in microseconds):
  by kernel, by op_name scope (`depth` levels), by kind, and the kernel-free gaps, each counted
  for the convolution launched last before it."""
  kernels = _kernel_events(events, instructions)
  per_kernel, per_scope, per_kind = (collections.defaultdict(float) for _ in range(3))
  gaps = collections.defaultdict(float)
  open_until, last_conv = None, None  # kernels are sorted by start: the latest end so far
  for start, end, name in kernels:
    _, opcode, op_name = instructions[name]
    per_kernel[name] += end - start
    scope = "/".join(op_name.replace("jit(train_step)/", "").split("/")[:depth])
    per_scope[scope] += end - start
    per_kind[_kind(name, opcode)] += end - start
    if open_until is not None and start > open_until:
      gaps[last_conv or "(none)"] += start - open_until
    open_until = end if open_until is None else max(open_until, end)
    if opcode == "convolution":
      last_conv = name
  span = (open_until - kernels[0][0]) if kernels else 0.0
  covered = span - sum(gaps.values())  # the union of the kernel intervals
  ms = lambda d: {k: v / 1e3 / steps for k, v in d.items()}  # noqa: E731
  return {"kernels": ms(per_kernel), "scopes": ms(per_scope), "kinds": ms(per_kind),
          "conv_gaps": ms(gaps), "span_ms": span / 1e3 / steps,
          "kernel_union_ms": covered / 1e3 / steps, "instructions": instructions}


def _table(title: str, rows: dict, top: int, describe=None) -> list:
  lines = [f"\n### {title}\n", "| ms / step | " + ("what | " if describe else "") + "name |",
           "|---|" + ("---|" if describe else "") + "---|"]
  for name, v in sorted(rows.items(), key=lambda kv: -kv[1])[:top]:
    lines.append(f"| {v:.2f} | " + (f"{describe(name)} | " if describe else "") + f"{name} |")
  return lines


def render(s: dict, meta: dict, top: int) -> str:
  ins = s["instructions"]
  describe = lambda n: (f"{ins[n][1]} {ins[n][0][:40]}" if n in ins else "")  # noqa: E731
  cpu = meta.get("platform", "cpu") == "cpu"
  conv_ms = sum(v for k, v in s["conv_gaps"].items() if k != "(none)")
  gaps = (f"kernel-free gaps after convolutions {conv_ms:.1f} ms (asynchronous CPU convolutions; "
          "see the script's docstring)" if cpu else
          f"idle between kernels {s['span_ms'] - s['kernel_union_ms']:.1f} ms")
  lines = [f"{meta['date']} · {meta['device']} · jax {meta['jax']} · commit {meta['commit']} · "
           f"`{meta['command']}`", "",
           (f"Step: {meta['ms_per_step']:.1f} ms median synced ({meta['steps']} traced steps). "
            if meta.get("ms_per_step") else f"{meta['steps']} traced steps. ") +
           f"Per step: trace span {s['span_ms']:.1f} ms, kernel events open "
           f"{s['kernel_union_ms']:.1f} ms, {gaps}."]
  lines += _table("By op_name scope (kernel events)", s["scopes"], top)
  lines += _table("By kind (kernel events)", s["kinds"], top)
  where = lambda n: (f" {ins[n][2].replace('jit(train_step)/', '')[:70]}"  # noqa: E731
                     if n in ins else "")
  if cpu:
    lines += _table("Kernel-free gaps by the convolution launched before them", s["conv_gaps"],
                    top, lambda n: describe(n) + where(n))
  lines += _table("Largest kernels", s["kernels"], top, lambda n: describe(n) + where(n))
  return "\n".join(lines) + "\n"


def read_trace(trace_dir: str) -> tuple:
  """(trace events, HLO instructions) from a `jaxseg bench --profile=DIR` folder."""
  trace = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
  with gzip.open(trace) as f:
    events = json.load(f)["traceEvents"]
  with open(os.path.join(trace_dir, "train_step.hlo.txt")) as f:
    return events, hlo_instructions(f.read())


def trace_device(events: list) -> str:
  """The first accelerator process's name ('/device:GPU:0'), or 'cpu'."""
  devices = _device_pids(events)
  names = sorted(e["args"]["name"] for e in events if e.get("ph") == "M"
                 and e.get("name") == "process_name" and e["pid"] in devices)
  return names[0] if names else "cpu"


def main(argv):
  del argv
  import jax

  from jaxseg.bench import bench_step, git_commit
  from jaxseg.config import default_config
  meta = {"date": datetime.date.today().isoformat(), "jax": jax.__version__,
          "commit": git_commit(), "command": " ".join(["benchmarks/step_profile.py", *sys.argv[1:]]),
          "steps": _STEPS.value}
  if _FROM.value:
    trace_dir, name = _FROM.value, "trace"
    events, instructions = read_trace(trace_dir)
    meta["device"] = trace_device(events)
    meta["platform"] = meta["device"].split(":")[1].lower() if ":" in meta["device"] else "cpu"
  else:
    c = default_config()
    c.model.name, c.model.features, c.model.dtype = _MODEL.value, _FEATURES.value, _DTYPE.value
    c.model.conv_impl = _CONV_IMPL.value
    c.data.image_size, c.data.batch_size = _SIZE.value, _BATCH.value
    trace_dir = tempfile.mkdtemp(prefix="jaxseg-profile-")
    name = f"{c.model.name}-{_SIZE.value}" + ("" if _CONV_IMPL.value == "auto" else f"-{_CONV_IMPL.value}")
    r = bench_step(c, steps=_STEPS.value, warmup=5, profile_dir=trace_dir)
    events, instructions = read_trace(trace_dir)
    meta.update(device=r["device"], platform=jax.devices()[0].platform,
                ms_per_step=r["ms_per_step"])
  text = render(summarize(events, instructions, _STEPS.value, _DEPTH.value), meta, _TOP.value)
  os.makedirs(_OUT.value, exist_ok=True)
  path = os.path.join(_OUT.value, f"profile-{name}-{meta['date']}-{meta['platform']}.md")
  with open(path, "w") as f:
    f.write(text)
  print(text)
  print(f"wrote {path} (trace and HLO in {trace_dir})")


if __name__ == "__main__":
  reexec_with_malloc_defaults(command=[sys.executable, *sys.argv])
  app.run(main)
