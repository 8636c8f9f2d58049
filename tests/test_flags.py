"""The command line: Go flag semantics, the usage layout and exit codes (checklist: cli)."""

from __future__ import annotations

import pytest

from xrayd import cli, flags


def test_every_original_flag_has_short_and_long_form():
    pairs = {(f.short, f.long) for f in flags.FLAGS}
    for short, long in [("a", "resource-arn"), ("o", "local-mode"), ("m", "buffer-memory"),
                        ("n", "region"), ("b", "bind"), ("t", "bind-tcp"), ("r", "role-arn"),
                        ("c", "config"), ("f", "log-file"), ("l", "log-level"),
                        ("p", "proxy-address"), ("v", "version")]:
        assert (short, long) in pairs


def test_usage_lists_flags_in_registration_order_after_header():
    lines = flags.usage_text().splitlines()
    assert lines[0] == "Usage: X-Ray [options]"
    shown = [line.split("\t")[2] for line in lines[1:]]
    assert shown == [f"--{f.long}" for f in flags.FLAGS] + ["--help"]
    assert lines[1].startswith("\t-a\t--resource-arn\t")
    assert lines[-1].startswith("\t-h\t--help\t")


@pytest.mark.parametrize("args", [["-m", "5"], ["--m", "5"], ["-buffer-memory", "5"],
                                  ["--buffer-memory=5"], ["-m=5"]])
def test_short_long_single_and_double_dash_are_equivalent(args):
    assert flags.parse(args) == {"buffer-memory": 5}


def test_defaults_apply_with_no_arguments():
    assert flags.parse([]) == {}


def test_strings_ints_and_bools():
    given = flags.parse(["-n", "eu-west-1", "-o", "-m", "0x10", "--no-verify-ssl=false",
                         "-b", "-weird-but-value"])
    assert given == {"region": "eu-west-1", "local-mode": True, "buffer-memory": 16,
                     "no-verify-ssl": False, "bind": "-weird-but-value"}


def test_go_octal_and_last_occurrence_wins():
    assert flags.parse(["-m", "010", "-m", "12"]) == {"buffer-memory": 12}
    assert flags.parse(["-m", "010"]) == {"buffer-memory": 8}


def test_bool_with_separate_value_stops_parsing():
    # Go's flag package: "-o false" makes "false" a positional argument; parsing stops.
    assert flags.parse(["-o", "false", "-n", "x"]) == {"local-mode": True}


def test_double_dash_and_positional_stop_parsing():
    assert flags.parse(["-n", "a", "--", "-m", "5"]) == {"region": "a"}
    assert flags.parse(["pos", "-m", "5"]) == {}


@pytest.mark.parametrize("args,message", [
    (["-x"], "flag provided but not defined: -x"),
    (["-m", "abc"], 'invalid value "abc" for flag -m: parse error'),
    (["-o=maybe"], 'invalid value "maybe" for flag -o: parse error'),
    (["-n"], "flag needs an argument: -n"),
    (["---m", "1"], "bad flag syntax: ---m"),
])
def test_bad_flags(args, message):
    with pytest.raises(flags.FlagError, match=message):
        flags.parse(args)


def test_settings_from_flags_maps_to_config_fields():
    given = flags.parse(["-a", "arn:x", "--endpoint", "http://e", "--concurrency", "3",
                         "--log-rotation=false", "-c", "file.yaml", "-v"])
    assert flags.settings_from(given) == {
        "resource_arn": "arn:x", "endpoint": "http://e", "concurrency": 3, "log_rotation": False,
    }


def test_main_exit_codes(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["-h"]) == 0
    assert capsys.readouterr().out.startswith("Usage: X-Ray [options]")
    assert cli.main(["--help"]) == 0
    assert cli.main(["-x"]) == 2
    out = capsys.readouterr()
    assert "flag provided but not defined: -x" in out.err
    assert out.out.startswith("Usage: X-Ray")
    assert cli.main(["-v"]) == 0
    assert capsys.readouterr().out.startswith("AWS X-Ray daemon version: ")


def test_version_is_evaluated_after_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("Version: 7\n")
    assert cli.main(["-c", str(bad), "-v"]) == 1
    assert "Config Version Setting is not correct" in capsys.readouterr().err
