"""OpenTelemetry semantic-convention attribute names the span → segment conversion reads, old
names and new ones (the HTTP and database conventions were renamed in semconv 1.20-1.26; SDKs
send either). The first name present wins. Pure data."""

from __future__ import annotations

# HTTP (segment "http" block)
HTTP_METHOD = ("http.request.method", "http.method")
HTTP_STATUS = ("http.response.status_code", "http.status_code")
HTTP_URL = ("url.full", "http.url")
HTTP_SCHEME = ("url.scheme", "http.scheme")
HTTP_TARGET = ("http.target",)  # new conventions: url.path + url.query
URL_PATH = "url.path"
URL_QUERY = "url.query"
HTTP_HOST = ("http.host", "server.address", "http.server_name", "net.host.name", "host.name")
HTTP_PORT = ("server.port", "net.host.port")
PEER_NAME = ("server.address", "net.peer.name", "http.host")
PEER_PORT = ("server.port", "net.peer.port")
CLIENT_IP = ("client.address", "http.client_ip", "net.sock.peer.addr", "net.peer.ip")
USER_AGENT = ("user_agent.original", "http.user_agent")
RESPONSE_LENGTH = ("http.response.body.size", "http.response_content_length")

# Every attribute the http block consumes (so it is not repeated in metadata).
HTTP_KEYS = frozenset((*HTTP_METHOD, *HTTP_STATUS, *HTTP_URL, *HTTP_SCHEME, *HTTP_TARGET,
                       URL_PATH, URL_QUERY, "http.host", "http.server_name", "http.client_ip",
                       *USER_AGENT, *RESPONSE_LENGTH, "client.address"))

# Databases (segment "sql" block)
DB_SYSTEM = ("db.system.name", "db.system")
DB_NAME = ("db.namespace", "db.name")
DB_STATEMENT = ("db.query.text", "db.statement")
DB_USER = ("db.user",)
DB_CONNECTION = ("db.connection_string",)
SQL_SYSTEMS = frozenset({
    "other_sql", "mssql", "mssqlcompact", "mysql", "oracle", "db2", "postgresql", "redshift",
    "hive", "cloudscape", "hsqldb", "progress", "maxdb", "hanadb", "ingres", "firstsql",
    "edb", "cache", "adabas", "firebird", "derby", "filemaker", "informix", "instantdb",
    "interbase", "mariadb", "netezza", "pervasive", "pointbase", "sqlite", "sybase", "teradata",
    "vertica", "h2", "coldfusion", "clickhouse", "cockroachdb", "trino", "spanner",
    "microsoft.sql_server", "oracle.db", "ibm.db2", "aws.redshift", "sap.hana",
})
DB_KEYS = frozenset((*DB_SYSTEM, *DB_NAME, *DB_STATEMENT, *DB_USER, *DB_CONNECTION))

# RPC and AWS SDK calls
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
AWS_API = "aws-api"
AWS_SERVICE = ("aws.service",)
AWS_OPERATION = ("aws.operation",)
AWS_REGION = ("aws.region", "cloud.region")
AWS_REQUEST_ID = ("aws.request_id", "aws.requestId")
AWS_QUEUE_URL = ("aws.sqs.queue_url", "aws.queue_url", "messaging.url")
AWS_TABLE_NAME = ("aws.table_name",)
AWS_TABLE_NAMES = "aws.dynamodb.table_names"
AWS_ACCOUNT = ("aws.account_id",)
AWS_KEYS = frozenset((*AWS_SERVICE, *AWS_OPERATION, "aws.region", *AWS_REQUEST_ID,
                      "aws.sqs.queue_url", "aws.queue_url", *AWS_TABLE_NAME, AWS_TABLE_NAMES,
                      *AWS_ACCOUNT))

# Names of segments (the first present, by kind; see spans_to_segments.segment_name)
PEER_SERVICE = "peer.service"
AWS_LOCAL_SERVICE = "aws.local.service"
AWS_REMOTE_SERVICE = "aws.remote.service"
ENDUSER = "enduser.id"
# The keys the X-Ray receiver (the reverse mapping) writes: annotations to restore.
XRAY_ANNOTATIONS = "aws.xray.annotations"

# Exceptions (span events)
EXCEPTION_EVENT = "exception"
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"
EXCEPTION_STACKTRACE = "exception.stacktrace"

# Resource
SERVICE_NAME = "service.name"
SERVICE_VERSION = "service.version"
SDK_NAME = "telemetry.sdk.name"
SDK_VERSION = "telemetry.sdk.version"
SDK_LANGUAGE = "telemetry.sdk.language"
AUTO_VERSION = ("telemetry.auto.version", "telemetry.distro.version")
CLOUD_PROVIDER = "cloud.provider"
CLOUD_PLATFORM = "cloud.platform"
CLOUD_ACCOUNT = "cloud.account.id"
CLOUD_ZONE = "cloud.availability_zone"
HOST_ID = "host.id"
HOST_TYPE = "host.type"
HOST_IMAGE = "host.image.id"
HOST_NAME = "host.name"
CONTAINER_ID = "container.id"
CONTAINER_NAME = "container.name"
ECS_CLUSTER = "aws.ecs.cluster.arn"
ECS_TASK = "aws.ecs.task.arn"
ECS_FAMILY = "aws.ecs.task.family"
ECS_LAUNCH = "aws.ecs.launchtype"
EKS_CLUSTER = ("k8s.cluster.name", "aws.eks.cluster.arn")
K8S_POD = "k8s.pod.name"
EB_ENVIRONMENT = "service.namespace"
EB_DEPLOYMENT = "service.instance.id"
LOG_GROUP_NAMES = "aws.log.group.names"
LOG_GROUP_ARNS = "aws.log.group.arns"
FAAS_NAME = "faas.name"
FAAS_VERSION = "faas.version"

# cloud.platform values -> X-Ray origin
ORIGINS = {
    "aws_ec2": "AWS::EC2::Instance",
    "aws_ecs": "AWS::ECS::Container",
    "aws_eks": "AWS::EKS::Container",
    "aws_elastic_beanstalk": "AWS::ElasticBeanstalk::Environment",
    "aws_app_runner": "AWS::AppRunner::Service",
    "aws_lambda": "AWS::Lambda::Function",
}
ECS_ORIGINS = {"ec2": "AWS::ECS::EC2", "fargate": "AWS::ECS::Fargate"}
