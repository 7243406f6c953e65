"""intgrads-batch refuses what cannot run before it starts anything: exit 2 and a message that names the problem,
for the request options with the server's own words. No Ray here."""

from __future__ import annotations

import pytest

from intgrads.batch.cli import main
from intgrads.serving.request import DEFAULT_LIMITS, DEFAULT_OPTIONS, RequestError, check_encoding, check_options

from .conftest import write_lines


def server_message(options: dict = None, fields: dict = None) -> str:
    """What a server answers for these options (its 400's message)."""
    limits = {**DEFAULT_LIMITS, "max_steps": 1000}
    with pytest.raises(RequestError) as refused:
        check_options({**DEFAULT_OPTIONS, **(options or {})}, num_labels=2, limits=limits)
        check_encoding(fields or {})
    return refused.value.message


@pytest.mark.parametrize("flags, expected", [
    (["--n-steps", "1", "--method", "riemann_trapezoid"], server_message({"n_steps": 1, "method": "riemann_trapezoid"})),
    (["--target", "2"], server_message({"target": 2})),
    (["--outputs", "integrated_gradients,gradients"], server_message(fields={"outputs": ["integrated_gradients", "gradients"]})),
    (["--n-steps", "2000"], "--n-steps 2000: the engine takes at most 1000"),
    (["--max-tokens", "0"], "--max-tokens must be at least 1"),
    (["--ray-token-file", "token"], "--ray-token-file goes with --ray-address"),
    (["--demo"], "one model per batch run"),
])
def test_bad_flags_exit_2_with_the_servers_message(hf_files, tmp_path, capsys, flags, expected):
    source = write_lines(tmp_path / "in.txt", ["a fine film"])
    code = main(["--hf-model", str(hf_files.weights), str(source), "-o", str(tmp_path / "out"), "--no-progress",
                 "--model-store", str(tmp_path / "store"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_no_model_no_input_and_an_empty_input(hf_files, tmp_path, capsys):
    source = write_lines(tmp_path / "in.txt", ["a fine film"])
    assert main([str(source), "-o", str(tmp_path / "out")]) == 2
    assert "no model given" in capsys.readouterr().err
    assert main(["--hf-model", str(hf_files.weights), str(tmp_path / "missing.txt"), "-o", str(tmp_path / "out")]) == 2
    assert "cannot read" in capsys.readouterr().err
    empty = write_lines(tmp_path / "empty.txt", ["", "   "])
    assert main(["--hf-model", str(hf_files.weights), str(empty), "-o", str(tmp_path / "out")]) == 0
    assert "no sentences in the input" in capsys.readouterr().err
    with pytest.raises(SystemExit) as parsed:
        main(["--hf-model", str(hf_files.weights), str(source), "-o", str(tmp_path / "out"), "--workers", "0"])
    assert parsed.value.code == 2


def test_the_workers_layout_on_a_running_cluster():
    """One worker per node by default, each with the CPUs it may take while one stays free for Ray Data's own
    tasks; GPU workers 1/W of a GPU; a layout that cannot fit is refused (Ray Data would wait for it forever)."""
    from types import SimpleNamespace

    from intgrads.batch.plan import Layout, cluster_layout
    from intgrads.launcher.paths import LaunchError

    def flags(**given):
        return SimpleNamespace(**{"cuda": False, "workers": None, "num_cuda_devs": None, "workers_per_gpu": 2, **given})

    four_nodes = {"cpus": 32, "gpus": 8, "nodes": 4, "min_node_cpus": 8}
    assert cluster_layout(flags(), four_nodes, tasks=1000) == Layout(4, 7, 7, 0)
    assert cluster_layout(flags(workers=2), four_nodes, tasks=1000) == Layout(2, 8, 8, 0)
    assert cluster_layout(flags(cuda=True), four_nodes, tasks=1000) == Layout(16, 2, 1, 0.5)
    assert cluster_layout(flags(workers=8), four_nodes, tasks=3).workers == 3
    with pytest.raises(LaunchError, match="do not fit the Ray cluster's 32 CPUs"):
        cluster_layout(flags(workers=40), four_nodes, tasks=1000)


def test_a_folder_of_answers_made_with_other_options_is_refused_before_any_work(hf_files, tmp_path, capsys):
    """The batch job shares the client's output directory: answers of another run's options are never replaced
    silently; the refusal names the differing options and the two ways on, before Ray starts."""
    import json

    source = write_lines(tmp_path / "in.txt", ["a fine film"])
    output = tmp_path / "out"
    output.mkdir()
    (output / "000001.gzip").write_bytes(b"an earlier answer")
    record = {"line": 1, "sentence": "a fine film", "file": "000001.gzip", "options": {"n_steps": 20,
                                                                                      "target": "predicted"}}
    (output / "index.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    code = main(["--hf-model", str(hf_files.weights), str(source), "-o", str(output),
                 "--model-store", str(tmp_path / "store"), "--n-steps", "10"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == "" and "intgrads:" not in err     # its messages on stderr, under its own name
    assert "intgrads-batch: checked hf: " in err and "1 answer(s) made with other options" in err
    assert "n_steps: 20 there, 10 now; target: predicted there, the default now" in err
    assert "--overwrite" in err and "another folder with -o" in err
    assert (output / "000001.gzip").read_bytes() == b"an earlier answer"
