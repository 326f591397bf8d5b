"""jaxseg command line: train | evaluate | predict | bench | sweep | report.

  jaxseg train    --config=configs/lgg_unet.py --workdir=runs/lgg [--config.optim.lr=3e-4]
  jaxseg evaluate --config=configs/lgg_unet.py --workdir=runs/lgg [--split=test] [--checkpoint=best]
                  [--per_case [--tta] [--ensemble=best,latest,runs/lgg2]]
  jaxseg predict  --config=configs/lgg_unet.py --workdir=runs/lgg --input=a.tif,dir/ --output=out/
  jaxseg predict  --config=configs/gi_cnn_scratch.py --workdir=runs/gi --split=test --submission=sub.csv
  jaxseg bench    --config=configs/lgg_unet.py [--what=step|loop|data|all] [--bench_steps=50]
  jaxseg sweep    --config=configs/lgg_unet_bn_study.py --workdir=runs/bn [--sweep='optim.lr=[0.1,1e-4]']
                  [--sweep_index=N]
  jaxseg report   --workdir=runs/a,runs/b --output=reports/ab [--split=val] [--cases=3]

Config overrides are `--config.<path>=<value>`; unknown keys and wrong types are errors.
"""

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from jaxseg.allocator import reexec_with_malloc_defaults

COMMANDS = ("train", "evaluate", "predict", "bench", "sweep", "report")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py); override fields with "
    "--config.a.b=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run folder: checkpoints, split.json, metrics.jsonl. A rerun with the same "
    "workdir resumes from its latest checkpoint.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "best", "evaluate/predict: 'best' (by validation Dice), 'latest' or a step.")
_SPLIT = flags.DEFINE_enum("split", "val", ["train", "val", "test"],
                           "evaluate, report, predict --submission: which split.")
_PER_CASE = flags.DEFINE_bool(
    "per_case", False, "evaluate: score whole volumes per class (Dice, IoU, precision, recall, "
    "HD95 in mm) and write eval_<split>_cases.json/.csv.")
_TTA = flags.DEFINE_bool("tta", False, "evaluate --per_case: average over flips of the input.")
_ENSEMBLE = flags.DEFINE_list(
    "ensemble", [], "evaluate --per_case: checkpoints to average instead of --checkpoint: "
    "best, latest, a step, or other workdirs of the same model as PATH[:best|latest|STEP].")
_OVERLAP = flags.DEFINE_float(
    "overlap", 0.5, "evaluate --per_case: sliding-window overlap for volumes larger than the "
    "training patch.")
_INPUT = flags.DEFINE_list(
    "input", [], "predict: image files (.tif/.png) or folders of them, comma-separated.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "predict: folder for the masks; report: folder for the report (created).")
_SUBMISSION = flags.DEFINE_string(
    "submission", None, "predict (GI data): write the competition CSV (id,class,predicted RLE) "
    "for every slice of --split to this file, instead of masks for --input.")
_OVERLAY = flags.DEFINE_bool(
    "overlay", False, "predict: also write a PNG of image | ground truth (if found) | prediction.")
_WHAT = flags.DEFINE_enum("what", "all", ["step", "loop", "data", "all"],
                          "bench: compiled train step, end-to-end loop with Grain, the input "
                          "pipeline alone, or all three.")
_BENCH_STEPS = flags.DEFINE_integer("bench_steps", 50, "bench: timed steps after warm-up.")
_PROFILE = flags.DEFINE_string(
    "profile", None, "bench: write a jax.profiler trace of the timed train steps to this folder.")
_SWEEP = flags.DEFINE_string(
    "sweep", None, "sweep: the grid, 'a.b=[v1,v2];c.d=[v3]' (product of the lists); default: the "
    "config file's sweep() function.")
_SWEEP_INDEX = flags.DEFINE_integer("sweep_index", None, "sweep: run only this point.")
_CASES = flags.DEFINE_integer("cases", 3, "report: mask panels per run (best, median, worst...).")
_LAYERS = flags.DEFINE_list(
    "layers", [], "report: modules whose activations to show (default: first, middle and last "
    "top-level blocks).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Call jax.distributed.initialize(): 'auto' does when a cluster environment (SLURM, TPU VM, "
    "GKE) or --coordinator_address is present.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs outside a "
    "detected cluster environment.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", "~/.cache/jaxseg/xla",
    "Folder of XLA's persistent compilation cache, so that a resumed or repeated run skips "
    "compiling its steps again; empty: off. $JAX_COMPILATION_CACHE_DIR, where set, wins.")


def _init_compilation_cache():
  import jax

  if _COMPILATION_CACHE.value and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(_COMPILATION_CACHE.value))


def _init_distributed():
  import jax

  explicit = _COORDINATOR.value is not None
  # Environments where jax.distributed.initialize() finds the other processes by itself.
  cluster = (int(os.environ.get("SLURM_NTASKS", "1")) > 1
             or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
             or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ)
  if _DISTRIBUTED.value == "off" or (_DISTRIBUTED.value == "auto" and not (explicit or cluster)):
    return
  if explicit and (_NUM_PROCESSES.value is None or _PROCESS_ID.value is None):
    raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: jaxseg {{{'|'.join(COMMANDS)}}} --config=FILE [flags]; "
                         f"got {argv[1:]}")
  command = argv[1]
  if command == "report":
    if not _WORKDIR.value or not _OUTPUT.value:
      raise app.UsageError("jaxseg report needs --workdir=RUN[,RUN...] and --output")
    from jaxseg.report import write_report
    write_report(_WORKDIR.value.split(","), _OUTPUT.value, _SPLIT.value, _CASES.value,
                 _LAYERS.value)
    return
  if _CONFIG.value is None:
    raise app.UsageError("--config is required")
  if command != "bench" and not _WORKDIR.value:
    raise app.UsageError(f"jaxseg {command} needs --workdir")
  _init_compilation_cache()
  _init_distributed()
  config = _CONFIG.value

  if command == "train":
    from jaxseg.train.loop import train_and_evaluate
    train_and_evaluate(config, _WORKDIR.value)
  elif command == "evaluate" and _PER_CASE.value:
    from jaxseg.evaluation import CaseEvaluator
    result = CaseEvaluator(config, _WORKDIR.value, _SPLIT.value,
                           _ENSEMBLE.value or [_CHECKPOINT.value], _TTA.value,
                           _OVERLAP.value).run()
    print(json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=1))
  elif command == "evaluate":
    from jaxseg.predict import evaluate_checkpoint
    result = evaluate_checkpoint(config, _WORKDIR.value, _SPLIT.value, _CHECKPOINT.value)
    print(json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=1))
  elif command == "predict" and _SUBMISSION.value:
    from jaxseg.evaluation import write_submission
    rows = write_submission(config, _WORKDIR.value, _SPLIT.value, _SUBMISSION.value,
                            [_CHECKPOINT.value], _TTA.value)
    print(f"wrote {rows} rows to {_SUBMISSION.value}")
  elif command == "predict":
    from jaxseg.predict import predict_files
    if not _INPUT.value or not _OUTPUT.value:
      raise app.UsageError("jaxseg predict needs --input and --output")
    predict_files(config, _WORKDIR.value, _INPUT.value, _OUTPUT.value, _CHECKPOINT.value,
                  _OVERLAY.value)
  elif command == "sweep":
    from jaxseg import sweep
    points = sweep.parse_grid(_SWEEP.value) if _SWEEP.value else _config_sweep()
    for row in sweep.run_sweep(config, _WORKDIR.value, points, _SWEEP_INDEX.value):
      score = row["result"] and row["result"].get("dice")
      print(f"{row['name']}: {'not done' if score is None else f'val dice {score:.4f}'}")
  elif command == "bench":
    from jaxseg.bench import run_bench
    run_bench(config, _WHAT.value, _BENCH_STEPS.value, _WORKDIR.value, _PROFILE.value)


def _config_sweep() -> list[dict]:
  """The `sweep()` function of the --config file, if it has one."""
  import importlib.util
  path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "sweep"):
    raise app.UsageError(f"{path} has no sweep(); pass --sweep='key=[v1,v2];...'")
  return module.sweep()


def run():
  reexec_with_malloc_defaults()
  # `--help` lists the key flags of the main program (sys.argv[0]); under a console script
  # that is the generated launcher, so register this module's flags as its key flags.
  sys.modules["__main__"].__doc__ = __doc__
  for flag in flags.FLAGS.get_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main)


if __name__ == "__main__":
  run()
