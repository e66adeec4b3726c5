"""Sweep files as a careless or hostile user writes them: aliases, keys given twice, huge values.

Each goes through the real CLI (``--dry-run``) and must end with exit 2 and a short message that
names the line or field, quickly and without expanding anything.
"""
import subprocess
import sys
import time

import pytest

from conftest import ROOT


def dry_run(path):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "raybench.sweep", str(path), "--dry-run"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    return proc, time.perf_counter() - t0


def alias_bomb(levels: int = 8, width: int = 9) -> str:
    """The billion-laughs shape: each level a list of ``width`` aliases of the level below."""
    lines = ["name: bomb", "a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    lines.append(f"workers: *a{levels}")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(alias_bomb())
    proc, _ = dry_run(f)
    assert proc.returncode == 2
    assert "aliases (*a0) are not allowed" in proc.stderr and "line 3" in proc.stderr
    assert len(proc.stderr) < 1000  # nothing was expanded into the message


def test_a_plain_alias_is_refused_too(tmp_path):
    f = tmp_path / "alias.yaml"
    f.write_text("name: a\nw: &w [1, 2]\nworkers: *w\n")
    proc, _ = dry_run(f)
    assert proc.returncode == 2 and "line 3: YAML aliases (*w) are not allowed" in proc.stderr


@pytest.mark.parametrize("text, key, lines", [
    ("name: twice\nworkers: [1]\nseed: 0\nworkers: [2]\n", "'workers'", (2, 4)),
    ("name: twice\nnetwork:\n  latency_ms: [0]\n  latency_ms: [5]\n", "'latency_ms'", (3, 4)),
])
def test_a_key_given_twice_names_the_key_and_both_lines(tmp_path, text, key, lines):
    f = tmp_path / "twice.yaml"
    f.write_text(text)
    proc, _ = dry_run(f)
    assert proc.returncode == 2
    assert f"key {key} is given twice (lines {lines[0]} and {lines[1]})" in proc.stderr


def test_a_huge_bad_value_is_cut_short_in_the_message(tmp_path):
    f = tmp_path / "huge.yaml"
    f.write_text("name: huge\nworkers: [" + ", ".join(["-1"] * 200_000) + "]\n")
    proc, _ = dry_run(f)
    assert proc.returncode == 2
    assert "field 'workers[0]'" in proc.stderr
    assert "and 199,990 more" in proc.stderr and len(proc.stderr) < 2000  # ten problems, then a count
    f.write_text("name: huge\nmodel: {arch: " + "x" * 1_000_000 + "}\n")
    proc, _ = dry_run(f)
    assert proc.returncode == 2 and "field 'model.arch'" in proc.stderr
    assert "characters in all" in proc.stderr and len(proc.stderr) < 2000


def test_anchors_without_aliases_and_ordinary_files_still_load():
    from raybench.spec import yamlfile

    assert yamlfile.read("a: &x 1\nb: [1, 2]\n") == {"a": 1, "b": [1, 2]}
    assert yamlfile.read("a: {b: 1, c: 2}\nd: 3\n") == {"a": {"b": 1, "c": 2}, "d": 3}
