"""benchmarks/step_profile.py's join of a trace with the compiled HLO, on a synthetic trace."""

from benchmarks.step_profile import hlo_instructions, render, summarize

HLO = """
ENTRY %main (p: f32[2,8,8,3]) -> f32[2,8,8,4] {
  %conv.1 = f32[2,8,8,4]{3,2,1,0} convolution(%p, %w), window={size=3x3}, metadata={op_name="jit(train_step)/jvp(Net)/conv/conv_general_dilated"}
  %add_fusion = f32[2,8,8,4]{3,2,1,0} fusion(%conv.1), kind=kLoop, calls=%f, metadata={op_name="jit(train_step)/jvp(Net)/bn/add"}
  %multi_fusion = (f32[4]{0}, f32[4]{0}) fusion(%add_fusion), kind=kInput, calls=%g, metadata={op_name="jit(train_step)/transpose(jvp(Net))/bn/reduce_sum"}
  ROOT %ynn_fusion.3 = f32[2,8,8,4]{3,2,1,0} fusion(%add_fusion), kind=kCustom, calls=%h
}
"""


def _event(name, start, end):
  return {"ph": "X", "name": name, "ts": start, "dur": end - start}


def test_summarize_counts_kernel_time_scopes_and_gaps_after_convolutions():
  ins = hlo_instructions(HLO)
  assert ins["conv.1"][1] == "convolution" and ins["multi_fusion"][1] == "fusion"
  assert ins["multi_fusion"][0].startswith("(f32[4]")  # tuple shapes parse
  assert ins["ynn_fusion.3"][2] == "?"  # no op_name
  events = [_event("conv.1", 0, 10),  # the launch only; the work shows as the gap after it
            {"ph": "M", "name": "thread_name"},
            _event("ThreadpoolListener::Record", 20, 30),  # not an HLO instruction: ignored
            _event("add_fusion", 1000, 1500), _event("multi_fusion", 1400, 2000),  # overlap
            _event("ynn_fusion.3", 2500, 2600)]
  s = summarize(events, ins, steps=2, depth=2)
  # per step (2 steps): microseconds / 1e3 / 2
  assert s["kernels"] == {"conv.1": 0.005, "add_fusion": 0.25, "multi_fusion": 0.3,
                          "ynn_fusion.3": 0.05}
  assert s["scopes"] == {"jvp(Net)/conv": 0.005, "jvp(Net)/bn": 0.25,
                         "transpose(jvp(Net))/bn": 0.3, "?": 0.05}
  assert s["kinds"] == {"convolution": 0.005, "fusion": 0.55, "fusion (library)": 0.05}
  assert s["conv_gaps"] == {"conv.1": (990 + 500) / 2e3}
  assert s["span_ms"] == 1.3 and s["kernel_union_ms"] == (10 + 1000 + 100) / 2e3
  text = render(s, {"date": "2026-11-26", "device": "cpu", "jax": "0", "commit": "abc",
                    "command": "x", "ms_per_step": 1.3, "steps": 2}, top=10)
  assert "| 0.74 | convolution f32[2,8,8,4]{3,2,1,0} jvp(Net)/conv/conv_general_dilated" in text


def test_gaps_before_any_convolution_are_counted_apart():
  ins = hlo_instructions(HLO)
  s = summarize([_event("add_fusion", 0, 100), _event("conv.1", 300, 310)], ins, steps=1)
  assert s["conv_gaps"] == {"(none)": 0.2}


def test_a_gpu_trace_counts_the_device_kernels_by_their_hlo_op(tmp_path):
  import gzip
  import json

  from benchmarks.step_profile import read_trace, trace_device
  hlo = HLO.replace("convolution(%p, %w)", "custom-call(%p, %w)")  # cuDNN: a custom call
  events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
            _event("add_fusion", 0, 50),  # the host's side of a launch: not a kernel
            {**_event("sm90_xmma_fprop_implicit_gemm", 100, 300), "pid": 2,
             "args": {"hlo_op": "conv.1"}},
            {**_event("sm90_xmma_fprop_splitk_reduce", 300, 340), "pid": 2,
             "args": {"hlo_op": "conv.1"}},  # a second kernel of the same custom call
            {**_event("loop_add_fusion", 400, 500), "pid": 2, "args": {"hlo_op": "add_fusion"}},
            {**_event("memcpy", 500, 520), "pid": 2, "args": {}}]  # no instruction: left out
  for e in events[2:]:
    e.setdefault("pid", 1)
  (tmp_path / "plugins").mkdir()
  with gzip.open(tmp_path / "plugins" / "host.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  (tmp_path / "train_step.hlo.txt").write_text(hlo)
  events, ins = read_trace(str(tmp_path))
  assert trace_device(events) == "/device:GPU:0"
  s = summarize(events, ins, steps=1)
  assert s["kernels"] == {"conv.1": 0.24, "add_fusion": 0.1}
  assert s["kinds"] == {"custom-call": 0.24, "fusion": 0.1}
  assert s["span_ms"] == 0.4 and s["kernel_union_ms"] == 0.34  # idle 100 us between them
  text = render(s, {"date": "2026-11-26", "device": "/device:GPU:0", "jax": "0", "commit": "abc",
                    "command": "x", "steps": 1, "platform": "gpu"}, top=10)
  assert "idle between kernels 0.1 ms" in text and "Kernel-free gaps" not in text
  assert "| 0.24 | custom-call" in text
