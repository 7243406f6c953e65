"""The batch client for the intgrads server: many sentences in, one answer file per sentence out.

Command line (console script ``intgrads-client``, or ``python -m intgrads.client``)::

    intgrads-client sentences.txt --url http://127.0.0.1:8080/predictions/bert -o answers/
    intgrads-client reviews.csv --column text --url URL1 --url URL2 -j 8 --n-steps 100 -o answers/
    cat sentences.txt | intgrads-client - --url URL -o answers/ --key-file key_file.json
    intgrads-client render answers/000042.gzip -o 000042.png      # or .html

Python::

    from intgrads.client import Client
    client = Client("http://127.0.0.1:8080/predictions/bert", key_file="key_file.json")
    answer = client.attribute("a fine film", target=1, n_steps=50)     # the answer dict
    report = client.run(["a fine film", "a dull one"], "answers/", concurrency=4)

The output directory holds ``NNNNNN.gzip`` (the exact bytes the server sent for the sentence on line
NNNNNN, readable with :func:`intgrads.load_answer`) and ``index.jsonl``: one JSON object per sentence with
``line``, ``sentence``, ``file``, ``predicted``, ``label``, ``probability``, ``target``, ``n_steps``,
``method``, ``baseline``, ``convergence_delta``, ``seconds``, ``attempts``, ``url`` and ``options`` (what was
asked for) -- or, for a sentence that failed, ``file: null`` with ``error`` and ``status``.

Line numbers are 1-based lines of a text or JSONL file, and data rows (after the header) of a CSV file.
A rerun skips every sentence whose index record has no error, the same sentence and options, and its file
present; the others are sent again. Answer files are written to ``*.tmp`` and renamed, so an interrupted
run (Ctrl-C) leaves no half-written answer. 5xx answers and connection errors are retried with exponential
backoff (moving to the next URL); 4xx answers are not retried: the sentence is recorded as failed and the
run goes on -- except 401, 403, 404 and TorchServe's 400 "Token Authorization failed", which no sentence
can get past (wrong key, wrong URL or model name), and which stop the run. While a run writes into a
directory it holds ``.intgrads-client.lock`` there (host and pid; a lock left by a dead client on the same
host is taken over), so two runs cannot mix.

Modules: ``inputs`` (reading sentences and keys), ``sender`` (:class:`Client`: HTTP, retries, runs), ``index``
(answer files, ``index.jsonl``, the lock), ``report`` (the progress bar and closing lines), ``cli`` (the command
line). Pictures: :mod:`intgrads.pictures`.
"""

from .cli import main
from .index import INDEX_NAME, LOCK_NAME, OutputBusy, OutputConflict, read_index, write_index
from .inputs import read_key_file, read_sentences
from .report import RunReport
from .sender import Client, ClientError, RunAborted

__all__ = ["Client", "ClientError", "RunAborted", "RunReport", "OutputBusy", "OutputConflict", "read_sentences", "read_key_file",
           "read_index", "write_index", "main", "INDEX_NAME", "LOCK_NAME"]
