"""Differential tests against the X-Ray reference: the API reference's TraceSummary fields (and
the definitions of its RootCause shapes) and every filter example of the developer guide's
"Using filter expressions" page, written out by hand as test data. A real ``xrayd --offline``
gets the documents from the aws-xray-sdk (UDP) or through PutTraceSegments (boto3), and boto3
reads the answers, which are checked field by field."""

from __future__ import annotations

import json
import time

import botocore.exceptions
import pytest

from conftest import Xrayd, free_udp_tcp_port, wait_until
from offline_support import recorder, xray_client

NOW = time.time() - 30  # the corpus' traces start around here
EPOCH = int(NOW)


def trace_id(n: int, epoch: int = EPOCH) -> str:
    return f"1-{epoch:08x}-{n:024x}"


@pytest.fixture(scope="module")
def xray(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    port = free_udp_tcp_port()
    daemon = Xrayd(["--offline", "--store", str(tmp / "traces.db"), "-b", f"127.0.0.1:{port}",
                    "-t", f"127.0.0.1:{port}", "-l", "info"], tmp)
    daemon.wait_for("Trace viewer and X-Ray API at")
    yield xray_client(port), port
    daemon.kill()


def put(client, *docs: dict) -> None:
    answer = client.put_trace_segments(TraceSegmentDocuments=[json.dumps(d) for d in docs])
    assert answer["UnprocessedTraceSegments"] == []


def summaries(client, expression: str | None = None, start: float = NOW - 60,
              end: float | None = None, **extra) -> list[dict]:
    args = {"StartTime": start, "EndTime": end or time.time() + 60, **extra}
    if expression is not None:
        args["FilterExpression"] = expression
    found: list[dict] = []
    while True:
        page = client.get_trace_summaries(**args)
        found.extend(page["TraceSummaries"])
        if "NextToken" not in page:
            return found
        args["NextToken"] = page["NextToken"]


def summary_of(client, tid: str, revision: int = 1, **extra) -> dict:
    def stored():
        found = [s for s in summaries(client, **extra) if s["Id"] == tid]
        return found[0] if found and found[0]["Revision"] >= revision else None
    return wait_until(stored, what=f"trace {tid} at revision {revision}")


# --- the corpus of the guide's filter examples --------------------------------------------
def _seg(label: str, n: int, name: str, start: float, end: float | None, **fields) -> dict:
    doc = {"name": name, "id": f"{n:016x}", "trace_id": TRACES[label], "start_time": NOW + start,
           **fields}
    if end is None:
        doc["in_progress"] = True
    else:
        doc["end_time"] = NOW + end
    return doc


def _sub(n: int, name: str, start: float, end: float, **fields) -> dict:
    return {"name": name, "id": f"{n:016x}", "start_time": NOW + start, "end_time": NOW + end,
            **fields}


def _http(url: str | None, status: int | None, method: str = "GET") -> dict:
    http: dict = {"request": {"method": method}}
    if url:
        http["request"]["url"] = url
    if status:
        http["response"] = {"status": status}
    return http


LABELS = ["slow", "async", "quick", "inprogress", "deserialize", "api", "auth", "dynamo",
          "plane", "chain7", "lambda1", "lambda2", "game", "old"]
TRACES = {label: trace_id(0xC0 + i) for i, label in enumerate(LABELS)}


def _web(label: str, n: int, end: float, status: int, subsegments=(), **fields) -> dict:
    flags = {"fault": True} if status >= 500 else {"error": True} if status >= 400 else {}
    return _seg(label, n, "web", 0, end, http=_http(f"http://web.local/{label}", status),
                subsegments=list(subsegments), **flags, **fields)


def _chain() -> list[dict]:
    docs = []
    for k in range(7):
        calls = [] if k == 6 else [_sub(0x7100 + k, f"s{k + 1}", k * 0.2 + 0.1,
                                        3 - k * 0.2 - 0.1, namespace="remote", fault=True)]
        extra = {"parent_id": f"{0x7100 + k - 1:016x}"} if k else {
            "http": _http("http://web.local/chain7", 500)}
        docs.append(_seg("chain7", 0x7000 + k, f"s{k}", k * 0.2, 3 - k * 0.2, fault=True,
                         subsegments=calls, **extra))
    return docs


def corpus() -> list[dict]:
    denied = {"exceptions": [{"id": "e1", "type": "AccessDenied",
                              "message": "Access Denied for account_id: 1234567890"}]}
    return [
        _seg("slow", 0x100, "web", 0, 6, http=_http("http://web.local/api/game/42", 200),
             user="alice", subsegments=[_sub(0x101, "traces", 0.5, 5.5, namespace="remote")]),
        _web("async", 0x200, 1, 200),
        {**_sub(0x201, "async-work", 0.5, 7), "type": "subsegment", "parent_id": f"{0x200:016x}",
         "trace_id": TRACES["async"]},
        _seg("quick", 0x300, "web", 0, 0.2, http=_http("http://api.example.com/v2/items", 200)),
        _seg("inprogress", 0x400, "web", 0, None),
        _web("deserialize", 0x500, 0.5, 500, [_sub(0x501, "deserialize", 0.1, 0.3, fault=True,
             cause={"exceptions": [{"id": "e0", "type": "SerializationError",
                                    "message": "bad json"}]})]),
        _web("api", 0x600, 2, 200, [_sub(0x601, "api.example.com", 0.1, 1.9,
                                         namespace="remote", fault=True)]),
        _seg("api", 0x602, "api.example.com", 0.2, 1.8, parent_id=f"{0x601:016x}", fault=True,
             http=_http(None, 500), subsegments=[
                 _sub(0x603, "backend.example.com", 0.3, 1.0, namespace="remote", error=True)]),
        _seg("api", 0x604, "backend.example.com", 0.4, 0.9, parent_id=f"{0x603:016x}",
             error=True, http=_http(None, 404)),
        _web("auth", 0x700, 1, 500, [_sub(0x701, "Auth", 0.1, 0.9, namespace="remote",
                                          fault=True)]),
        _seg("auth", 0x702, "Auth", 0.2, 0.8, parent_id=f"{0x701:016x}", fault=True,
             subsegments=[_sub(0x703, "check-token", 0.3, 0.7, fault=True, cause=denied)]),
        _web("dynamo", 0x800, 3, 500, [_sub(0x801, "traces", 0.1, 2.9, namespace="aws",
                                            fault=True, aws={"table_name": "traces"},
                                            cause={"exceptions": [{"id": "e2",
                                                                   "type": "NotFound"}]})]),
        _seg("plane", 0x900, "data-plane", 0, 0.4, fault=True, http=_http(None, 500)),
        *_chain(),
        _seg("lambda1", 0xA00, "random-name", 0, 1, origin="AWS::Lambda", error=True),
        _seg("lambda1", 0xA01, "random-name", 0.1, 0.8, origin="AWS::Lambda::Function",
             parent_id=f"{0xA00:016x}"),
        _seg("lambda2", 0xB00, "random-name", 0, 1, origin="AWS::Lambda"),
        _seg("lambda2", 0xB01, "random-name", 0.1, 0.8, origin="AWS::Lambda::Function",
             parent_id=f"{0xB00:016x}", error=True),
        _web("game", 0xD00, 0.3, 200, user="bob",
             annotations={"gameid": "817DL6VO", "age": 31}),
        _web("old", 0xE00, 0.3, 200, annotations={"age": 20}),
    ]


@pytest.fixture(scope="module")
def guide(xray):
    client, _port = xray
    docs = corpus()
    for i in range(0, len(docs), 50):
        put(client, *docs[i:i + 50])
    wait_until(lambda: len(summaries(client, 'name = "web" OR name = "data-plane" OR '
                                             'name = "s0" OR name = "random-name"')) >= 14,
               what="the corpus")
    return client


ALL = set(LABELS)
OK = {"slow", "async", "quick", "inprogress", "api", "lambda2", "game", "old"}
# (the guide's example, the traces of the corpus it describes)
EXAMPLES = [
    ("responsetime > 5", {"slow"}),
    ("duration >= 5 AND duration <= 8", {"slow", "async"}),
    ("ok", OK),
    ("!ok", ALL - OK),
    ("ok = false", ALL - OK),
    ('rootcause.fault.entity { last and name = "deserialize" }', {"deserialize"}),
    ('rootcause.responsetime.entity { remote and coverage > 0.7 and name = "traces" }',
     {"slow", "dynamo"}),
    ('rootcause.fault.service { inferred and name = traces and type = "AWS::DynamoDB" }',
     {"dynamo"}),
    ('service("data-plane") {root = true and fault = true}', {"plane"}),
    ("http.status != 200", {"inprogress", "deserialize", "auth", "dynamo", "plane", "chain7",
                            "lambda1", "lambda2"}),
    ("ok !partial duration <3", {"quick", "api", "lambda2", "game", "old"}),
    ("rootcause.fault.service { index > 5 }", {"chain7"}),
    ("rootcause.responsetime.entity { last and coverage > 0.8 }",
     {"slow", "async", "quick", "dynamo", "plane", "game", "old"}),
    ('http.url CONTAINS "/api/game/"', {"slow"}),
    ('user CONTAINS ""', {"slow", "game"}),
    ('rootcause.fault.service { name = "Auth" }', {"auth"}),
    ('rootcause.responsetime.service { last and type = "AWS::DynamoDB" }', {"dynamo"}),
    # The guide's example lacks its closing brace; the service is taken to accept it.
    ('rootcause.fault.exception { last and message = "Access Denied for account_id: '
     '1234567890" ', {"auth"}),
    ('service("api.example.com") { fault }', {"api"}),
    ("service() { fault }", {"deserialize", "api", "auth", "dynamo", "plane", "chain7"}),
    ('edge("api.example.com", "backend.example.com") { error }', {"api"}),
    ('http.url BEGINSWITH "http://api.example.com/" AND http.url CONTAINS "/v2/" AND '
     '!service("api.example.com")', {"quick"}),
    ("http.url AND responseTime > 2", {"slow", "dynamo", "chain7"}),
    ('annotation.gameid = "817DL6VO"', {"game"}),
    ("annotation.age", {"game", "old"}),
    ("!annotation.age", ALL - {"game", "old"}),
    ("annotation.age > 29", {"game"}),
    ('service("random-name") { error }', {"lambda1", "lambda2"}),
    ('service(id(name: "random-name", type: "AWS::Lambda::Function")) { error }', {"lambda2"}),
    ('service(id(type: "AWS::Lambda::Function")) { error }', {"lambda2"}),
    ('edge(id(name: "random-name", type: "AWS::Lambda"), id(name: "random-name", '
     'type: "AWS::Lambda::Function"))', {"lambda1", "lambda2"}),
]


@pytest.mark.parametrize("expression, expected", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_every_guide_example_selects_its_traces(guide, expression, expected):
    found = {s["Id"] for s in summaries(guide, expression)}
    assert found & set(TRACES.values()) == {TRACES[label] for label in expected}


def test_the_json_root_cause_example_is_refused_clearly(guide):
    expression = ('rootcause.json = #[{ "Services": [ { "Name": "GetWeatherData", "EntityPath": '
                  '[{ "Name": "GetWeatherData" }] } ] }]')
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        summaries(guide, expression)
    error = caught.value.response["Error"]
    assert error["Code"] == "InvalidRequestException"
    assert "rootcause.json" in error["Message"] and "not supported" in error["Message"]


def test_root_causes_as_the_reference_shapes_them(guide):
    by_id = {s["Id"]: s for s in summaries(guide)}
    auth = by_id[TRACES["auth"]]
    assert auth["FaultRootCauses"] == [{"ClientImpacting": True, "Services": [
        {"Name": "web", "Names": ["web"], "Inferred": False, "EntityPath": [
            {"Name": "web", "Exceptions": [], "Remote": False},
            {"Name": "Auth", "Exceptions": [], "Remote": True}]},
        {"Name": "Auth", "Names": ["Auth"], "Inferred": False, "EntityPath": [
            {"Name": "Auth", "Exceptions": [], "Remote": False},
            {"Name": "check-token", "Remote": False, "Exceptions": [
                {"Name": "AccessDenied",
                 "Message": "Access Denied for account_id: 1234567890"}]}]}]}]
    assert auth["ErrorRootCauses"] == []
    dynamo = by_id[TRACES["dynamo"]]
    [cause] = dynamo["ResponseTimeRootCauses"]
    assert [s["Name"] for s in cause["Services"]] == ["web", "traces"]
    inferred = cause["Services"][1]
    assert (inferred["Type"], inferred["Inferred"]) == ("AWS::DynamoDB::Table", True)
    assert inferred["EntityPath"][0]["Coverage"] == pytest.approx(2.8 / 3)
    api = by_id[TRACES["api"]]
    # The root answered 200: the fault downstream does not impact the client.
    assert [c["ClientImpacting"] for c in api["FaultRootCauses"]] == [False]
    assert [[s["Name"] for s in c["Services"]] for c in api["ErrorRootCauses"]] == [
        ["web", "api.example.com", "backend.example.com"]]
    assert (api["HasFault"], api["HasError"]) == (False, False)


# --- the "Why" cases of issue 13, field by field ------------------------------------------
def test_a_trace_entered_through_an_unseen_parent_has_that_segment_as_root(xray):
    client, port = xray
    rec = recorder(f"127.0.0.1:{port}")
    tid = trace_id(0x1301, int(time.time()))
    segment = rec.begin_segment("backend", traceid=tid, parent_id="abcdef0123456789")
    segment.put_http_meta("method", "GET")
    segment.put_http_meta("url", "http://backend.local/entry/7")
    segment.put_http_meta("user_agent", "curl/8.0")
    segment.put_http_meta("client_ip", "10.1.2.3")
    with rec.in_subsegment("downstream.local") as sub:
        sub.namespace = "remote"
        sub.put_http_meta("url", "http://downstream.local/child")
        sub.put_http_meta("status", 200)
    segment.put_http_meta("status", 201)
    rec.end_segment()
    summary = summary_of(client, tid)
    assert summary["EntryPoint"] == {"Name": "backend", "Names": ["backend"]}
    assert summary["Http"] == {"HttpURL": "http://backend.local/entry/7", "HttpStatus": 201,
                               "HttpMethod": "GET", "UserAgent": "curl/8.0",
                               "ClientIp": "10.1.2.3"}
    stored = json.loads(client.batch_get_traces(TraceIds=[tid])["Traces"][0]["Segments"][0][
        "Document"])
    assert summary["ResponseTime"] == pytest.approx(stored["end_time"] - stored["start_time"])
    assert summary["ResponseTime"] > 0
    for expression in ('http.url CONTAINS "/entry/"', 'name = "backend"',
                       'http.useragent = "curl/8.0"', 'http.clientip BEGINSWITH "10.1."'):
        assert tid in {s["Id"] for s in summaries(client, expression)}, expression

    # The parent's service reports later: its segment (no parent) becomes the root.
    put(client, {"name": "frontend", "id": "0123456789abcdef", "trace_id": tid,
                 "start_time": stored["start_time"] - 0.5, "end_time": stored["end_time"] + 0.5,
                 "http": _http("http://frontend.local/", 200),
                 "subsegments": [{"name": "backend.local", "id": "abcdef0123456789",
                                  "namespace": "remote", "start_time": stored["start_time"],
                                  "end_time": stored["end_time"]}]})
    summary = summary_of(client, tid, revision=2)
    assert summary["EntryPoint"]["Name"] == "frontend"
    assert summary["Http"]["HttpURL"] == "http://frontend.local/"
    assert summary["ResponseTime"] == pytest.approx(summary["Duration"])
    assert tid in {s["Id"] for s in summaries(client, 'name = "frontend"')}
    assert tid not in {s["Id"] for s in summaries(client, 'http.url CONTAINS "/entry/"')}


def test_fault_only_in_a_subsegment_is_not_the_traces_fault(xray):
    client, port = xray
    rec = recorder(f"127.0.0.1:{port}")
    segment = rec.begin_segment("photos")
    tid = segment.trace_id
    segment.put_http_meta("method", "PUT")
    segment.put_http_meta("url", "http://photos.local/upload")
    try:
        with rec.in_subsegment("S3") as sub:
            sub.namespace = "aws"
            sub.put_http_meta("status", 503)
            raise OSError("slow down")
    except OSError:
        pass
    with rec.in_subsegment("SQS") as sub:
        sub.namespace = "aws"
        sub.put_http_meta("status", 429)  # a throttle only in a downstream call
    segment.put_http_meta("status", 200)
    rec.end_segment()
    summary = summary_of(client, tid)
    assert (summary["HasFault"], summary["HasError"], summary["HasThrottle"]) == (
        False, False, True)
    [cause] = summary["FaultRootCauses"]
    assert cause["ClientImpacting"] is False
    photos, s3 = cause["Services"]
    assert photos["EntityPath"] == [{"Name": "photos", "Exceptions": [], "Remote": False}]
    # a call that names no bucket is a node of the service (API_Service, Type: "AWS::DynamoDB
    # for downstream calls to Amazon DynamoDB that didn't target a specific table")
    assert (s3["Name"], s3["Type"], s3["Inferred"]) == ("S3", "AWS::S3", True)
    [entity] = s3["EntityPath"]
    assert entity["Remote"] is True and entity["Exceptions"][0] == {"Name": "OSError",
                                                                     "Message": "slow down"}
    assert summary["ErrorRootCauses"][0]["Services"][-1]["Name"] == "SQS"
    assert tid not in {s["Id"] for s in summaries(client, "fault")}
    assert tid not in {s["Id"] for s in summaries(client, "error")}
    # The service graph counts the segment's own fault, not its subsegment's, against it.
    graph = client.get_trace_graph(TraceIds=[tid])["Services"]
    [node] = [n for n in graph if n["Name"] == "photos" and n.get("Type") != "client"]
    assert node["SummaryStatistics"]["FaultStatistics"]["TotalCount"] == 0
    assert node["SummaryStatistics"]["OkCount"] == 1
    for expression in ("throttle", "ok", 'service("s3") { fault }',
                       'edge("photos", "SQS") { throttle }',
                       'rootcause.fault.service { inferred and name = "S3" }'):
        assert tid in {s["Id"] for s in summaries(client, expression)}, expression


def test_every_field_the_documents_give(xray):
    client, port = xray
    rec = recorder(f"127.0.0.1:{port}")
    segment = rec.begin_segment("orders")
    tid = segment.trace_id
    segment.origin = "AWS::EC2::Instance"
    segment.aws["account_id"] = "123456789012"
    segment.aws["ec2"] = {"instance_id": "i-0abc", "availability_zone": "eu-west-1a"}
    segment.resource_arn = "arn:aws:ec2:eu-west-1:123456789012:instance/i-0abc"
    segment.set_user("alice")
    segment.put_annotation("tenant", "acme")
    with rec.in_subsegment("DynamoDB") as sub:
        sub.namespace = "aws"
        sub.put_annotation("table", "orders")
    segment.put_http_meta("status", 200)
    rec.end_segment()
    summary = summary_of(client, tid)
    orders = {"Name": "orders", "Names": ["orders"], "AccountId": "123456789012",
              "Type": "AWS::EC2::Instance"}
    dynamo = {"Name": "DynamoDB", "Names": ["DynamoDB"], "Type": "AWS::DynamoDB"}  # no table
    client_node = {"Name": "orders", "Names": ["orders"], "Type": "client"}
    assert summary["EntryPoint"] == orders
    assert sorted(summary["ServiceIds"], key=json.dumps) == sorted(
        [orders, dynamo, client_node], key=json.dumps)
    assert summary["Users"] == [{"UserName": "alice", "ServiceIds": [orders]}]
    assert summary["Annotations"] == {
        "tenant": [{"AnnotationValue": {"StringValue": "acme"}, "ServiceIds": [orders]}],
        "table": [{"AnnotationValue": {"StringValue": "orders"}, "ServiceIds": [dynamo]}]}
    assert summary["ResourceARNs"] == [
        {"ARN": "arn:aws:ec2:eu-west-1:123456789012:instance/i-0abc"}]
    assert summary["InstanceIds"] == [{"Id": "i-0abc"}]
    assert summary["AvailabilityZones"] == [{"Name": "eu-west-1a"}]
    assert summary["MatchedEventTime"] == summary["StartTime"]
    for expression in ('instance.id = "i-0abc"', 'availabilityzone ENDSWITH "1a"',
                       'resource.arn CONTAINS ":instance/"', 'service("ORDERS")',
                       'service(id(account.id: "123456789012"))',
                       'type = "AWS::EC2::Instance"'):
        assert tid in {s["Id"] for s in summaries(client, expression)}, expression


def test_async_tail_and_in_progress_segments(xray):
    client, _port = xray
    tid = trace_id(0x1302, int(time.time()))
    t0 = time.time() - 10
    put(client, {"name": "jobs", "id": "1000000000000001", "trace_id": tid, "start_time": t0,
                 "end_time": t0 + 1, "http": _http("http://jobs.local/", 202)},
        {"name": "later", "id": "1000000000000002", "trace_id": tid, "start_time": t0 + 0.5,
         "end_time": t0 + 3, "type": "subsegment", "parent_id": "1000000000000001"},
        {"name": "worker", "id": "1000000000000003", "trace_id": tid, "start_time": t0 + 0.2,
         "in_progress": True, "parent_id": "1000000000000002"})
    summary = summary_of(client, tid, revision=3)
    assert summary["ResponseTime"] == pytest.approx(1.0)
    assert summary["Duration"] == pytest.approx(3.0)
    assert summary["IsPartial"] is True
    assert summary["StartTime"].timestamp() == pytest.approx(t0)
    assert tid in {s["Id"] for s in summaries(client, "partial AND duration > 2.5")}


def test_time_range_by_trace_id_and_sampling_strategy(xray):
    client, _port = xray
    old_epoch = int(time.time()) - 20000
    tid = trace_id(0x1303, old_epoch)
    sent = time.time()
    put(client, {"name": "clock-skew", "id": "2000000000000001", "trace_id": tid,
                 "start_time": sent - 5, "end_time": sent - 4})
    summary_of(client, tid)
    by_id = summaries(client, start=old_epoch - 5, end=old_epoch + 5, TimeRangeType="TraceId")
    assert [s["Id"] for s in by_id] == [tid]
    assert summaries(client, start=old_epoch - 5, end=old_epoch + 5) == []
    assert tid in {s["Id"] for s in summaries(client, TimeRangeType="Event")}
    by_end = summaries(client, start=sent - 4.5, TimeRangeType="Service")
    assert tid in {s["Id"] for s in by_end}  # it ended after sent - 4.5, started before
    assert tid not in {s["Id"] for s in summaries(client, start=sent - 4.5)}
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        summaries(client, SamplingStrategy={"Name": "FixedRate", "Value": 0.5})
    assert caught.value.response["Error"]["Code"] == "InvalidRequestException"
    assert "SamplingStrategy" in caught.value.response["Error"]["Message"]


@pytest.mark.parametrize("expression", [
    "(" * 330 + "ok" + ")" * 330, "NOT " * 200 + "ok", "!" * 300 + "ok",
    'service("a") {' * 40 + "fault" + "}" * 40,
])
def test_deep_expressions_get_a_clear_400(xray, expression):
    client, _port = xray
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        summaries(client, expression)
    error = caught.value.response["Error"]
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Code"] == "InvalidRequestException"
    assert "nested too deeply" in error["Message"] or "cannot be used inside" in error[
        "Message"]
