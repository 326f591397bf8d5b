"""benchmarks/commits_ab.py end to end: a commit against the working tree, one tiny model."""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args):
  return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True,
                        text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")),
                    reason="needs the git checkout")
def test_commit_against_working_tree_writes_both_sides_and_removes_its_worktree(tmp_path):
  worktrees = _git("worktree", "list")
  subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "commits_ab.py"),
                  "--before=HEAD", "--models=unet:4:32", "--batch=2", "--steps=1", "--pairs=1",
                  f"--out={tmp_path}"], cwd=REPO, check=True, capture_output=True, text=True)
  (json_path,) = tmp_path.glob("commits_ab-*.json")
  record = json.loads(json_path.read_text())
  assert record["before"] == _git("rev-parse", "--short", "HEAD")
  assert record["after"].startswith(record["before"])
  (row,) = record["rows"]
  assert (row["model"], row["features"], row["size"]) == ("unet", 4, 32)
  assert len(row["before"]) == len(row["after"]) == 1
  assert all(ms > 0 for ms in row["before"] + row["after"])
  markdown = json_path.with_suffix(".md").read_text()
  assert "| unet | 4 | 32 |" in markdown and record["command"] in markdown
  assert _git("worktree", "list") == worktrees  # the temporary checkout is gone
