"""The batch client over real HTTP against the tests' own server (conftest.StubServer)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import intgrads
from intgrads.client import Client, ClientError, OutputConflict, RunAborted, main, read_index, read_sentences

ROOT = Path(__file__).resolve().parents[2]

SENTENCES = ["a wonderful, moving film", "dull and far too long", "", "the acting was fine", "utterly forgettable"]


def write_lines(path: Path, lines) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def fast_client(urls, **kwargs) -> Client:
    kwargs.setdefault("retries", 3)
    kwargs.setdefault("backoff", 0.01)
    return Client(urls, **kwargs)


def index_lines(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "index.jsonl").read_text(encoding="utf-8").splitlines()]


def test_run_writes_answers_retries_5xx_not_4xx_and_resumes(stub, tmp_path):
    stub.fail_first["dull and far too long"] = 2          # 503, 503, then the answer
    stub.always["the acting was fine"] = 400               # never answered
    sentences = read_sentences(write_lines(tmp_path / "in.txt", SENTENCES))
    assert [line for line, _ in sentences] == [1, 2, 4, 5]  # the blank line 3 is left out, numbering goes on
    output = tmp_path / "out"
    client = fast_client(stub.url)

    report = client.run(sentences, output, n_steps=8, target=1, concurrency=3, progress=False)
    assert (report.total, report.answered, report.failed, report.skipped) == (4, 3, 1, 0)
    assert stub.requests["dull and far too long"] == 3     # retried on 503
    assert stub.requests["the acting was fine"] == 1       # never retried on 400

    records = {record["line"]: record for record in index_lines(output)}
    assert sorted(records) == [1, 2, 4, 5]
    for line in (1, 2, 5):
        record = records[line]
        assert record["file"] == f"{line:06d}.gzip"
        assert record["sentence"] == SENTENCES[line - 1]
        payload = (output / record["file"]).read_bytes()
        assert payload == stub.sent[record["sentence"]]     # the exact bytes the server sent
        answer = intgrads.load_answer(output / record["file"])
        summary = intgrads.summarize_answer(answer)
        assert record["predicted"] == summary["predicted"]
        assert record["target"] == 1 and record["n_steps"] == 8
        assert record["convergence_delta"] == pytest.approx(answer["convergence_delta"])
        assert record["seconds"] >= 0 and "error" not in record
    assert records[2]["attempts"] == 3
    failed = records[4]
    assert failed["file"] is None and failed["status"] == 400 and "told to answer 400" in failed["error"]
    assert not (output / "000004.gzip").exists()
    assert not list(output.glob("*.tmp"))

    # Rerun: only the failed sentence is sent again; a stale temp file is cleared; a missing answer is redone.
    (output / "000009.gzip.tmp").write_bytes(b"half")
    (output / "000005.gzip").unlink()
    before = dict(stub.requests)
    report = client.run(sentences, output, n_steps=8, target=1, concurrency=3, progress=False)
    assert (report.answered, report.failed, report.skipped) == (1, 1, 2)
    assert stub.requests["a wonderful, moving film"] == before["a wonderful, moving film"]
    assert stub.requests["the acting was fine"] == before["the acting was fine"] + 1
    assert stub.requests["utterly forgettable"] == before["utterly forgettable"] + 1
    assert (output / "000005.gzip").is_file() and not list(output.glob("*.tmp"))
    assert [record["line"] for record in index_lines(output)] == [1, 2, 4, 5]   # compacted, one per line

    # Other options: the folder's answers are never replaced silently; refused, naming the options and the ways on.
    stub.always.clear()
    kept = (output / "000001.gzip").read_bytes()
    sent = sum(stub.requests.values())
    with pytest.raises(OutputConflict) as refused:
        client.run(sentences, output, n_steps=4, target=1, concurrency=2, progress=False)
    message = str(refused.value)
    assert "3 answer(s) made with other options (n_steps: 8 there, 4 now)" in message
    assert "--overwrite" in message and "-o" in message
    assert sum(stub.requests.values()) == sent and (output / "000001.gzip").read_bytes() == kept
    # The CLI says the same on stderr and exits 2; --overwrite replaces them.
    args = [str(tmp_path / "in.txt"), "-o", str(output), "-u", stub.url, "--n-steps", "4", "--no-progress",
            "--retries", "0"]
    assert main(args) == 2
    assert main(args + ["--target", "1", "--overwrite"]) == 0
    assert all(record["n_steps"] == 4 and record["options"] == {"target": 1, "n_steps": 4}
               for record in index_lines(output))


def test_5xx_until_retries_run_out_is_recorded_and_the_run_goes_on(stub, tmp_path):
    stub.always["broken"] = 503
    client = fast_client(stub.url, retries=2)
    report = client.run(["fine words", "broken", "more fine words"], tmp_path, progress=False, n_steps=4)
    assert (report.answered, report.failed) == (2, 1)
    assert stub.requests["broken"] == 3
    record = read_index(tmp_path / "index.jsonl")[2]
    assert record["status"] == 503 and record["attempts"] == 3 and "gave up after 3 tries" in record["error"]


def free_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/predictions/tiny"   # nothing listens there: connection refused


def test_connection_errors_are_retried_on_the_next_url(stub, tmp_path):
    client = fast_client([free_port_url(), stub.url], retries=2)
    report = client.run(["one good line", "another good line"], tmp_path, progress=False, n_steps=4, concurrency=1)
    assert (report.answered, report.failed) == (2, 0)
    records = read_index(tmp_path / "index.jsonl")
    assert [records[line]["attempts"] for line in (1, 2)] == [2, 2]
    assert all(records[line]["url"] == stub.url for line in (1, 2))


def test_no_server_at_any_url_stops_after_the_first_round_with_a_hint(tmp_path, capsys):
    """Nothing listens: the run stops at once (the default retries and backoff would wait minutes), saying where
    nothing answered, why, and how to start a server; not urllib3's text, nor one message per sentence."""
    source = write_lines(tmp_path / "in.txt", [f"sentence {i}" for i in range(20)])
    urls = [free_port_url(), free_port_url()]
    started = time.monotonic()
    code = main([str(source), "-o", str(tmp_path / "out"), "-u", ",".join(urls), "--no-progress"])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1 and seconds < 5, (seconds, err)
    assert f"intgrads-client: no server at {urls[0]}, {urls[1]} (connection refused): is it running? start it " \
           "with `intgrads --demo`" in err, err
    assert "HTTPConnectionPool" not in err and "Max retries" not in err and err.count("no server") == 1
    assert read_index(tmp_path / "out" / "index.jsonl") == {}      # nothing recorded: a rerun sends everything
    with pytest.raises(ClientError) as raised:                      # the one-sentence API says the same at once
        Client(urls[0]).fetch("one sentence")
    assert raised.value.no_server and str(raised.value).startswith(f"no server at {urls[0]} (connection refused)")


def test_round_robin_over_two_servers(make_stub, tmp_path):
    first, second = make_stub(), make_stub()
    sentences = [f"sentence number {i} is here" for i in range(6)]
    report = fast_client([first.url, second.url]).run(sentences, tmp_path, progress=False, n_steps=4,
                                                     concurrency=2)
    assert report.answered == 6
    assert sum(first.requests.values()) == 3 and sum(second.requests.values()) == 3


def test_auth_key_file_token_and_a_refused_key_stops_the_run(make_stub, tmp_path):
    server = make_stub(token="inference-secret")
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"management": {"key": "management-secret"},
                                    "inference": {"key": "inference-secret"}, "API": {"key": "x"}}))
    report = fast_client(server.url, key_file=key_file).run(["good day"], tmp_path / "a", progress=False, n_steps=4)
    assert report.answered == 1
    report = fast_client(server.url, token="inference-secret").run(["good day"], tmp_path / "b", progress=False,
                                                                   n_steps=4)
    assert report.answered == 1

    with pytest.raises(RunAborted) as caught:
        fast_client(server.url, token="wrong").run(["one", "two", "three"], tmp_path / "c", progress=False)
    assert caught.value.status == 400 and "Token Authorization failed" in str(caught.value)
    assert sum(server.requests.values()) == 2            # the key is refused before the sentence is read
    assert read_index(tmp_path / "c" / "index.jsonl") == {}   # not recorded as the sentences' failures

    with pytest.raises(ValueError, match="no inference key"):
        Client(server.url, key_file=_write(tmp_path / "bad.json", {"management": {"key": "m"}}))


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_wrong_model_name_stops_the_run(stub, tmp_path):
    url = stub.url.rsplit("/", 1)[0] + "/nosuchmodel"
    with pytest.raises(RunAborted) as caught:
        fast_client(url).run(["a line", "b line"], tmp_path, progress=False)
    assert caught.value.status == 404


def test_single_sentence_api(stub, bundle):
    client = fast_client(stub.url)
    answer = client.attribute("a quiet, lovely film", n_steps=6, method="riemann_middle", target=0)
    expected = intgrads.attribute(bundle, "a quiet, lovely film", n_steps=6, method="riemann_middle", target=0)
    torch.testing.assert_close(answer["integrated_gradients"], expected["integrated_gradients"])
    assert answer["tokens"] == expected["tokens"] and answer["method"] == "riemann_middle"
    assert client.fetch("a quiet, lovely film", n_steps=6)[:2] == b"\x1f\x8b"
    summary = client.summary("a quiet, lovely film", n_steps=6)
    assert summary["n_steps"] == 6 and summary["tokens"] == expected["tokens"]
    from intgrads.client import ClientError

    with pytest.raises(ClientError) as caught:
        client.attribute("a quiet, lovely film", n_steps=6, baseline="nonsense")
    assert caught.value.status == 400 and "baseline must be one of" in str(caught.value)
    assert caught.value.attempts == 1


def test_read_sentences_csv_jsonl_and_columns(tmp_path):
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text('id,text,stars\n1,"good, really good",5\n2,"two\nlines",3\n3,,1\n4,bad,1\n',
                        encoding="utf-8")
    assert read_sentences(csv_path) == [(1, "good, really good"), (2, "two\nlines"), (4, "bad")]
    assert read_sentences(csv_path, column="stars")[0] == (1, "5")
    with pytest.raises(ValueError, match="no column 'review'"):
        read_sentences(csv_path, column="review")
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"review": "fine", "n": 1}\n\n{"review": "not fine", "n": 2}\n"bare string"\n',
                     encoding="utf-8")
    assert read_sentences(jsonl, column="review") == [(1, "fine"), (3, "not fine"), (4, "bare string")]
    with pytest.raises(ValueError, match="--column"):
        read_sentences(jsonl)
    text = write_lines(tmp_path / "plain.txt", ["first", "  ", "third, with a comma"])
    assert read_sentences(text) == [(1, "first"), (3, "third, with a comma")]
    assert read_sentences(text, format="csv", column="first") == [(2, "third")]   # rows after the header


def test_cli_in_process_exit_codes(stub, tmp_path, capsys):
    stub.always["refused"] = 400
    source = write_lines(tmp_path / "in.txt", ["good film", "refused", "bad film"])
    code = main([str(source), "--url", stub.url, "-o", str(tmp_path / "out"), "--n-steps", "4",
                 "--target", "predicted", "--method", "riemann_left", "--backoff", "0.01", "-j", "2"])
    assert code == 1                                       # one sentence failed
    err = capsys.readouterr().err
    assert "2 answered" in err and "1 failed" in err and "line 2" in err
    records = read_index(tmp_path / "out" / "index.jsonl")
    assert records[1]["method"] == "riemann_left" and records[1]["options"]["target"] == "predicted"
    assert records[1]["target"] == records[1]["predicted"]
    stub.always.clear()
    code = main([str(source), "--url", stub.url, "-o", str(tmp_path / "out"), "--n-steps", "4",
                 "--target", "predicted", "--method", "riemann_left", "--no-progress"])
    assert code == 0
    assert "1 answered, 2 already there, 0 failed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(source), "--url", stub.url, "-o", str(tmp_path / "x"), "--method", "simpson"])


def test_cli_auto_steps_and_their_flags(stub, tmp_path):
    """--n-steps auto with --tolerance reaches the server; the index records the points the engine chose."""
    source = write_lines(tmp_path / "in.txt", ["good film"])
    output = tmp_path / "out"
    assert main([str(source), "--url", stub.url, "-o", str(output), "--n-steps", "auto", "--tolerance", "0.05",
                 "--max-steps", "40", "--no-progress"]) == 0
    record = read_index(output / "index.jsonl")[1]
    assert record["options"] == {"n_steps": "auto", "tolerance": 0.05, "max_steps": 40}
    answer = intgrads.load_answer(output / record["file"])
    assert answer["method"] == "adaptive" and answer["max_steps"] == 40
    assert record["n_steps"] == record["gradient_evaluations"] == answer["n_steps"] == answer["alphas"].shape[0]
    for bad in (["--tolerance", "0.05"], ["--n-steps", "auto", "--tolerance", "2"], ["--n-steps", "some"],
                ["--n-steps", "auto", "--max-steps", "8"]):   # fewer than auto starts from (9)
        with pytest.raises(SystemExit):
            main([str(source), "--url", stub.url, "-o", str(tmp_path / "x"), *bad])


def _cli(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # SIGINT as a terminal sends it: a shell that started these tests in the background made them ignore it
    return subprocess.Popen([sys.executable, "-m", "intgrads.client", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def test_cli_stdin_then_ctrl_c_leaves_whole_files_and_resumes(stub, tmp_path):
    lines = [f"review number {i}: {'great' if i % 2 else 'awful'} movie" for i in range(1, 9)]
    for sentence in lines[2:]:   # slow from the third on: Ctrl-C lands with the fourth to eighth still to come
        stub.delay[sentence] = 0.5 if sentence == lines[2] else 3.0
    output = tmp_path / "out"
    args = ["-", "--url", stub.url, "-o", str(output), "--n-steps", "4", "-j", "1", "--no-progress"]
    source = write_lines(tmp_path / "in.txt", lines)
    with open(source, encoding="utf-8") as stdin:
        process = _cli(args, stdin=stdin)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (output / "index.jsonl").is_file() and len(read_index(output / "index.jsonl")) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "interrupted" in err
    done = read_index(output / "index.jsonl")
    assert 3 <= len(done) < len(lines)
    assert not list(output.glob("*.tmp"))
    for record in done.values():                        # every answer named in the index is whole
        assert intgrads.load_answer(output / record["file"])["tokens"]
    for path in output.glob("*.gzip"):                  # and so is every answer file there
        intgrads.load_answer(path)

    for sentence in lines:
        stub.delay.pop(sentence, None)
    before = dict(stub.requests)
    with open(source, encoding="utf-8") as stdin:
        process = _cli(args, stdin=stdin)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    records = read_index(output / "index.jsonl")
    assert sorted(records) == list(range(1, 9)) and all(record["file"] for record in records.values())
    for line in done:                                   # what was answered before was not asked again
        assert stub.requests[lines[line - 1]] == before[lines[line - 1]]


def test_output_lock_and_token_from_the_environment(make_stub, tmp_path, monkeypatch):
    from intgrads.client import LOCK_NAME, OutputBusy

    server = make_stub(token="from-env")
    monkeypatch.setenv("INTGRADS_TOKEN", "from-env")
    client = fast_client(server.url)
    output = tmp_path / "out"
    output.mkdir()
    (output / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    with pytest.raises(OutputBusy, match="another intgrads-client"):
        client.run(["kind words"], output, progress=False, n_steps=4)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (output / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": int(gone.stdout)}))
    report = client.run(["kind words"], output, progress=False, n_steps=4)     # a dead client's lock is taken
    assert report.answered == 1 and not (output / LOCK_NAME).exists()


def test_a_long_sentence_is_kept_short_in_the_index_and_still_recognised(stub, tmp_path, capsys):
    import hashlib

    long_sentence = " ".join(["a rather long review of a film"] * 200)          # 6,199 characters
    source = write_lines(tmp_path / "in.txt", ["good film", long_sentence])
    args = [str(source), "--url", stub.url, "-o", str(tmp_path / "out"), "--n-steps", "4", "--no-progress"]
    assert main(args) == 0
    record = read_index(tmp_path / "out" / "index.jsonl")[2]
    assert record["sentence"] == long_sentence[:1000] + "…" and record["sentence_chars"] == len(long_sentence)
    assert record["sentence_sha256"] == hashlib.sha256(long_sentence.encode()).hexdigest()
    assert len((tmp_path / "out" / "index.jsonl").read_bytes()) < 3000
    capsys.readouterr()
    assert main(args) == 0
    assert "0 answered, 2 already there, 0 failed" in capsys.readouterr().err
    write_lines(source, ["good film", long_sentence + " but different"])
    assert main(args) == 0
    assert "1 answered, 1 already there, 0 failed" in capsys.readouterr().err


@pytest.mark.parametrize("encoding,hint", [("utf-16", "UTF-16 byte-order mark"), ("latin-1", "Latin-1")])
def test_input_that_is_not_utf8_is_named_with_what_to_do(tmp_path, capsys, encoding, hint):
    source = tmp_path / f"reviews-{encoding}.txt"
    source.write_bytes("une critique très réussie\n".encode(encoding))
    assert main([str(source), "--url", "http://127.0.0.1:9/predictions/x", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(source) in err and "is not UTF-8 text" in err and hint in err and "usage:" not in err


def test_the_commands_agree_on_flags_help_and_messages(stub, tmp_path, capsys):
    """--outputs and --dtype on the client as on the batch job (sent, kept in the index's options, honoured);
    help texts show the defaults a request gets and the render command; the batch job's help speaks of no server."""
    from intgrads.batch.cli import build_parser
    from intgrads.client.cli import DEFAULTS, _send_parser
    from intgrads.serving.request import DEFAULT_OPTIONS

    assert DEFAULTS == {key: DEFAULT_OPTIONS[key] for key in DEFAULTS}
    client_help = _send_parser().format_help()
    assert "intgrads-client render ANSWER.gzip" in client_help.split("\n\n")[0]          # the usage lines
    for text in ("(default 1, or the server's own)", "quadrature steps (default 50, or the server's own)",
                 "--outputs NAMES", "--dtype {float32,float16}", "--overwrite"):
        assert text in " ".join(client_help.split()), text
    batch_help = " ".join(build_parser().format_help().split())
    assert "/predictions/NAME" not in batch_help and "the server's defaults" not in batch_help
    assert "(default 1)" in batch_help and "--outputs NAMES" in batch_help and "--overwrite" in batch_help

    source = write_lines(tmp_path / "in.txt", ["a wonderful, moving film"])
    args = [str(source), "-o", str(tmp_path / "out"), "-u", stub.url, "--n-steps", "4", "--no-progress",
            "--outputs", "integrated_gradients,tokens", "--dtype", "float16"]
    assert main(args) == 0
    (record,) = index_lines(tmp_path / "out")
    assert record["options"] == {"n_steps": 4, "dtype": "float16",
                                 "outputs": ["integrated_gradients", "tokens", "token_attributions", "logits"]}
    answer = intgrads.load_answer(tmp_path / "out" / record["file"])
    assert answer["integrated_gradients"].dtype == torch.float16 and "intermediates" not in answer
    mode = (tmp_path / "out" / record["file"]).stat().st_mode & 0o777
    umask = os.umask(0o022)
    os.umask(umask)
    assert mode == 0o666 & ~umask             # as a batch worker's file and a server's taken over (file_mode)
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage:
        main(args[:7] + ["--outputs", "integrated_gradients,gradients"])
    assert usage.value.code == 2 and "--outputs: unknown answer key(s) 'gradients'" in capsys.readouterr().err
