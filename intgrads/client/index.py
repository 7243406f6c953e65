"""The output directory of a run (``intgrads-client``'s, ``intgrads-batch``'s): answer files written atomically,
``index.jsonl`` (one record per sentence) and the lock that keeps two runs from mixing. :func:`open_output` is a
run's whole life there: lock, leftovers removed, what is already answered, each new record appended as it comes,
the index rewritten and the lock removed at the end, even an interrupted one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
from pathlib import Path

from ..system import pid_alive

INDEX_NAME = "index.jsonl"
LOCK_NAME = ".intgrads-client.lock"


class OutputBusy(RuntimeError):
    """Another client is writing into the same output directory (or it cannot be used: :class:`OutputRefused`)."""


class OutputRefused(OutputBusy):
    """The output directory cannot be used: a file, a folder that cannot be made or written, a symbolic link
    whose target is missing or another user's."""


def usable_output(output, make: bool = True) -> Path:
    """``output`` as the folder to write into: a symbolic link only to an existing folder of this user's (never
    made through the link), made if missing (``make=False``: only checked, nothing made); raises
    :class:`OutputRefused` with what is wrong."""
    output = Path(output).expanduser().absolute()
    if output.is_symlink():
        target = output.resolve()
        if not target.is_dir() or target.stat().st_uid != os.getuid():
            raise OutputRefused(f"-o {output} is a symbolic link to {target}, which is not an existing folder of "
                                "yours: give the folder itself")
    elif output.exists() and not output.is_dir():
        raise OutputRefused(f"-o {output} is a file, not a folder: give a folder (made if missing)")
    if not make:
        above = next(folder for folder in output.parents if folder.exists() or folder.is_symlink())
        if not output.exists() and not above.is_dir():
            raise OutputRefused(f"cannot make the output folder {output}: {above} is not a folder")
        return output
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputRefused(f"cannot make the output folder {output}: {error.strerror or error}") from None
    return output.resolve()


class OutputConflict(OutputBusy):
    """The output directory holds answers made with other options: a run would replace them (results are never
    lost silently; ``overwrite`` replaces them on purpose)."""


# The temporaries a run writes (an answer file's, the index's): the only files of the output it may remove.
OWN_TEMPORARY = re.compile(r"^(\d{6,}\.gzip|index\.jsonl)\.tmp$")


def file_mode() -> int:
    """The mode of the files a run writes: what this user's umask gives a new file (0644 under umask 022), the
    same for an answer written here, taken from a server on this machine, or written by a batch worker."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def lock_output(output: Path, program: str = "intgrads-client") -> Path:
    """Create ``output/.intgrads-client.lock`` (host, pid and program), taking over a stale one left on this host."""
    path = output / LOCK_NAME
    mine = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "program": program})
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text(encoding="utf-8"))
                host, pid = str(holder["host"]), int(holder["pid"])
                other = str(holder.get("program") or "intgrads-client")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                host, pid, other = "?", -1, "intgrads-client"
            if host == socket.gethostname() and not pid_alive(pid):
                path.unlink(missing_ok=True)   # its client is gone
                continue
            raise OutputBusy(f"another {other} (pid {pid} on {host}) is writing into {output}; "
                             f"if it is no longer running, delete {path}") from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(mine)
        return path
    raise OutputBusy(f"cannot lock {output}: delete {path}")


def read_index(path) -> dict[int, dict]:
    """The index's records by line number (the last record of a line wins; a torn last line is ignored)."""
    records: dict[int, dict] = {}
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        return records
    with handle:
        for text in handle:
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("line"), int):
                records[record["line"]] = record
    return records


def write_index(path, records: dict[int, dict]) -> None:
    """Rewrite the index with one record per line number, in order (temp file, then rename)."""
    path = Path(path)
    if not records and not path.exists():
        return
    text = "".join(json.dumps(records[line], ensure_ascii=False) + "\n" for line in sorted(records))
    write_atomically(path, text.encode("utf-8"))


SENTENCE_CHARS = 1000   # longer sentences are kept in the index as their first 1000 characters and a hash


def sentence_fields(sentence: str) -> dict:
    """The index's record of a sentence: the sentence itself, or for a long one its first SENTENCE_CHARS
    characters with ``sentence_chars`` (its length) and ``sentence_sha256`` (a rerun recognises it by these)."""
    if len(sentence) <= SENTENCE_CHARS:
        return {"sentence": sentence}
    return {"sentence": sentence[:SENTENCE_CHARS] + "…", "sentence_chars": len(sentence),
            "sentence_sha256": hashlib.sha256(sentence.encode("utf-8")).hexdigest()}


def same_sentence(record, sentence: str) -> bool:
    if "sentence_sha256" in record:
        return record["sentence_sha256"] == hashlib.sha256(sentence.encode("utf-8")).hexdigest()
    return record.get("sentence") == sentence


def is_done(record, sentence, options, output) -> bool:
    return bool(record and not record.get("error") and record.get("file") and same_sentence(record, sentence)
                and (record.get("options") or {}) == options and (output / record["file"]).is_file())


def remove_own_temporaries(output: Path) -> None:
    """Remove what an interrupted run of ours left (``OWN_TEMPORARY``), and nothing else."""
    for leftover in output.glob("*.tmp"):
        if OWN_TEMPORARY.match(leftover.name):
            leftover.unlink(missing_ok=True)


def _shown(value) -> str:
    if value is None:
        return "the default"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def option_conflict(records: dict, options: dict, output: Path) -> str | None:
    """Why a run with ``options`` may not write into ``output``: the index holds answers (their files still
    there) made with other options, which the run would replace. None when there are none."""
    others = [record for record in records.values()
              if record.get("file") and not record.get("error") and (record.get("options") or {}) != options
              and (output / record["file"]).is_file()]
    if not others:
        return None
    theirs = others[0].get("options") or {}
    names = [name for name in dict.fromkeys([*theirs, *options]) if theirs.get(name) != options.get(name)]
    differing = "; ".join(f"{name}: {_shown(theirs.get(name))} there, {_shown(options.get(name))} now"
                          for name in names)
    return (f"{output} holds {len(others)} answer(s) made with other options ({differing}); this run would "
            f"replace them. To replace them, add --overwrite (overwrite=True in Python); to keep them, write into "
            f"another folder with -o")


class OutputRun:
    """A run's view of its output directory: ``records`` (line -> the index's record), ``todo`` (the
    ``(line, sentence)`` pairs not answered yet with these options), and :meth:`add` for each new record."""

    def __init__(self, output: Path, records: dict, todo: list):
        self.output, self.records, self.todo = output, records, todo
        self._handle = None

    def add(self, record: dict) -> None:
        """Keep ``record`` and append it to the index at once (the index is rewritten whole at the end)."""
        self.records[record["line"]] = record
        if self._handle is None:
            self._handle = open(self.output / INDEX_NAME, "a", encoding="utf-8")
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@contextlib.contextmanager
def open_output(output, items, options: dict, program: str = "intgrads-client", overwrite: bool = False):
    """Lock ``output`` (made if missing), remove our leftovers, read the index and yield an :class:`OutputRun`
    whose ``todo`` holds the ``items`` (``(line, sentence)``) not done with ``options``; on the way out, even
    interrupted, the index is rewritten with one record per line and the lock removed. Raises
    :class:`OutputConflict` (nothing changed) when ``output`` holds answers made with other options, unless
    ``overwrite``."""
    output = Path(output)
    usable_output(output)
    try:
        lock = lock_output(output, program)
    except OSError as error:
        raise OutputRefused(f"cannot write into the output folder {output}: {error.strerror or error}") from None
    try:
        remove_own_temporaries(output)
        index = output / INDEX_NAME
        records = read_index(index)
        conflict = None if overwrite else option_conflict(records, options, output)
        if conflict:
            raise OutputConflict(conflict)
        todo = [(line, text) for line, text in items if not is_done(records.get(line), text, options, output)]
        run = OutputRun(output, records, todo)
        try:
            yield run
        finally:
            run.close()
            write_index(index, records)
    finally:
        lock.unlink(missing_ok=True)
