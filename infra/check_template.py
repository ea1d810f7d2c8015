#!/usr/bin/env python3
"""Checks what cfn-lint cannot about infra/template.yaml (or the template given as argument;
run by scripts/test.sh after cfn-lint):

- every environment variable a function gets is one the Rust code reads (a quoted literal in
  the function's own sources or the shared configuration code), after stripping the
  `_SECRET_ARN` / `_SSM_PARAMETER` suffix of a secret reference;
- every function's `BuildProperties.Binary` is a binary of the workspace;
- the retry queue's visibility timeout is at least 6 x the retry worker's timeout, and the
  worker's MAX_RECEIVE_COUNT is the queue's maxReceiveCount.

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
    for problem in problems:
        print(f"infra/template.yaml: {problem}")
    if not problems:
        print("infra/template.yaml: environment variables, binaries and queue settings agree with the code")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
