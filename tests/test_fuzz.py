"""Property-based fuzzing of the untrusted inputs: datagrams (protocol.py) and configuration
files (config.py). The spool reader's properties are in test_spool.py. FUZZ_EXAMPLES scales
every test up for a long run (docs/fuzzing.md)."""

from __future__ import annotations

import json
import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xrayd import config
from xrayd.config import Config, ConfigError
from xrayd.protocol import KNOWN_HEADERS, HeaderCache, Reason, check_header, classify, document_ids

SCALE = int(os.environ.get("FUZZ_EXAMPLES", "0"))


def examples(default: int) -> settings:
    return settings(max_examples=SCALE or default, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


HEADER_VALUES = st.one_of(
    st.sampled_from(["json", "JSON", "jSoN", "xml", "", "json "]), st.integers(-2, 3),
    st.booleans(), st.none(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
)
HEADER_KEYS = st.sampled_from(["format", "version", "FORMAT", "Version", "vErSiOn", "other"])


def reference_verdict(pairs: list[tuple[str, object]]) -> Reason | None:
    """The header rule, stated independently: case-insensitive keys, the last one wins."""
    fields = {k.lower(): v for k, v in pairs if k.lower() in ("format", "version")}
    fmt, version = fields.get("format"), fields.get("version")
    if not (isinstance(fmt, str) and fmt.lower() == "json"):
        return Reason.BAD_FORMAT
    if type(version) is not int or version != 1:
        return Reason.BAD_VERSION
    return None


@examples(2000)
@given(st.binary(max_size=300))
def test_arbitrary_datagrams_are_classified_never_raise(data):
    body, reason = classify(data, HeaderCache())
    assert (body is None) != (reason is None)
    if body is not None:
        header, _, rest = data.partition(b"\n")
        assert rest == body and body
        assert check_header(header) is None
        body.decode("utf-8")


@examples(1000)
@given(st.lists(st.tuples(HEADER_KEYS, HEADER_VALUES), max_size=5), st.text(min_size=1))
def test_json_headers_follow_the_rule(pairs, text):
    header = ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode()
    assert check_header(header) == reference_verdict(pairs)
    body = text.encode()
    verdict = classify(header + b"\n" + body, HeaderCache())
    if reference_verdict(pairs) is None and "\n" not in header.decode() and not (
            body.startswith((b"T1S", b"T1U", b"M1"))):
        assert verdict == (body, None)


@examples(800)
@given(st.lists(st.one_of(st.sampled_from(sorted(KNOWN_HEADERS)), st.binary(max_size=40)),
                min_size=1, max_size=40))
def test_header_cache_agrees_with_the_parser(headers):
    cache = HeaderCache(capacity=8)
    for header in headers + headers:
        assert cache.check(header) == check_header(header)


@examples(1500)
@given(st.binary(max_size=200))
def test_document_ids_never_raise(data):
    seg_id, trace_id = document_ids(data)
    assert isinstance(seg_id, str) and isinstance(trace_id, str)


YAML_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                         st.floats(allow_nan=False), st.text(max_size=20))
KEY_NAMES = st.one_of(st.sampled_from([k.path.split(".")[0] for k in config.KEYS]
                                      + ["Socket", "Logging", "Spool", "ProxyServer"]),
                      st.text(max_size=12))
SUB_KEYS = st.one_of(st.sampled_from([k.path.split(".")[-1] for k in config.KEYS]),
                     st.text(max_size=8))
DOCUMENTS = st.dictionaries(
    KEY_NAMES,
    st.one_of(YAML_SCALARS, st.dictionaries(SUB_KEYS, YAML_SCALARS, max_size=4),
              st.lists(YAML_SCALARS, max_size=3)),
    max_size=8,
)


@examples(1500)
@given(st.one_of(DOCUMENTS, YAML_SCALARS, st.lists(YAML_SCALARS, max_size=3)))
def test_config_documents_load_or_fail_with_a_config_error(document):
    for loader in (config.config_from_document,
                   lambda d: (config.validate_keys(config.flatten_keys(d)),
                              config.config_from_document(d))):
        try:
            result = loader(document)
        except ConfigError as exc:
            assert str(exc)
            continue
        loaded = result if isinstance(result, Config) else result[1]
        assert loaded.version in (1, 2)


@examples(1000)
@given(st.text(max_size=200))
def test_config_files_of_arbitrary_text_load_or_fail_with_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz-cfg.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        config.load_explicit(str(path))
    except ConfigError as exc:
        assert str(exc)


YAML_TOKENS = st.one_of(
    st.from_regex(r"\A[0-9]{1,4}-[0-9]{1,2}-[0-9]{1,2}([Tt ][0-9]{1,2}:[0-9]{2}:[0-9]{2})?\Z"),
    st.from_regex(r"\A[-+]?(0x[0-9a-f]+|0o[0-7]+|[0-9_]+(\.[0-9]*)?(e[-+]?[0-9]+)?|\.inf|\.nan)\Z"),
    st.sampled_from(["~", "null", "yes", "no", "on", "off", "true", "[", "{", "&a", "*a", "!!str",
                     "!!binary", "!!int", "!!float", "!!timestamp", "|", ">", "'", '"', "- x"]),
    st.text(max_size=10),
)


@examples(200)
@given(st.lists(st.tuples(KEY_NAMES, st.lists(YAML_TOKENS, min_size=1, max_size=3)),
                max_size=6), st.booleans())
def test_config_files_with_tricky_scalars_load_or_fail_with_a_config_error(
        tmp_path_factory, lines, with_version):
    text = "".join(f"{key}: {' '.join(tokens)}\n" for key, tokens in lines)
    if with_version:
        text += "Version: 2\n"
    path = tmp_path_factory.getbasetemp() / "fuzz-tricky.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        config.load_explicit(str(path))
    except ConfigError as exc:
        assert str(exc)


STRING_FIELDS = st.text(alphabet=st.characters(min_codepoint=48, max_codepoint=122),
                        min_size=1, max_size=15)


@examples(400)
@given(concurrency=st.integers(1, 512), buffer=st.integers(3, 10_000), region=STRING_FIELDS,
       rotation=st.booleans(), spool_dir=STRING_FIELDS, spool_mb=st.integers(1, 10**6),
       fsync=st.integers(-1000, 10**6).filter(bool), version=st.sampled_from([1, 2]))
def test_valid_files_round_trip(tmp_path_factory, concurrency, buffer, region, rotation,
                                spool_dir, spool_mb, fsync, version):
    document = {"Concurrency": concurrency, "TotalBufferSizeMB": buffer, "Region": region,
                "Logging": {"LogRotation": rotation},
                "Spool": {"Directory": spool_dir, "MaxSizeMB": spool_mb,
                          "FsyncIntervalMs": fsync},
                "Version": version}
    path = tmp_path_factory.getbasetemp() / "fuzz-valid.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    loaded = config.load_explicit(str(path))
    assert (loaded.concurrency, loaded.buffer_memory_mb, loaded.region, loaded.log_rotation,
            loaded.spool_dir, loaded.spool_max_mb, loaded.spool_fsync_interval_ms,
            loaded.version) == (concurrency, buffer, region, rotation, spool_dir, spool_mb, fsync,
                                version)
