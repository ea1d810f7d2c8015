#!/usr/bin/env python3
"""Checks what cfn-lint cannot about infra/template.yaml (or the template given as argument;
run by scripts/test.sh after cfn-lint):

- every environment variable a function gets is one the Rust code reads (a quoted literal in
  the function's own sources or the shared configuration code), after stripping the
  `_SECRET_ARN` / `_SSM_PARAMETER` suffix of a secret reference;
- every function's `BuildProperties.Binary` is a binary of the workspace;
- the retry queue's visibility timeout is at least 6 x the retry worker's timeout, and the
  worker's MAX_RECEIVE_COUNT is the queue's maxReceiveCount;
- secret writes are scoped to the refresh token's own secret: PC_REFRESH_TOKEN_SECRET_ARN is
  `!Ref` of a whole secret (never `arn#key` of a JSON secret, whose other keys a write could
  revert), no other variable reads that secret, every Secrets Manager write action
  (PutSecretValue, UpdateSecretVersionStage, ...) is allowed on that secret only, and every
  function that refreshes the token may do the version-checked write (docs/aws.md);
- the connector's metrics on the dashboard and in the alarms are the ones the code emits
  (infra/metrics.json, which a Rust test holds equal to `cosell_domain::metrics`): the
  namespace, the dimensions Function and Crm (Crm = the CrmKind parameter, Function one of the
  four functions), and the metric names; every metric and both queues are on the dashboard, its
  alarm widget shows every alarm of the template, and the "needs attention > 0 over an hour"
  and "budget >= 80 %" alarms exist.

Uses cfn-lint's YAML loader (short-form intrinsics). Exit status 1 and one line per problem.
"""

import json
import pathlib
import re
import sys

from cfnlint.decode import decode

ROOT = pathlib.Path(__file__).resolve().parent.parent
SUFFIXES = ("_SECRET_ARN", "_SSM_PARAMETER")
# Configuration code every function shares: SyncConfig, the budget policy, the adapters.
SHARED_SOURCES = ["shared/runtime/src", "shared/domain/src", "shared/adapters/src"]


def rust_literals(folders):
    text = ""
    for folder in folders:
        for path in (ROOT / folder).rglob("*.rs"):
            text += path.read_text(encoding="utf-8")
    return set(re.findall(r'"([A-Z][A-Z0-9_]+)"', text))


# The calls of the version-checked write-back (shared/adapters/src/aws/secrets.rs).
ROTATION_ACTIONS = {
    "secretsmanager:GetSecretValue",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecretVersionStage",
}
REFRESH_TOKEN_VARIABLE = "PC_REFRESH_TOKEN_SECRET_ARN"


def as_list(value):
    return value if isinstance(value, list) else [value]


def is_secret_write(action):
    action = str(action).lower()
    if not action.startswith("secretsmanager:"):
        return action == "*"
    verb = action.split(":", 1)[1]
    return verb == "*" or not verb.startswith(("get", "describe", "list", "batchget", "validate"))


def statements(resources):
    """(owner, statement) for every IAM statement of the functions and roles."""
    for logical_id, resource in resources.items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            for policy in as_list(properties.get("Policies", [])):
                if isinstance(policy, dict):
                    for statement in as_list(policy.get("Statement", [])):
                        yield logical_id, statement
        elif resource["Type"] == "AWS::IAM::Role":
            for policy in as_list(properties.get("Policies", [])):
                document = policy.get("PolicyDocument", {})
                for statement in as_list(document.get("Statement", [])):
                    yield logical_id, statement


def function_roles(resources):
    """Function logical id -> the logical id whose statements it runs with."""
    roles = {}
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        role = resource["Properties"].get("Role")
        if isinstance(role, dict) and "Fn::GetAtt" in role:
            target = role["Fn::GetAtt"]
            target = target[0] if isinstance(target, list) else str(target).split(".")[0]
            roles[logical_id] = target
        else:
            roles[logical_id] = logical_id
    return roles


def secret_write_problems(template):
    """Problems with the scoping of secret writes (see the module docstring)."""
    problems = []
    resources = template["Resources"]
    global_vars = template["Globals"]["Function"]["Environment"]["Variables"]
    reference = global_vars.get(REFRESH_TOKEN_VARIABLE)
    secret = reference.get("Ref") if isinstance(reference, dict) else None
    if secret is None or resources.get(secret, {}).get("Type") != "AWS::SecretsManager::Secret":
        problems.append(
            f"{REFRESH_TOKEN_VARIABLE} must be !Ref of a secret of its own (it is written back; "
            f"a #key of a JSON secret would make every write rewrite the other keys), not {reference!r}"
        )
        secret = None
    variables = [("Globals", name, value) for name, value in global_vars.items()]
    for logical_id, resource in resources.items():
        if resource["Type"] == "AWS::Serverless::Function":
            own = resource["Properties"].get("Environment", {}).get("Variables", {})
            variables += [(logical_id, name, value) for name, value in own.items()]
            if REFRESH_TOKEN_VARIABLE in own:
                problems.append(f"{logical_id}: set {REFRESH_TOKEN_VARIABLE} in Globals only")
    if secret is not None:
        for owner, name, value in variables:
            if name != REFRESH_TOKEN_VARIABLE and secret in repr(value):
                problems.append(
                    f"{owner}: {name} reads {secret}, the refresh token's own secret; keep "
                    "other values out of it"
                )
    may_rotate = {}
    for owner, statement in statements(resources):
        if statement.get("Effect") != "Allow":
            continue
        actions = {str(action) for action in as_list(statement.get("Action", []))}
        targets = as_list(statement.get("Resource", []))
        writes = sorted(action for action in actions if is_secret_write(action))
        only_secret = secret is not None and targets == [{"Ref": secret}]
        if writes and not only_secret:
            problems.append(
                f"{owner}: {', '.join(writes)} on {targets!r}: secret writes belong on the "
                f"refresh token's own secret only ({secret or REFRESH_TOKEN_VARIABLE})"
            )
        if only_secret:
            may_rotate.setdefault(owner, set()).update(actions)
    for function, owner in function_roles(resources).items():
        missing = ROTATION_ACTIONS - may_rotate.get(owner, set())
        if missing:
            problems.append(
                f"{function}: it refreshes the Partner Center token but may not "
                f"{', '.join(sorted(missing))} on its secret (the version-checked write-back)"
            )
    return problems


METRICS_FILE = ROOT / "infra" / "metrics.json"


def load_catalogue():
    return json.loads(METRICS_FILE.read_text(encoding="utf-8"))


def dashboard_body(resource):
    """The dashboard's JSON, `${...}` of its !Sub kept as text (they sit inside strings)."""
    body = resource["Properties"]["DashboardBody"]
    if isinstance(body, dict) and "Fn::Sub" in body:
        body = body["Fn::Sub"]
        body = body[0] if isinstance(body, list) else body
    return json.loads(body)


def dashboard_metrics(body):
    """(widget title, namespace, metric name, {dimension: value}) of every metric line."""
    for widget in body.get("widgets", []):
        properties = widget.get("properties", {})
        title = properties.get("title", "?")
        previous = []
        for line in properties.get("metrics", []):
            parts = [part for part in line if not isinstance(part, dict)]
            # "." repeats the previous line's element at that position (the console's shorthand).
            parts = [
                previous[i] if part == "." and i < len(previous) else part
                for i, part in enumerate(parts)
            ]
            previous = parts
            if len(parts) < 2 or len(parts) % 2:
                yield title, None, None, {}
                continue
            yield title, parts[0], parts[1], dict(zip(parts[2::2], parts[3::2]))


def alarm_metrics(resource):
    """(namespace, metric name, {dimension: value}) of an alarm, direct or in metric math."""
    properties = resource["Properties"]
    found = []
    if "MetricName" in properties:
        found.append((properties.get("Namespace"), properties["MetricName"], properties.get("Dimensions", [])))
    for query in properties.get("Metrics", []):
        metric = query.get("MetricStat", {}).get("Metric")
        if metric:
            found.append((metric.get("Namespace"), metric.get("MetricName"), metric.get("Dimensions", [])))
    for namespace, name, dimensions in found:
        yield namespace, name, {d["Name"]: d["Value"] for d in dimensions}


def metrics_problems(template, catalogue=None):
    """Problems with the dashboard's and the alarms' view of the connector's metrics."""
    catalogue = catalogue or load_catalogue()
    namespace = catalogue["namespace"]
    names = {metric["name"] for metric in catalogue["metrics"]}
    dimensions = set(catalogue["dimensions"])
    functions = set(catalogue["functions"])
    resources = template["Resources"]
    problems = []

    def check(owner, name, dims, crm_ok):
        if name not in names:
            problems.append(f"{owner}: {namespace} metric {name!r} is not one the code emits (infra/metrics.json)")
        if set(dims) != dimensions:
            problems.append(f"{owner}: {name} has dimensions {sorted(dims)}, the code emits {sorted(dimensions)}")
        if dims.get("Function") not in functions and "Function" in dims:
            problems.append(f"{owner}: {name} Function={dims.get('Function')!r} is none of {sorted(functions)}")
        if "Crm" in dims and not crm_ok(dims["Crm"]):
            problems.append(f"{owner}: {name} Crm={dims['Crm']!r} is not the CrmKind parameter")

    dashboards = [r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    if len(dashboards) != 1:
        problems.append(f"expected one AWS::CloudWatch::Dashboard, found {len(dashboards)}")
    for dashboard in dashboards:
        try:
            body = dashboard_body(dashboard)
        except (ValueError, TypeError) as error:
            problems.append(f"Dashboard: the body is not JSON: {error}")
            continue
        shown = set()
        queues = set()
        for title, ns, name, dims in dashboard_metrics(body):
            if ns is None:
                problems.append(f"Dashboard widget {title!r}: a metric line is not [namespace, name, dimension, value, ...]")
            elif ns == namespace:
                shown.add(name)
                check(f"Dashboard widget {title!r}", name, dims, lambda value: value == "${CrmKind}")
            elif ns == "AWS/SQS":
                queues.add(dims.get("QueueName"))
        for name in sorted(names - shown):
            problems.append(f"Dashboard: the metric {name} is on no widget")
        for queue in ("RetryQueue", "RetryDeadLetterQueue"):
            if "${%s.QueueName}" % queue not in queues:
                problems.append(f"Dashboard: the depth of {queue} is on no widget")
        alarm_widgets = [w for w in body.get("widgets", []) if w.get("type") == "alarm"]
        listed = {a for w in alarm_widgets for a in w.get("properties", {}).get("alarms", [])}
        for logical_id, resource in resources.items():
            if resource["Type"] == "AWS::CloudWatch::Alarm" and "${%s.Arn}" % logical_id not in listed:
                problems.append(f"Dashboard: the alarm {logical_id} is on no alarm widget")

    required = {"NeedsAttention": False, "ApiBudgetUsedPercent": False}
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        properties = resource["Properties"]
        alarm_names = set()
        for ns, name, dims in alarm_metrics(resource):
            if ns == namespace:
                alarm_names.add(name)
                check(logical_id, name, dims, lambda value: value == {"Ref": "CrmKind"})
        threshold = float(properties.get("Threshold", "nan"))
        operator = properties.get("ComparisonOperator")
        periods = [
            int(query["MetricStat"]["Period"])
            for query in properties.get("Metrics", [])
            if "MetricStat" in query
        ] or [int(properties.get("Period", 0))]
        if alarm_names == {"NeedsAttention"} and threshold == 0 and operator == "GreaterThanThreshold" and min(periods) >= 3600:
            required["NeedsAttention"] = True
        if alarm_names == {"ApiBudgetUsedPercent"} and threshold == 80 and operator == "GreaterThanOrEqualToThreshold":
            required["ApiBudgetUsedPercent"] = True
    if not required["NeedsAttention"]:
        problems.append("no alarm on NeedsAttention > 0 over an hour")
    if not required["ApiBudgetUsedPercent"]:
        problems.append("no alarm on ApiBudgetUsedPercent >= 80")
    return problems


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "infra" / "template.yaml")
    template, matches = decode(path)
    if template is None:
        print("infra/template.yaml: unreadable:", *matches, sep="\n  ")
        return 1
    problems = []
    resources = template["Resources"]
    global_vars = template["Globals"]["Function"]["Environment"]["Variables"]
    binaries = {}
    for manifest in (ROOT / "functions").glob("*/Cargo.toml"):
        names = re.findall(r'^name\s*=\s*"([^"]+)"', manifest.read_text(encoding="utf-8"), re.M)
        for name in names:
            binaries[name] = manifest.parent
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        binary = resource.get("Metadata", {}).get("BuildProperties", {}).get("Binary")
        folder = binaries.get(binary)
        if folder is None:
            problems.append(f"{logical_id}: Binary {binary!r} is no binary under functions/")
            continue
        known = rust_literals([str(folder.relative_to(ROOT) / "src"), *SHARED_SOURCES])
        variables = dict(global_vars)
        variables.update(resource["Properties"].get("Environment", {}).get("Variables", {}))
        for name in variables:
            base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)
            if base not in known:
                problems.append(f"{logical_id}: {name} is not a variable {binary} reads")
    queue = resources["RetryQueue"]["Properties"]
    worker = resources["RetryWorkerFunction"]["Properties"]
    worker_timeout = worker.get("Timeout", template["Globals"]["Function"].get("Timeout", 3))
    if int(queue["VisibilityTimeout"]) < 6 * int(worker_timeout):
        problems.append(
            f"RetryQueue: VisibilityTimeout {queue['VisibilityTimeout']} < 6 x the worker's "
            f"Timeout {worker_timeout}"
        )
    receive = worker["Environment"]["Variables"].get("MAX_RECEIVE_COUNT")
    if receive != queue["RedrivePolicy"]["maxReceiveCount"]:
        problems.append("RetryWorkerFunction: MAX_RECEIVE_COUNT is not the queue's maxReceiveCount")
    problems += secret_write_problems(template)
    problems += metrics_problems(template)
    for problem in problems:
        print(f"infra/template.yaml: {problem}")
    if not problems:
        print(
            "infra/template.yaml: environment variables, binaries, queue settings, secret "
            "write scoping, the dashboard's and the alarms' metrics agree with the code"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
