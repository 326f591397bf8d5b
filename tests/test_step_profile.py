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
