#!/usr/bin/env python3
"""Tests of infra/check_template.py's secret-write scoping and metrics checks (run by
scripts/test.sh):
`python3 -m unittest infra/test_check_template.py`."""

import copy
import pathlib
import sys
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from cfnlint.decode import decode  # noqa: E402

import check_template  # noqa: E402

TEMPLATE = pathlib.Path(__file__).resolve().parent / "template.yaml"


def load():
    template, matches = decode(str(TEMPLATE))
    assert template is not None, matches
    return template


class SecretWriteScoping(unittest.TestCase):
    def setUp(self):
        self.template = load()
        self.resources = self.template["Resources"]

    def problems(self):
        return check_template.secret_write_problems(copy.deepcopy(self.template))

    def test_the_template_scopes_every_secret_write_to_the_refresh_token_secret(self):
        self.assertEqual(self.problems(), [])

    def test_a_refresh_token_kept_as_a_key_of_the_credentials_secret_is_a_problem(self):
        variables = self.template["Globals"]["Function"]["Environment"]["Variables"]
        variables["PC_REFRESH_TOKEN_SECRET_ARN"] = {
            "Fn::Sub": "${ConnectorCredentials}#pc_refresh_token"
        }
        self.assertTrue(
            any("PC_REFRESH_TOKEN_SECRET_ARN must be !Ref" in p for p in self.problems()),
            self.problems(),
        )

    def test_put_secret_value_on_the_credentials_secret_is_a_problem(self):
        policy = self.resources["CrmEventsFunction"]["Properties"]["Policies"][0]
        policy["Statement"].append(
            {
                "Effect": "Allow",
                "Action": ["secretsmanager:PutSecretValue"],
                "Resource": {"Ref": "ConnectorCredentials"},
            }
        )
        problems = self.problems()
        self.assertTrue(
            any(p.startswith("CrmEventsFunction: secretsmanager:PutSecretValue") for p in problems),
            problems,
        )

    def test_a_wildcard_secret_write_on_both_secrets_is_a_problem(self):
        statements = self.resources["RetryWorkerRole"]["Properties"]["Policies"][0][
            "PolicyDocument"
        ]["Statement"]
        statements.append(
            {
                "Effect": "Allow",
                "Action": "secretsmanager:*",
                "Resource": [{"Ref": "PcRefreshTokenSecret"}, {"Ref": "ConnectorCredentials"}],
            }
        )
        self.assertTrue(
            any(p.startswith("RetryWorkerRole: secretsmanager:*") for p in self.problems()),
            self.problems(),
        )

    def test_a_function_that_may_not_move_the_current_label_is_a_problem(self):
        for statement in self.resources["ReconcileFunction"]["Properties"]["Policies"][0][
            "Statement"
        ]:
            if statement.get("Sid") == "RotatedRefreshToken":
                statement["Action"] = ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"]
        self.assertTrue(
            any(
                p.startswith("ReconcileFunction:") and "UpdateSecretVersionStage" in p
                for p in self.problems()
            ),
            self.problems(),
        )

    def test_another_variable_reading_the_refresh_token_secret_is_a_problem(self):
        variables = self.template["Globals"]["Function"]["Environment"]["Variables"]
        variables["PC_CLIENT_SECRET_SECRET_ARN"] = {"Ref": "PcRefreshTokenSecret"}
        self.assertTrue(
            any("PC_CLIENT_SECRET_SECRET_ARN reads PcRefreshTokenSecret" in p for p in self.problems()),
            self.problems(),
        )


class DashboardAndAlarmMetrics(unittest.TestCase):
    def setUp(self):
        self.template = load()
        self.resources = self.template["Resources"]

    def problems(self):
        return check_template.metrics_problems(copy.deepcopy(self.template))

    def set_body(self, edit):
        dashboard = self.resources["Dashboard"]["Properties"]
        body = dashboard["DashboardBody"]["Fn::Sub"]
        dashboard["DashboardBody"]["Fn::Sub"] = edit(body)

    def test_the_template_shows_every_metric_the_code_emits_and_has_both_alarms(self):
        self.assertEqual(self.problems(), [])

    def test_a_metric_name_the_code_does_not_emit_is_a_problem(self):
        self.set_body(lambda body: body.replace('"Created"', '"Synced"'))
        problems = self.problems()
        self.assertTrue(any("'Synced' is not one the code emits" in p for p in problems), problems)
        self.assertTrue(any("the metric Created is on no widget" in p for p in problems), problems)

    def test_a_dimension_the_code_does_not_emit_is_a_problem(self):
        self.set_body(lambda body: body.replace('"Crm", "${CrmKind}"', '"Crm", "dataverse"', 1))
        problems = self.problems()
        self.assertTrue(any("is not the CrmKind parameter" in p for p in problems), problems)

    def test_an_alarm_left_off_the_alarm_widget_is_a_problem(self):
        self.set_body(lambda body: body.replace('"${ApiBudgetAlarm.Arn}", ', ""))
        problems = self.problems()
        self.assertIn("Dashboard: the alarm ApiBudgetAlarm is on no alarm widget", problems)

    def test_without_the_needs_attention_alarm_it_is_a_problem(self):
        del self.resources["NeedsAttentionAlarm"]
        self.set_body(lambda body: body.replace('"${NeedsAttentionAlarm.Arn}", ', ""))
        self.assertEqual(self.problems(), ["no alarm on NeedsAttention > 0 over an hour"])

    def test_a_budget_alarm_on_another_threshold_is_a_problem(self):
        self.resources["ApiBudgetAlarm"]["Properties"]["Threshold"] = 95
        self.assertEqual(self.problems(), ["no alarm on ApiBudgetUsedPercent >= 80"])

    def test_the_catalogue_in_the_repository_is_read(self):
        catalogue = check_template.load_catalogue()
        self.assertEqual(catalogue["namespace"], "CosellSync")
        self.assertEqual(catalogue["dimensions"], ["Function", "Crm"])


if __name__ == "__main__":
    unittest.main()
