"""A user's mistake at the command line is one clear line and exit 2, never a traceback or a silent no-op."""
from __future__ import annotations

import gzip

import pytest

from m3w.cli import main


@pytest.fixture
def crawl(tmp_path):
    """A one-record WARC, enough for the build to get past argument checks if one were missed."""
    from helpers.warc_builder import article, response, write_warc

    path = tmp_path / "one.warc.gz"
    write_warc(path, [response("https://example.org/a", article("A page", ["Some words."], []))])
    return path


def _config(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BUILD = ["build", "m3w", "--output", "{tmp}/out", "--input", "{warc}"]
CASES = {
    "glob matching nothing": (["build", "m3w", "--output", "{tmp}/out", "--input", "{tmp}/nothing-*.warc.gz"], "no input matches"),
    "missing config": ([*BUILD, "--config", "{tmp}/missing.toml"], "--config"),
    "malformed TOML config": ([*BUILD, "--config", "{bad_toml}"], "--config"),
    "malformed YAML config": ([*BUILD, "--config", "{bad_yaml}"], "--config"),
    "config with a bad suffix": ([*BUILD, "--config", "{ini}"], "must be .toml"),
    "unknown config key": ([*BUILD, "--config", "{unknown_key}"], "filters: unknown keys ['min_wrods']"),
    "unknown config section": ([*BUILD, "--config", "{unknown_section}"], "unknown keys ['filterz']"),
    "wrong-typed config value": ([*BUILD, "--config", "{wrong_type}"],
                                 "filters.min_words_per_document: expected int"),
    "zero samples per shard": ([*BUILD, "--samples-per-shard", "0"], "shards.samples_per_shard must be >= 1"),
    "fraction above one": ([*BUILD, "--config", "{fraction}"], "max_dup_line_fraction is a fraction"),
    "resolve without an address": ([*BUILD, "--resolve", "notanaddress"], "--resolve"),
    "resolve to a host name": ([*BUILD, "--resolve", "a.test=b.test:80"], "--resolve"),
    "resolve with a bad port": ([*BUILD, "--resolve", "a.test=127.0.0.1:99999"], "--resolve"),
    "flag typo": ([*BUILD, "--min-wrods", "5"], "unrecognized arguments: --min-wrods"),
    "extract on a missing page": (["extract", "{tmp}/missing.html"], "no such file"),
    "stats on a missing corpus": (["stats", "{tmp}/missing"], "no such corpus directory"),
    "validate on a missing corpus": (["validate", "{tmp}/missing"], "no such corpus directory"),
    "export on a missing corpus": (["export", "parquet", "{tmp}/missing", "{tmp}/out"], "no such corpus directory"),
    "stats on a folder that is not a corpus": (["stats", "{tmp}"], "not a corpus: no manifest.json, .tar shards or m3w/ pairs/ video/"),
    "validate on a folder that is not a corpus": (["validate", "{tmp}"], "not a corpus"),
    "export from a folder that is not a corpus": (["export", "mmc4", "{tmp}", "{tmp}/out"], "not a corpus"),
    "stats beam flag typo": (["stats", "{tmp}", "--runner", "FnApiRunner", "--direct_num_wrokers", "2"], "--direct_num_wrokers"),
    "no pages": (["sample-crawl", "{tmp}/s", "--pages", "0"], "--pages"),
    "demo without training steps": (["demo", "--workdir", "{tmp}/out", "--steps", "0"], "--steps must be >= 1, got 0"),
    "demo with negative LM steps": (["demo", "--workdir", "{tmp}/out", "--lm-steps", "-1"], "--lm-steps must be >= 1"),
    "demo with negative threads": (["demo", "--workdir", "{tmp}/out", "--threads", "-2"], "--threads must be >= 0"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_user_errors_are_one_line_and_exit_2(name, tmp_path, crawl, capsys):
    argv, expected = CASES[name]
    values = {
        "tmp": str(tmp_path), "warc": str(crawl),
        "bad_toml": _config(tmp_path, "bad.toml", "[filters\nmin_words = 3"),
        "bad_yaml": _config(tmp_path, "bad.yaml", "filters: [unclosed"),
        "ini": _config(tmp_path, "c.ini", "[filters]"),
        "unknown_key": _config(tmp_path, "k.toml", "[filters]\nmin_wrods = 5\n"),
        "unknown_section": _config(tmp_path, "s.toml", "[filterz]\nmin_words_per_document = 5\n"),
        "wrong_type": _config(tmp_path, "t.json", '{"filters": {"min_words_per_document": "5"}}'),
        "fraction": _config(tmp_path, "f.toml", "[filters]\nmax_dup_line_fraction = 3.0\n"),
    }
    rc = main([a.format(**values) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith(f"m3w {argv[0]}: error: "), err
    assert expected in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_valid_resolve_and_ipv6_resolve_pass_the_check(tmp_path, crawl, capsys):
    out = tmp_path / "out"
    rc = main(["build", "m3w", "--input", str(crawl), "--output", str(out), "--resolve", "a.test=127.0.0.1:8080",
               "--resolve", "b.test=[::1]:8080", "--min-images", "0"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "manifest.json").exists()


def test_gzip_config_is_not_silently_read(tmp_path, crawl, capsys):
    path = tmp_path / "c.toml.gz"
    path.write_bytes(gzip.compress(b"[filters]\n"))
    assert main(["build", "m3w", "--input", str(crawl), "--output", str(tmp_path / "o"), "--config", str(path)]) == 2


def _parsers(parser, path=("m3w",)):
    """Every parser of the CLI, sub-subcommands included, with its command path."""
    import argparse

    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_flag_has_help_and_config_lists_every_section():
    import argparse
    from dataclasses import fields

    from m3w.cli import build_parser
    from m3w_pipeline.core.config import BuildConfig

    parsers = dict(_parsers(build_parser()))
    assert {"m3w build", "m3w export parquet", "m3w export mmc4", "m3w stats", "m3w validate", "m3w train"} <= set(parsers)
    missing = []
    for name, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):  # each subcommand is listed with its own help
                missing += [f"{name} {choice.dest}" for choice in action._choices_actions if not choice.help]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {action.option_strings or action.dest}")
    assert missing == []
    config_help = next(a.help for a in parsers["m3w build"]._actions if "--config" in a.option_strings)
    assert [f.name for f in fields(BuildConfig)] == [s.strip() for s in config_help.split("sections ")[1].split(";")[0].split(",")]


def test_export_help_lists_only_the_flags_of_its_format(capsys):
    from m3w.cli import main

    for fmt in ("parquet", "mmc4"):
        with pytest.raises(SystemExit):
            main(["export", fmt, "--help"])
    parquet_help, mmc4_help = capsys.readouterr().out.split("usage: m3w export mmc4")
    assert "--images" in parquet_help and "--missing-images" in parquet_help
    assert "--images" not in mmc4_help and "--missing-images" not in mmc4_help and "--no-progress" in mmc4_help
