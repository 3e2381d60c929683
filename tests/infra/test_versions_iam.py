"""No role of the stack can delete an object version (issue 18 item 3, in part): versioning is the data's last line of
defence. A real IAM evaluator (tests/infra/iam.py) decides on the synthesized policies, both network variants; a plain
delete, which only adds a delete marker, stays where the code needs it (launcher/datasets/upload.py removes objects a
re-uploaded folder no longer has).
"""

from __future__ import annotations

import pytest

from tests.infra.iam import ACCOUNT, Call, decide, resolve, role_policies


@pytest.mark.parametrize("variant", ["default", "vpc"])
def test_no_role_deletes_an_object_version(synth, variant: str) -> None:
    doc = synth.get(variant).doc
    [bucket] = [resolve(doc, {"Fn::GetAtt": [k, "Arn"]}) for k, v in doc["Resources"].items()
                if v["Type"] == "AWS::S3::Bucket" and "LoggingConfiguration" in v["Properties"]]
    expected = {
        "TrainingRole": {"checkpoints/job/epoch-0001.pt": "Allowed", "datasets/demo/a.dcm": "ImplicitlyDenied"},
        "ModelRole": {"inference/job/input/a.dcm": "Allowed", "jobs/job/output/model.tar.gz": "ImplicitlyDenied"},
        "NotebookRole": {"datasets/demo/a.dcm": "Allowed", "jobs/job/output/model.tar.gz": "Allowed"},
    }
    for role, deletes in expected.items():
        calls = [Call("s3:DeleteObjectVersion", f"{bucket}/{key}") for key in deletes]
        calls += [Call("s3:DeleteObject", f"{bucket}/{key}") for key in deletes]
        decisions = decide(role_policies(doc, role), calls, principal=f"arn:aws:iam::{ACCOUNT}:role/{role}")
        for call, decision in zip(calls, decisions, strict=True):
            print(f"{variant:8} {role:13} {decision:17} {call}")
        assert decisions == ["ImplicitlyDenied"] * len(deletes) + list(deletes.values()), role
