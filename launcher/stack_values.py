"""The values the deployed stack hands the launcher, named once: bucket, key, roles, image, network, region, ...

Each value has a key in the notebook's values file, `stack.json` (launcher/settings.py VALUES_FILE), which
infra/lifecycle/on_start.sh writes on every start of the notebook instance, in the order of STACK_VALUES; most also
have a CloudFormation output, which the launcher reads anywhere else (a laptop with credentials, CI). The stack
(infra/stack.py) declares its outputs from STACK_VALUES and hands the lifecycle render (infra/lifecycle/render.py)
one value per key, which the render checks; the launcher (launcher/settings.py) reads them by it. on_start.sh is bash,
which cannot import this: tests/infra/test_lifecycle_render.py and tests/infra/test_lifecycle_scripts.py hold its
placeholders and the keys it writes to STACK_VALUES.

This module imports only the standard library: the CDK app imports it, while the launcher never imports infra/ or
aws_cdk.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StackValue:
    """One value the stack hands the launcher.

    Attributes:
        key: its key in stack.json, and the launcher's Settings field of that name (training_image_variant fills
            Settings.image_variant).
        output: its CloudFormation output; "" when it has none (the stack's own name, what the notebook cloned).
        description: what it is; the output's description in the template.
        required: every job needs it: the launcher refuses settings without it.
        listed: a list of IDs: a JSON list in stack.json ([] without a VPC), comma-joined in its output, which the
            stack declares only with a VPC.
        default: what stands for it when it is left out (a stack from before it); None: it never is.
    """

    key: str
    output: str
    description: str
    required: bool = False
    listed: bool = False
    default: str | None = None


STACK_VALUES: tuple[StackValue, ...] = (
    StackValue("stack_name", "", "The CloudFormation stack; job names and tags are derived from it", required=True),
    StackValue("region", "Region", "Region of the stack", required=True),
    StackValue("bucket", "DataBucketName", "Bucket for DICOM data, job code, artifacts and checkpoints", required=True),
    StackValue("data_key_arn", "DataKeyArn", "KMS key encrypting the bucket, notebook volume and jobs", required=True),
    StackValue("training_role_arn", "TrainingRoleArn", "Execution role for training jobs", required=True),
    StackValue("model_role_arn", "ModelRoleArn", "Execution role of the trained model (batch transform, endpoints)"),
    StackValue("notebook_role_arn", "NotebookRoleArn", "Role of the notebook instance"),
    StackValue("training_image_uri", "TrainingImageUri", "Training image (SageMaker PyTorch + MONAI + pydicom)",
               required=True),
    # stack.json says "" for an image given by URI; the output says "unknown" (an output cannot be empty).
    StackValue("training_image_variant", "TrainingImageVariant",
               "cpu or gpu: the image cdk deploy built (unknown for trainingImageUri)"),
    StackValue("subnets", "SubnetIds", "Private subnets for training jobs", listed=True),
    StackValue("security_group_ids", "SecurityGroupIds", "Security group for training jobs", listed=True),
    StackValue("repo_url", "", "The HTTPS URL the notebook cloned"),
    StackValue("repo_ref", "", "The commit, branch or tag the clone checked out"),
    StackValue("deployed_commit", "", "The commit the stack was synthesized from (empty when unknown)", default=""),
    StackValue("log_retention_days", "LogRetentionDays",
               "Days SageMaker's log groups keep events (the launcher's endpoint groups too)", default="365"),
)
# The output of each value that has one, by key (infra/teardown.py finds the stack's bucket, key and role by them).
OUTPUT_OF: dict[str, str] = {value.key: value.output for value in STACK_VALUES if value.output}
