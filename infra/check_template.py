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
  function that refreshes the token may do the version-checked write (docs/aws.md).

Uses cfn-lint's YAML loader (short-form intrinsics). Exit status 1 and one line per problem.
"""

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
    for problem in problems:
        print(f"infra/template.yaml: {problem}")
    if not problems:
        print(
            "infra/template.yaml: environment variables, binaries, queue settings and secret "
            "write scoping agree with the code"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
