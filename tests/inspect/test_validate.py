"""`m3w validate`: passes on good corpora; on deliberately damaged copies it exits 1 naming
the file, member and key of what is wrong. Damage is done with tarfile/pyarrow directly."""
from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_stats import corpus_path, handmade_corpus, make_documents, write_corpus

from m3w_pipeline.write.layout import index_file


def problems_of(root: Path) -> list:
    from m3w_pipeline.inspect.validate import validate_corpus

    return validate_corpus(str(root)).problems


def cli(root: Path, capsys) -> tuple[int, list[str]]:
    from m3w.cli import main

    rc = main(["validate", str(root), "--no-progress"])
    return rc, capsys.readouterr().out.splitlines()


@pytest.fixture
def copy(tmp_path, tmp_path_factory) -> Path:
    """A fresh copy of the hand-made corpus to damage."""
    dst = tmp_path / "m3w"
    shutil.copytree(handmade_corpus(tmp_path_factory), dst)
    return dst


def rewrite_tar(path: Path, edit: Callable[[str, bytes], Optional[bytes]]) -> None:
    """Rewrite a tar member by member: `edit(name, data)` returns new bytes, or None to drop the member."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            new = edit(name, data)
            if new is None:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(new)
            tar.addfile(info, io.BytesIO(new))


def first_json(path: Path) -> tuple[str, dict]:
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".json"))
        return member.name[: -len(".json")], json.loads(tar.extractfile(member).read())


def has(problems: list, check: str, file: str, member: Optional[str] = None, key: Optional[str] = None, text: str = "") -> bool:
    return any(
        p.check == check and p.file == file and (member is None or p.member == member) and (key is None or p.key == key) and text in p.message
        for p in problems
    )


@pytest.mark.parametrize("name", ["handmade", "sample_build", "corpus_build"])
def test_good_corpora_pass(request, capsys, name):
    root = corpus_path(request, name)
    rc, lines = cli(root, capsys)
    assert rc == 0, "\n".join(lines[:20])
    assert lines[-1].endswith(": OK") and "m3w corpus" in lines[-1]


def test_truncated_tar(copy, capsys):
    tar = copy / "m3w-00001.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) * 6 // 10])
    rc, lines = cli(copy, capsys)
    assert rc == 1
    assert any(re.match(r"m3w-00001.tar(:\w+\.\S+ \[key \w+\])?: truncated: damaged archive at byte \d+", line) for line in lines), lines
    problems = problems_of(copy)
    assert has(problems, "size", "m3w-00001.tar", text=f"{len(data) * 6 // 10} bytes but the manifest says {len(data)}")
    assert has(problems, "sha256", "m3w-00001.tar") and has(problems, "samples", "m3w-00001.tar")
    assert has(problems, "manifest", "manifest.json", text="totals.samples=12 but the shards hold")
    assert not [p for p in problems if p.file.startswith(("m3w-00000", "m3w-00002"))]


def test_edited_json(copy, capsys):
    tar = copy / "m3w-00000.tar"
    key, doc = first_json(tar)

    def edit(name: str, data: bytes) -> bytes:
        if name != f"{key}.json":
            return data
        doc["texts"].append("an extra paragraph")  # breaks the aligned lists
        doc["schema"] = "m3w.document/2"  # and the schema
        return json.dumps(doc).encode()

    rewrite_tar(tar, edit)
    rc, lines = cli(copy, capsys)
    assert rc == 1
    assert f"m3w-00000.tar:{key}.json [key {key}]: schema: texts has {len(doc['texts'])} positions but images has {len(doc['images'])}" in lines
    problems = problems_of(copy)
    assert has(problems, "schema", "m3w-00000.tar", f"{key}.json", key, "schema: 'm3w.document/1' was expected")
    assert has(problems, "metadata", "m3w-00000.tar", f"{key}.json", key, "metadata.n_text_nodes")
    assert has(problems, "index", "m3w-00000.parquet", key=key, text="n_words=")
    assert has(problems, "sha256", "m3w-00000.tar")


def test_missing_image(copy, capsys):
    tar = copy / "m3w-00002.tar"
    key, doc = first_json(tar)
    position = next(i for i, im in enumerate(doc["images"]) if im and im["status"] == "ok")
    gone = f"{key}.{doc['images'][position]['file']}"
    rewrite_tar(tar, lambda name, data: None if name == gone else data)
    rc, lines = cli(copy, capsys)
    assert rc == 1
    assert f"m3w-00002.tar:{gone} [key {key}]: missing-member: images[{position}] is stored as {gone}, which is not in the tar" in lines
    assert has(problems_of(copy), "index", "m3w-00002.parquet", key=key, text="offset/size")


def test_corrupt_image_bytes(copy):
    tar = copy / "m3w-00002.tar"
    key, doc = first_json(tar)
    target = f"{key}.{next(im for im in doc['images'] if im and im['status'] == 'ok')['file']}"
    rewrite_tar(tar, lambda name, data: data[:200] + bytes(len(data) - 200) if name == target else data)
    problems = problems_of(copy)
    assert has(problems, "image-sha256", "m3w-00002.tar", target, key, "bytes hash to")


def test_wrong_checksum_is_the_only_problem(copy, capsys):
    manifest = json.loads((copy / "manifest.json").read_text())
    real = manifest["shards"][1]["tar_sha256"]
    manifest["shards"][1]["tar_sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    rc, lines = cli(copy, capsys)
    assert rc == 1
    assert lines[:-1] == [f"m3w-00001.tar: sha256: sha256 {real} but the manifest says {'0' * 64}"]


@pytest.mark.parametrize("where", ["across", "within"])
def test_duplicate_key(tmp_path, capsys, where):
    docs = make_documents()
    extra = docs[1] if where == "across" else docs[0]  # document 12 lands in shard 0; docs[1] is in shard 1
    write_corpus(tmp_path / "m3w", docs + [extra])  # a consistent manifest: only the duplicate is wrong
    rc, lines = cli(tmp_path / "m3w", capsys)
    assert rc == 1
    problems = [line for line in lines[:-1]]
    if where == "across":
        assert problems == [f"m3w-00001.tar:{extra.key}.json [key {extra.key}]: duplicate-key: key also in m3w-00000.tar"]
        from m3w_pipeline.inspect.validate import ValidateConfig, validate_corpus

        parallel = validate_corpus(str(tmp_path / "m3w"), config=ValidateConfig(workers=2))  # shards in 2 processes
        assert [str(p) for p in parallel.problems] == problems and parallel.samples == 13
    else:
        assert len(problems) == 1 and problems[0].startswith(f"m3w-00000.tar:{extra.key}.json [key {extra.key}]: duplicate-key: key appears twice")


def test_index_offsets_must_match_the_tar(copy, capsys):
    index = copy / index_file("m3w-00000")
    table = pq.read_table(index)
    offsets = table.column("offset").to_pylist()
    offsets[1] += 512
    table = table.set_column(table.schema.get_field_index("offset"), "offset", pa.array(offsets, pa.int64()))
    pq.write_table(table, index)
    data = index.read_bytes()
    manifest = json.loads((copy / "manifest.json").read_text())
    import hashlib

    manifest["shards"][0].update(parquet_bytes=len(data), parquet_sha256=hashlib.sha256(data).hexdigest())
    (copy / "manifest.json").write_text(json.dumps(manifest))
    key = table.column("key")[1].as_py()
    rc, lines = cli(copy, capsys)
    assert rc == 1 and len(lines) == 2
    assert lines[0].startswith(f"m3w-00000.parquet:row 1 [key {key}]: index: row 1: offset/size {offsets[1]}/")


def test_stray_shard_files_are_reported(copy, capsys):
    shutil.copy(copy / "m3w-00000.tar", copy / "m3w-00007.tar")
    rc, lines = cli(copy, capsys)
    assert rc == 1 and lines[:-1] == ["m3w-00007.tar: unlisted-file: shard file not listed in the manifest"]


def _refusing(name: str):
    """open_local, except that the file called `name` cannot be opened (permissions, a vanished object)."""
    from m3w_pipeline.inspect.corpus import open_local

    def opener(path: str):
        if path.rsplit("/", 1)[-1] == name:
            raise PermissionError(13, "Permission denied", path)
        return open_local(path)

    return opener


@pytest.mark.parametrize("unopenable", ["m3w-00001.tar", "m3w-00001.parquet"])
def test_a_file_that_cannot_be_opened_is_a_missing_file_naming_it(copy, unopenable):
    from m3w_pipeline.inspect.validate import validate_corpus

    problems = validate_corpus(str(copy), opener=_refusing(unopenable)).problems
    assert has(problems, "missing-file", unopenable, text="cannot open: [Errno 13] Permission denied")
    assert not [p for p in problems if p.file.startswith(("m3w-00000", "m3w-00002"))]
    assert [p.check for p in problems if p.file == unopenable] == ["missing-file"]


@pytest.mark.parametrize("layout", ["mmc4", "obelics"])
def test_an_export_file_that_cannot_be_opened_is_a_missing_file_naming_it(tmp_path, tmp_path_factory, layout):
    from test_export import export

    from m3w_pipeline.inspect.validate_export import validate_export

    dst = tmp_path / layout
    export("mmc4" if layout == "mmc4" else "parquet", handmade_corpus(tmp_path_factory), dst)
    files = sorted(p.name for p in dst.iterdir() if p.suffix in (".tar", ".parquet"))
    assert len(files) >= 2
    report = validate_export(str(dst), layout, opener=_refusing(files[0]), progress=False)
    assert [(p.check, p.file) for p in report.problems if p.file == files[0]] == [("missing-file", files[0])]
    assert "cannot open: [Errno 13] Permission denied" in report.problems[0].message
    assert report.shards == len(files) and validate_export(str(dst), layout, progress=False).ok
