"""The command line: generation with statistics and a target-only comparison, and every user
mistake answered by one line on stderr and exit code 2 (never a traceback)."""

import subprocess
import sys

import pytest

from specdecode.cli import main

TINY = ["--model", "tiny-random", "--dtype", "float32", "--threads", "1"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_streams_text_and_prints_stats(capsys):
    rc, out, err = run_cli(capsys, "generate", "def add(x, y):", *TINY, "--drafter", "none", "--raw", "-n", "10", "--stats")
    assert rc == 0 and out.strip()
    assert "prompt tokens" in err and "tok/s" in err and "drafter: none" in err


def test_compare_reports_speedup_and_identical_output(capsys):
    rc, out, err = run_cli(capsys, "generate", "def add(x, y):", *TINY, "--draft", "tiny-random-draft",
                           "--raw", "-n", "12", "-k", "3", "--compare")
    assert rc == 0
    assert "drafted / accepted" in err  # the speculative run's statistics
    assert "target only (same prompt and settings)" in err
    assert "speed-up" in err and "output identical to the target-only output" in err


def test_ngram_trees_from_the_command_line_give_the_target_output(capsys):
    rc, _, err = run_cli(capsys, "generate", "for i in range(10):\n    print(i)\nfor i in range(10):\n", *TINY,
                         "--drafter", "ngram", "--ngram-branches", "3", "--raw", "-n", "16", "-k", "4", "--compare")
    assert rc == 0 and "output identical to the target-only output" in err


def test_a_draft_scoring_part_of_its_vocabulary_gives_the_target_output(capsys):
    rc, _, err = run_cli(capsys, "generate", "def add(x, y):", *TINY, "--draft", "tiny-random-draft",
                         "--draft-vocab", "64", "--raw", "-n", "12", "-k", "3", "--compare")
    assert rc == 0 and "output identical to the target-only output" in err


@pytest.mark.parametrize("value", ["-1", "many"])
def test_a_bad_draft_vocabulary_size_is_an_argparse_error(capsys, value):
    with pytest.raises(SystemExit) as e:
        main(["generate", "hi", *TINY, "--draft", "tiny-random-draft", "--draft-vocab", value])
    _, err = capsys.readouterr()
    assert e.value.code == 2 and "--draft-vocab" in err and "Traceback" not in err


def test_compare_with_sampling_says_outputs_differ_by_design(capsys):
    rc, _, err = run_cli(capsys, "generate", "hello", *TINY, "--drafter", "ngram", "--raw", "-n", "8",
                         "-t", "0.8", "--seed", "1", "--compare")
    assert rc == 0 and "the distribution is the same" in err


@pytest.mark.parametrize("argv, message", [
    (["generate", "hi", "--model", "no-such-model"], "qwen2.5-coder-1.5b"),  # lists the known names
    (["generate", "hi", *TINY, "-t", "-1"], "temperature"),
    (["generate", "hi", *TINY, "--top-p", "1.5"], "top_p"),
    (["generate", "hi", *TINY, "--top-p", "0"], "top_p"),
    (["generate", "hi", *TINY, "-n", "0"], "max_new_tokens"),
    (["generate", "", *TINY], "empty"),
    (["generate", "hi", *TINY, "--drafter", "none", "--compare"], "--compare needs a drafter"),
    (["generate", "hi", *TINY, "--drafter", "model"], "--draft"),
    (["generate", "hi", *TINY, "-k", "0", "--drafter", "ngram"], "num_draft_tokens"),
    (["generate", "hi", "--model", "/nonexistent/model.gguf"], "cannot load the target"),
    (["generate", "hi", *TINY, "--ngram-branches", "0"], "--ngram-branches"),
    (["generate", "hi", *TINY, "--device", "foo"], "--device 'foo' is not a device"),
    (["generate", "hi", *TINY, "-t", "1", "--seed", str(10**23)], "seed must be an integer that fits in 64 bits"),
])
def test_user_mistakes_are_one_line_errors(capsys, argv, message):
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2
    last = err.strip().splitlines()[-1]  # progress lines ("loading ...") may come first
    assert last.startswith("specdecode: error:") and message in last
    assert "Traceback" not in err


def test_malformed_user_files_are_one_line_errors_before_anything_loads(capsys, tmp_path, monkeypatch):
    """Files a user names (a schema, a dataset, a results file to resume, prompts to train a head
    on, an output path that is a file, a damaged head) are checked with a one-line error, most
    before the target loads."""
    import json
    import socket

    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path / "cache"))
    not_utf8 = tmp_path / "schema.json"
    not_utf8.write_bytes(b"\xff\xfe{}")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")

    def jsonl(name, *rows):
        f = tmp_path / name
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(f)

    resume = tmp_path / "resume"
    resume.mkdir()
    (resume / "results.json").write_text("[]")
    head = tmp_path / "head"
    head.mkdir()
    (head / "head.json").write_text(json.dumps({"format": "specdecode-head"}))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        cases = [
            (["generate", "hi", *TINY, "--json-schema", str(not_utf8)], "is not UTF-8 text"),
            (["bench", *TINY, "--methods", "target", "--dataset", jsonl("d1.jsonl", "just a string")],
             "line 1: each line must be a JSON object, got str"),
            (["bench", *TINY, "--methods", "target", "--dataset", jsonl("d2.jsonl", {"turns": 5})],
             'line 1: each line needs a non-empty "prompt" string'),
            (["bench", *TINY, "--methods", "target", "--dataset",
              jsonl("d3.jsonl", {"prompt": "hi", "json_schema": {"type": "string", "pattern": "("}})],
             'line 1: "json_schema": invalid JSON schema'),
            (["bench", *TINY, "--methods", "target", "--limit", "1", "--out", str(a_file)], "is not a directory"),
            (["bench", *TINY, "--methods", "target", "--limit", "1", "--out", str(resume), "--resume"],
             "not a specdecode bench results file (a JSON list, not an object)"),
            (["heads", "train", *TINY, "--prompts", jsonl("p1.jsonl", {"messages": [{"content": "no role"}]})],
             'p1.jsonl:1: expected a non-empty {"prompt"'),
            (["heads", "train", *TINY, "--prompts", jsonl("p2.jsonl", {"prompt": ""})], 'p2.jsonl:1: expected'),
            (["heads", "train", *TINY, "--out", str(a_file)], "--out"),
            (["heads", "show", *TINY, "--head", str(head)], "does not hold a head this version can read: KeyError"),
            (["serve", *TINY, "--port", port], f"cannot listen on 127.0.0.1:{port}"),
            (["serve", *TINY, "--kv-cache-gb", "1e-12"], "--kv-cache-gb must be a number of GB >= 0.001"),
        ]
        for argv, message in cases:
            rc, _, err = run_cli(capsys, *argv)
            last = err.strip().splitlines()[-1] if err.strip() else ""
            assert rc == 2 and last.startswith("specdecode: error:") and message in last, (argv, err)
            assert "Traceback" not in err and "loaded target" not in err, (argv, err)


def test_k_is_ignored_without_a_drafter(capsys):
    rc, _, err = run_cli(capsys, "generate", "hi", *TINY, "--drafter", "none", "-k", "0", "-n", "2")
    assert rc == 0, err


def test_not_a_gguf_file_and_too_long_prompt(capsys, tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"this is not a gguf file at all" * 10)
    rc, _, err = run_cli(capsys, "generate", "hi", "--model", str(bogus))
    assert rc == 2 and "Traceback" not in err and "GGUF" in err
    rc, _, err = run_cli(capsys, "generate", "word " * 5000, *TINY, "--raw")
    assert rc == 2 and "context" in err


def test_a_real_process_exits_2_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "specdecode", "generate", "hi", "--model", "no-such-model"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("specdecode: error: cannot load the target model")
    assert "Traceback" not in proc.stderr
