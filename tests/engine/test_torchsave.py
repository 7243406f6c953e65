"""torch.save's bytes with ISA-L CRC-32s: equal to torch.save itself, byte for byte, and a zip any reader checks."""

from __future__ import annotations

import io
import threading
import zipfile

import pytest
import torch

import intgrads
from intgrads.answer import torchsave


def torch_save_bytes(obj) -> bytes:
    """The oracle: torch.save into memory, with torch's own CRC-32s."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def objects():
    g = torch.Generator().manual_seed(0)
    yield "answer-shaped", {"intermediates": torch.randn(7, 9, 33, generator=g), "gradients": torch.randn(7, 9, 33,
                            generator=g), "step_sizes": torch.rand(7, generator=g), "tokens": ["the", "plot"],
                            "delta": 0.25, "truncated": False}
    yield "a list of answers, float16 and empty", [{"a": torch.ones(0)}, {"b": torch.randn(5, generator=g).half()}]
    yield "no tensors", {}
    yield "a scalar", torch.tensor(3.5)
    yield "a string with a descriptor signature", {"s": "PK\x07\x08" + "x" * 20, "t": torch.arange(5)}
    yield "storage over 64 KiB and odd-sized", {"x": torch.randn(70001, generator=g), "y": torch.arange(3, dtype=torch.int8)}
    yield "shared storage", (lambda t: {"whole": t, "view": t[2:5]})(torch.randn(10, generator=g))


@pytest.mark.parametrize("name,obj", list(objects()), ids=[name for name, _ in objects()])
def test_bytes_equal_torch_save_and_every_crc_checks(name, obj):
    fast = bytes(torchsave.save_bytes(obj))
    assert fast == torch_save_bytes(obj)
    with zipfile.ZipFile(io.BytesIO(fast)) as archive:   # Python's zlib checks every record's CRC-32
        assert archive.testzip() is None
        names = archive.namelist()
    assert names[-1].endswith("/.data/serialization_id")


def test_a_real_answer_round_trips(bundles):
    answer = intgrads.attribute(bundles["bert"], "a warm and honest film.", n_steps=6)
    fast = bytes(torchsave.save_bytes(answer))
    assert fast == torch_save_bytes(answer)
    back = torch.load(io.BytesIO(fast), weights_only=True)
    assert torch.equal(back["intermediate_gradients"], answer["intermediate_gradients"])
    assert back["tokens"] == answer["tokens"]


def test_the_crc_switch_is_restored_and_threads_agree():
    obj = {"x": torch.randn(300, 300, generator=torch.Generator().manual_seed(1))}
    expected = torch_save_bytes(obj)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(bytes(torchsave.save_bytes(obj)))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 20 and all(result == expected for result in results)
    assert torch.serialization.get_crc32_options() is True
    assert torch_save_bytes(obj) == expected   # torch's own saves still carry CRC-32s


def test_an_unknown_layout_is_left_to_torch():
    other = io.BytesIO()
    with zipfile.ZipFile(other, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"x" * 100)
    assert torchsave.fill_crcs(bytearray(other.getvalue())) is False
    assert torchsave.fill_crcs(bytearray(b"not a zip")) is False


def test_hash_combine_by_hand():
    """c10::hash_combine, 64-bit: seed ^ (value + 0x9e3779b9 + (seed << 6) + (seed >> 2)), worked by hand."""
    assert torchsave.hash_combine(0, 0) == 0x9E3779B9
    assert torchsave.hash_combine(1, 2) == 1 ^ (2 + 0x9E3779B9 + 64 + 0)          # 0x9E3779FA
    # seed = 2^64 - 1: (seed << 6) wraps to 2^64 - 64, seed >> 2 = 2^62 - 1, the sum to 2^62 + 0x9E377979
    assert torchsave.hash_combine(2**64 - 1, 1) == 0xBFFF_FFFF_61C8_8686
