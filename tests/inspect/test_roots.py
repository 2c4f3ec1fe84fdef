"""`m3w stats`, `validate` and `export` on a `build all` root (m3w/, pairs/, video/): every corpus
is read, reported in its own section / JSON key and checked; exports are validated as what they are."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from build_root import build_root, manifests

from m3w.cli import main

pytestmark = pytest.mark.slow  # one `build all` per session
KINDS = ("m3w", "pairs", "video")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what came before (the session's build prints its summary)
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _tar_samples(root: Path) -> int:
    """Samples of a corpus counted with tarfile: distinct keys."""
    keys = set()
    for tar_path in root.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            keys |= {m.name.split(".", 1)[0] for m in tar.getmembers()}
    return len(keys)


# ----------------------------------------------------------------------------- stats


def test_stats_on_a_root_reports_every_corpus(request, capsys):
    root = build_root(request)
    truth = manifests(root)
    rc, out, _ = run(capsys, "stats", str(root), "--json", "--no-progress")
    assert rc == 0
    summaries = json.loads(out)
    assert list(summaries) == list(KINDS)
    for kind in KINDS:
        s = summaries[kind]
        assert s["kind"] == kind and s["root"] == str(root / kind)
        assert s["counts"]["samples"] == truth[kind]["totals"]["samples"] == _tar_samples(root / kind) > 0
        assert s["counts"]["shards"] == len(truth[kind]["shards"])
    assert [summaries[k]["sample_unit"] for k in KINDS] == ["documents", "pairs", "clips"]
    assert summaries["pairs"]["distributions"]["words_per_sample"]["label"] == "caption words per pair"
    assert summaries["video"]["distributions"]["images_per_sample"]["label"] == "key frames per clip"
    assert all("document" not in d["label"] for k in ("pairs", "video") for d in summaries[k]["distributions"].values())

    # the single-corpus shape is unchanged for a corpus folder, and equals the root's section
    rc, out, _ = run(capsys, "stats", str(root / "pairs"), "--json", "--no-progress")
    assert rc == 0 and json.loads(out) == summaries["pairs"]
    # --kind on a root picks one corpus
    rc, out, _ = run(capsys, "stats", str(root), "--json", "--kind", "video", "--no-progress")
    assert rc == 0 and list(json.loads(out)) == ["video"] and json.loads(out)["video"] == summaries["video"]

    rc, table, _ = run(capsys, "stats", str(root), "--no-progress")
    assert rc == 0
    assert [line for line in table.splitlines() if line.startswith("===")] == ["=== m3w ===", "=== pairs ===", "=== video ==="]
    m3w, pairs, video = re.split(r"^=== \w+ ===$", table, flags=re.M)[1:]
    assert re.search(rf"^  documents\s+{truth['m3w']['totals']['samples']}$", m3w, re.M)
    assert re.search(rf"^  pairs\s+{truth['pairs']['totals']['samples']}$", pairs, re.M)
    assert re.search(rf"^  clips\s+{truth['video']['totals']['samples']}$", video, re.M)
    assert "funnel (manifest)" in m3w and "funnel: the same as m3w's (one run)" in pairs and "funnel: the same as m3w's" in video
    assert "quality scores (index)" in m3w and "quality scores" not in pairs


def test_beam_job_on_a_root_agrees_with_the_local_path(request, capsys, tmp_path):
    """`--runner` on a root runs one job per corpus, each with its own --stats-output file."""
    root = build_root(request)
    rc, out, _ = run(capsys, "stats", str(root), "--json", "--no-progress")
    local = json.loads(out)
    rc, out, err = run(capsys, "stats", str(root), "--json", "--runner", "FnApiRunner", "--stats-output", str(tmp_path / "stats.json"))
    assert rc == 0, err
    beam = json.loads(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.m3w.json", "stats.pairs.json", "stats.video.json"]
    for kind in KINDS:
        assert beam[kind].pop("source") == "auto (Beam FnApiRunner)" and local[kind].pop("source") == "auto"
    assert beam == local and beam["m3w"]["quality_scores"]


def test_quality_scores_come_from_the_index_with_the_builds_limits(request, capsys):
    root = build_root(request)
    truth = manifests(root)["m3w"]
    rc, out, _ = run(capsys, "stats", str(root / "m3w"), "--json", "--no-progress")
    assert rc == 0
    scores = json.loads(out)["quality_scores"]
    from m3w_pipeline.inspect.corpus import open_corpus

    rows = [r for shard in open_corpus(str(root / "m3w")).shards for r in pq.read_table(shard.index).to_pylist()]
    assert len(rows) == truth["totals"]["samples"]
    from m3w_pipeline.write.shards import SCORE_COLUMNS

    assert list(scores) == [c for c in SCORE_COLUMNS if c != "lang_id"] and len(scores) == 16
    filters = truth["config"]["filters"]
    for name, d in scores.items():
        values = [r[name] for r in rows if r[name] is not None]
        assert d["n"] == len(values) == sum(c for _, c in d["histogram"]), name
        assert d["min"] == pytest.approx(min(values), abs=6e-4) and d["max"] == pytest.approx(max(values), abs=6e-4), name
        assert d["mean"] == pytest.approx(sum(values) / len(values), abs=6e-4), name
        t = d["threshold"]
        setting = t["setting"].removeprefix("filters.")
        assert filters[setting] == t["value"], name
        assert (t["keeps"] == "at most") == setting.startswith("max_")
    assert scores["dup_5gram_char_fraction"]["threshold"] == {
        "setting": "filters.max_dup_5gram_char_fraction", "value": filters["max_dup_5gram_char_fraction"], "keeps": "at most", "active": True}
    assert scores["lang_id_score"]["threshold"]["setting"] == "filters.min_language_score"
    assert scores["lang_id_score"]["threshold"]["active"] is (filters["min_language_score"] > 0)


def test_every_score_column_has_a_filter_setting():
    """A renamed filter setting would silently drop its line from the report."""
    from dataclasses import asdict

    from m3w_pipeline.core.config import FilterConfig
    from m3w_pipeline.inspect.stats import QUALITY_SCORES
    from m3w_pipeline.inspect.summary import quality_thresholds

    limits = quality_thresholds({"config": {"filters": asdict(FilterConfig())}})
    assert sorted(limits) == sorted(QUALITY_SCORES)
    assert limits["stopword_ratio"]["keeps"] == "at least" and limits["special_char_ratio"]["keeps"] == "at most"


# ----------------------------------------------------------------------------- validate


def test_validate_on_a_root_checks_every_corpus(request, capsys, tmp_path):
    root = build_root(request)
    truth = manifests(root)
    rc, out, _ = run(capsys, "validate", str(root), "--no-progress")
    lines = out.splitlines()
    assert rc == 0, out[-3000:]
    assert lines[-1] == f"{root}: build root with m3w, pairs, video: OK"
    for kind in KINDS:
        n = truth[kind]["totals"]["samples"]
        assert any(re.fullmatch(rf"{re.escape(str(root / kind))}: {kind} corpus, {len(truth[kind]['shards'])} shards, {n} samples, \d+ images: OK", x)
                   for x in lines), kind
    rc, out, _ = run(capsys, "validate", str(root), "--json", "--no-progress")
    reports = json.loads(out)
    assert rc == 0 and list(reports) == list(KINDS)
    assert [reports[k]["samples"] for k in KINDS] == [truth[k]["totals"]["samples"] for k in KINDS]
    assert all(reports[k]["ok"] and reports[k]["kind"] == k for k in KINDS)

    # damage the pair corpus of a copy: only its section reports problems, and the exit code is 1
    copy = tmp_path / "out"
    shutil.copytree(root, copy)
    tar = sorted((copy / "pairs").glob("*.tar"))[0]
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    rc, out, _ = run(capsys, "validate", str(copy), "--json", "--no-progress")
    reports = json.loads(out)
    assert rc == 1 and reports["m3w"]["ok"] and reports["video"]["ok"] and not reports["pairs"]["ok"]
    checks = Counter(p["check"] for p in reports["pairs"]["problems"])
    assert checks["truncated"] == 1 and checks["size"] == 1 and checks["sha256"] == 1
    rc, out, _ = run(capsys, "validate", str(copy), "--no-progress")
    n = len(reports["pairs"]["problems"])
    assert rc == 1 and out.splitlines()[-1] == f"{copy}: build root with m3w, pairs, video: problems in pairs ({n})"
    # the member is named when the cut falls inside one, not when it falls on a header boundary
    assert re.search(rf"^{re.escape(tar.name)}(:\w+\.\w+ \[key \w+\])?: truncated: damaged archive at byte \d+", out, re.M), out


# ----------------------------------------------------------------------------- export and validating exports


def export(capsys, fmt: str, src: Path, dst: Path, *flags: str) -> dict:
    rc, out, err = run(capsys, "export", fmt, str(src), str(dst), *flags)
    assert rc == 0, err
    return json.loads(out)


def test_export_on_a_root_exports_its_m3w_corpus_and_validate_reads_the_exports(request, capsys, tmp_path):
    root = build_root(request)
    truth = manifests(root)["m3w"]
    n_images = sum(1 for p in (root / "m3w").glob("*.tar") for m in tarfile.open(p).getnames() if not m.endswith(".json"))
    mmc4 = export(capsys, "mmc4", root, tmp_path / "mmc4")
    obelics = export(capsys, "parquet", root, tmp_path / "obelics")
    assert mmc4 == export(capsys, "mmc4", root / "m3w", tmp_path / "mmc4-again") | {"files": mmc4["files"]}
    assert mmc4["documents"] + mmc4["skipped_documents"] == obelics["documents"] == truth["totals"]["samples"]
    assert mmc4["images"] == obelics["images"] == n_images

    rc, out, _ = run(capsys, "validate", str(tmp_path / "mmc4"), "--no-progress")
    files = len(truth["shards"])
    assert (rc, out.splitlines()) == (0, [f"{tmp_path / 'mmc4'}: mmc4 export, {files} files, {mmc4['documents']} documents, {n_images} images: OK"])
    rc, out, _ = run(capsys, "validate", str(tmp_path / "obelics"), "--no-progress")
    expected = f"{tmp_path / 'obelics'}: obelics export, {files} files, {obelics['documents']} documents, {n_images} images: OK"
    assert (rc, out.splitlines()) == (0, [expected])
    # with URLs instead of bytes (list<string> images; images kept as URL only are kept too)
    missing = sum(1 for p in (root / "m3w").glob("*.tar") for m in tarfile.open(p).getmembers() if m.name.endswith(".json")
                  for im in json.loads(tarfile.open(p).extractfile(m).read())["images"] if im and im["status"] == "missing")
    urls = export(capsys, "parquet", root, tmp_path / "urls", "--images", "urls")
    rc, out, _ = run(capsys, "validate", str(tmp_path / "urls"), "--json", "--no-progress")
    report = json.loads(out)
    assert rc == 0 and report["ok"] and report["images"] == urls["images"] == n_images + missing and missing > 0


def _rewrite_first_json(tar_path: Path, edit, rename=None) -> str:
    with tarfile.open(tar_path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    name, data = members[0]
    members[0] = (rename or name, json.dumps(edit(json.loads(data))).encode())
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for n, d in members:
            info = tarfile.TarInfo(n)
            info.size = len(d)
            tar.addfile(info, io.BytesIO(d))
    return name[: -len(".json")]


def test_damaged_mmc4_export_is_reported_as_mmc4(request, capsys, tmp_path):
    root = build_root(request)
    dst = tmp_path / "mmc4"
    export(capsys, "mmc4", root, dst)
    first = sorted(dst.glob("*.tar"))[0]

    def damage(doc: dict) -> dict:
        doc["image_info"][0]["matched_text_index"] = len(doc["text_list"]) + 5  # points past the texts
        doc["image_info"][-1]["image_base64"] = base64.b64encode(b"not an image").decode()
        doc["similarity_matrix"] = doc["similarity_matrix"][:-1]  # a row short
        return doc

    key = _rewrite_first_json(first, damage)
    sizes = json.loads((dst / "sizes.json").read_text())
    sizes[first.name] += 1
    (dst / "sizes.json").write_text(json.dumps(sizes))
    rc, out, _ = run(capsys, "validate", str(dst), "--json", "--no-progress")
    report = json.loads(out)
    assert rc == 1 and report["kind"] == "mmc4"
    got = sorted((p["check"], p["file"], p["key"]) for p in report["problems"])
    n_images = len(json.loads(io.BytesIO(tarfile.open(first).extractfile(f"{key}.json").read()).read())["image_info"])
    assert got == sorted([
        ("schema", first.name, key),  # the matrix is a row short
        ("schema", first.name, key),  # matched_text_index out of range
        ("image-decode", first.name, key),
        ("sizes", "sizes.json", None),
    ]), report["problems"]
    messages = " | ".join(p["message"] for p in report["problems"])
    assert f"similarity_matrix: {n_images} rows (one per image) expected, found {n_images - 1}" in messages
    assert "image_info[0]: matched_text_index" in messages and "does not decode" in messages
    assert f"{first.name}: {sizes[first.name]} samples listed but the tar holds {sizes[first.name] - 1}" in messages


def test_windowed_mmc4_samples_are_keyed_by_their_document(request, capsys, tmp_path):
    """A window of a document (the export's window_tokens) is KEY_wNNN.json whose JSON key is the document's."""
    root = build_root(request)
    dst = tmp_path / "mmc4"
    export(capsys, "mmc4", root, dst)
    first = sorted(dst.glob("*.tar"))[0]
    with tarfile.open(first) as tar:
        key = tar.getnames()[0][: -len(".json")]

    def as_window(doc: dict) -> dict:
        return {**doc, "window": {"index": 0, "of": 1, "source_key": doc["key"]}}

    _rewrite_first_json(first, as_window, rename=f"{key}_w000.json")
    rc, out, _ = run(capsys, "validate", str(dst), "--json", "--no-progress")
    assert rc == 0 and json.loads(out)["ok"], out
    _rewrite_first_json(first, lambda doc: {**doc, "key": "0" * 24})
    rc, out, _ = run(capsys, "validate", str(dst), "--json", "--no-progress")
    assert rc == 1 and [(p["check"], p["key"]) for p in json.loads(out)["problems"]] == [("key", f"{key}_w000")]


def test_damaged_obelics_export_is_reported_as_obelics(request, capsys, tmp_path):
    root = build_root(request)
    dst = tmp_path / "obelics"
    export(capsys, "parquet", root, dst)
    path = sorted(dst.glob("*.parquet"))[0]
    table = pq.read_table(path)
    rows = table.to_pylist()
    meta = json.loads(rows[0]["metadata"])
    position = next(i for i, m in enumerate(meta) if m)
    meta[position]["sha256"] = "0" * 64
    rows[0]["metadata"] = json.dumps(meta)
    rows[1]["texts"] = rows[1]["texts"] + ["an extra text"]  # no longer aligned with images
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    rc, out, _ = run(capsys, "validate", str(dst), "--json", "--no-progress")
    report = json.loads(out)
    keys = [json.loads(r["general_metadata"])["key"] for r in rows[:2]]
    assert rc == 1 and report["kind"] == "obelics"
    assert [(p["check"], p["file"], p["member"], p["key"]) for p in report["problems"]] == [
        ("image-sha256", path.name, "row 0", keys[0]),
        ("aligned", path.name, "row 1", keys[1]),
    ]


# ----------------------------------------------------------------------------- refusals


def test_folders_that_are_not_corpora_are_one_line_errors(request, capsys, tmp_path):
    root = build_root(request)
    (tmp_path / "empty").mkdir()
    only_pairs = tmp_path / "only-pairs"
    shutil.copytree(root / "pairs", only_pairs / "pairs")
    export(capsys, "mmc4", root, tmp_path / "mmc4")
    cases = [
        (["stats", str(tmp_path / "empty")], "m3w stats: error: ", "not a corpus: no manifest.json, .tar shards or m3w/ pairs/ video/ corpora"),
        (["validate", str(tmp_path / "empty")], "m3w validate: error: ", "not a corpus"),
        (["export", "mmc4", str(tmp_path / "empty"), str(tmp_path / "x")], "m3w export: error: ", "not a corpus"),
        (["stats", str(tmp_path / "mmc4")], "m3w stats: error: ", "is an MMC4 export (written by `m3w export`), not a corpus"),
        (["export", "parquet", str(tmp_path / "mmc4"), str(tmp_path / "x")], "m3w export: error: ", "is an MMC4 export"),
        (["export", "parquet", str(only_pairs), str(tmp_path / "x")], "m3w export: error: ",
         "`m3w export parquet` needs an M3W corpus; " + f"{only_pairs} holds pairs only"),
        (["export", "mmc4", str(root / "video"), str(tmp_path / "x")], "m3w export: error: ",
         "is a video corpus; `m3w export mmc4` needs an M3W corpus"),
        (["stats", str(only_pairs), "--kind", "m3w"], "m3w stats: error: ", f"{only_pairs} holds no m3w corpus (it holds pairs)"),
    ]
    for argv, prefix, text in cases:
        rc, out, err = run(capsys, *argv, *(["--no-progress"] if argv[0] != "export" else []))
        lines = err.strip().splitlines()
        assert rc == 2 and out == "" and len(lines) == 1, (argv, err)
        assert lines[0].startswith(prefix) and text in lines[0], (argv, lines)
    assert not (tmp_path / "x").exists()


def test_rejects_are_sampled_per_reason_and_bounded(request):
    from m3w_pipeline.inspect.corpus import sample_rejects

    root = build_root(request) / "m3w"
    rows = [json.loads(line) for line in (root / "rejects.jsonl").read_text().splitlines()]
    per_reason = Counter((r["stage"], r["reason"]) for r in rows)
    sample = sample_rejects(str(root), per_reason=2)
    assert sample is not None and sample.complete and sample.seen == per_reason
    for reason, n in per_reason.items():
        assert [x["key"] for x in sample.by_reason[reason]] == [r["key"] for r in rows if (r["stage"], r["reason"]) == reason][:2]
    cut = sample_rejects(str(root), per_reason=2, max_bytes=400)
    assert cut is not None and not cut.complete and sum(cut.seen.values()) < len(rows)
    with contextlib.suppress(FileNotFoundError):
        assert sample_rejects(str(root.parent / "pairs")) is None
