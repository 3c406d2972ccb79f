"""tkn.io: atomic writes leave either the old file or the new one, and no temporary file."""
from __future__ import annotations

import pytest

from tkn.io import atomic_write, atomic_write_text


def test_writes_through_a_file_object_or_a_path(tmp_path):
    out = atomic_write(tmp_path / "sub" / "a.bin", lambda f: f.write(b"\x00\x01"))
    assert out == tmp_path / "sub" / "a.bin" and out.read_bytes() == b"\x00\x01"
    seen = []

    def by_name(tmp):
        seen.append(tmp)
        assert tmp.parent == out.parent and tmp.exists() and tmp != out
        tmp.write_bytes(b"compiled")

    atomic_write(out, by_name, pass_path=True)
    assert out.read_bytes() == b"compiled" and not seen[0].exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.bin"]


def test_text_keeps_line_endings_and_encoding(tmp_path):
    atomic_write_text(tmp_path / "t.csv", "a,é\r\nb\n")
    assert (tmp_path / "t.csv").read_bytes() == "a,é\r\nb\n".encode()


@pytest.mark.parametrize("pass_path", [False, True])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path, pass_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def half_then_fail(f):
        if pass_path:
            f.write_bytes(b"new, half")
        else:
            f.write(b"new, half")
        raise ValueError("checksum mismatch")

    with pytest.raises(ValueError, match="checksum mismatch"):
        atomic_write(target, half_then_fail, pass_path=pass_path)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
