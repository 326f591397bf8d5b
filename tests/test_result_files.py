"""benchmarks/result_files.py: the names and files every benchmark script writes."""

import json

from benchmarks.result_files import stem, table, write


def test_stem_keeps_names_a_device_copy_keeps(tmp_path):
  s = stem(str(tmp_path), "models", "2026-11-26", "gpu", "", "GI scratch", "BraTS 2-D")
  assert s == str(tmp_path / "models-2026-11-26-gpu-GI_scratch-BraTS_2-D")


def test_write_rewrites_both_files_whole(tmp_path):
  path = stem(str(tmp_path / "out"), "vs_torch", "cpu")
  header = ["model", "img/s"]
  write(path, {"rows": [{"model": "unet"}]}, table(header, [["unet", "1.00"]]))
  write(path, {"rows": [{"model": "unet"}, {"model": "unext"}]},
        table(header, [["unet", "1.00"], ["unext", "2.50"]]))
  assert json.loads(open(path + ".json").read())["rows"][1] == {"model": "unext"}
  assert open(path + ".md").read() == ("| model | img/s |\n|---|---|\n| unet | 1.00 |\n"
                                       "| unext | 2.50 |\n")


def test_started_names_the_minute_in_utc():
  import datetime
  import re

  from benchmarks.result_files import started
  before = datetime.datetime.now(datetime.UTC).replace(second=0, microsecond=0)
  s = started()
  assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-\d{4}", s)
  t = datetime.datetime.strptime(s, "%Y-%m-%d-%H%M").replace(tzinfo=datetime.UTC)
  assert before <= t <= before + datetime.timedelta(minutes=1)


def test_host_cpu_names_the_model_from_cpuinfo(tmp_path):
  """Every table's header names the host CPU: JAX calls any CPU "cpu"."""
  from benchmarks.result_files import host_cpu
  info = tmp_path / "cpuinfo"
  info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                  "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx512f\n")
  assert host_cpu(str(info)) == "Intel(R) Xeon(R) Processor"
  missing = host_cpu(str(tmp_path / "absent"))  # not Linux: the platform's own name
  assert missing and missing != "Intel(R) Xeon(R) Processor"
