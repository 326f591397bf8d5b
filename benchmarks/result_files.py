"""Where the benchmark scripts put what they measured: STEM.json and STEM.md side by side,
rewritten whole after each row, so that a run stopped at a time limit (a lent GPU's lease) keeps
the rows it finished. Names keep to letters, digits, '.', '_' and '-': other names do not come
back from a device machine."""

import datetime
import json
import os
import platform
import re


def started() -> str:
  """The run's start, YYYY-MM-DD-HHMM in UTC: the time part of every table's name, so that a
  second run on the same day does not overwrite the first."""
  return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M")


def host_cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The host CPU's model name (cpuinfo's first "model name", else the platform's), for every
  table's header: this project's 2-core CPU machine has been an AMD and an Intel one on
  different days, and JAX names either "cpu"."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown"


def stem(folder: str, *parts: str) -> str:
  """folder/PART-PART-..., empty parts left out, other characters replaced by '_'."""
  name = "-".join(p for p in parts if p)
  return os.path.join(folder, re.sub(r"[^A-Za-z0-9_.-]+", "_", name))


def table(header: list, rows: list) -> str:
  """A markdown table of already formatted cells."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def write(path_stem: str, record: dict, markdown: str) -> str:
  """Writes record as PATH_STEM.json and markdown as PATH_STEM.md; returns path_stem."""
  os.makedirs(os.path.dirname(path_stem) or ".", exist_ok=True)
  with open(path_stem + ".json", "w") as f:
    json.dump(record, f, indent=1)
  with open(path_stem + ".md", "w") as f:
    f.write(markdown)
  return path_stem
