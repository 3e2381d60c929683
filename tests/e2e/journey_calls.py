"""The journey's AWS calls as IAM requests, for a real policy evaluator (tests/infra/iam.py) (test helper).

What enters: the requests the emulator recorded while the notebook ran (demo/emulator.py `recording`), each marked by
tests/e2e/stand_ins/sitecustomize.py when a local stand-in of the SageMaker service sent it, and a synthesized
template. What leaves: `journey_calls`, every call with the principal that makes it on AWS, its origin and the
verdict it must get; `requests_for`, those calls as the evaluator's requests; `table`, the verdicts to print.

- recorded: the notebook's and the launcher's own calls, as the notebook role.
- stand-in: what the local runner (a training job) and local inference (batch transform, endpoint) read and wrote,
  as the role SageMaker makes those calls with on AWS (the training role, the model role).
- implied: what AWS does on the caller's behalf for a recorded call: S3 with the bucket's KMS key (GenerateDataKey to
  write, Decrypt to read, through S3), iam:PassRole and sagemaker:AddTags for a Create* call, and what SageMaker does
  as the passed role that the stand-ins do not (image pull, volume key grant, metrics, log groups, network
  interfaces in a VPC, checkpoints when the job has them); and the endpoint's invocation, which the local runner
  answers without AWS.
- must-deny: calls close to those, which the stack's policies must refuse.

Names: the emulator's physical names (bucket, roles, key, region us-east-1, the public image it runs) are replaced
by those `tests.infra.iam.resolve` gives the template's resources, so that the calls meet the template's policies.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tests.infra.iam import (
    ACCOUNT,
    REGION,
    Call,
    Request,
    resolve,
    resource_policies,
    resource_policy,
    role_policies,
    stack_key_and_network,
)

EMULATOR_REGION = "us-east-1"  # demo/emulator.py REGION
SAGEMAKER = "sagemaker.amazonaws.com"
STAND_IN_HEADER = "X-Stand-In-For"  # tests/e2e/stand_ins/sitecustomize.py
# On AWS every SDK call goes over HTTPS (the emulator is plain HTTP); the bucket policy refuses others.
TLS: dict[str, str | list[str]] = {"aws:SecureTransport": "true"}
ALLOWED = "Allowed"
# Calls of the journey that no role of the stack makes on AWS, with the reason; every other call is evaluated.
NOT_A_ROLE_CALL = {
    ("TrainingRole", "sagemaker:DescribeTrainingJob"): "the local runner reads the job SageMaker already holds",
    ("ModelRole", "sagemaker:DescribeTransformJob"): "local inference reads the job SageMaker already holds",
    ("ModelRole", "sagemaker:DescribeModel"): "local inference reads the model SageMaker already holds",
    ("ModelRole", "sagemaker:DescribeEndpointConfig"): "local inference reads the config SageMaker already holds",
    ("NotebookRole", "cloudformation:DescribeStacks"): (
        "the demo reads the stack's outputs (STACK_NAME set); on the notebook instance the lifecycle config's "
        "values file holds them (STACK_NAME None)"),
}
# Calls whose denial the caller handles: (role, action) -> what happens instead (evaluated as an implied call).
TOLERATED = {
    ("NotebookRole", "s3:ListAllMyBuckets"): (
        "the SDK's default_bucket() reads Bucket.creation_date; boto3 swallows AccessDenied and the SDK then calls "
        "HeadBucket (s3:ListBucket on the bucket)"),
}
ECR_PULL = ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability")
NETWORK_INTERFACES = ("ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission",
                      "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission",
                      "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs", "ec2:DescribeDhcpOptions",
                      "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups")
SAGEMAKER_NAMES = {"TrainingJobName": "training-job", "ModelName": "model", "TransformJobName": "transform-job",
                   "EndpointName": "endpoint", "EndpointConfigName": "endpoint-config"}
S3_BUCKET_QUERIES = {"location": "s3:GetBucketLocation", "versions": "s3:ListBucketVersions",
                     "uploads": "s3:ListBucketMultipartUploads", "versioning": "s3:GetBucketVersioning",
                     "encryption": "s3:GetEncryptionConfiguration", "policy": "s3:GetBucketPolicy",
                     "acl": "s3:GetBucketAcl", "tagging": "s3:GetBucketTagging"}


@dataclass(frozen=True)
class JourneyCall:
    """One call of the journey: who makes it on AWS, where it comes from, and the verdict it must get."""

    role: str  # a role's logical id prefix (TrainingRole, ModelRole, NotebookRole), or an ARN outside the stack
    call: Call
    origin: str  # recorded, stand-in, implied, must-deny, exempt (NOT_A_ROLE_CALL)
    expected: str  # ALLOWED; "denied" (ImplicitlyDenied or ExplicitlyDenied); "any" (NOT_A_ROLE_CALL, TOLERATED)
    why: str = ""  # what a must-deny call stands for, or why a call's verdict is not asserted


# ---------------------------------------------------------------------------------------------------------------
# HTTP request -> IAM call (emulator names)


def _service(request: Mapping[str, Any]) -> str:
    match = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/", request["headers"].get("Authorization", ""))
    if not match:
        raise ValueError(f"unsigned request: {request['method']} {request['path']}")
    return match.group(1)


def _arn(service: str, resource: str, region: str = EMULATOR_REGION) -> str:
    return f"arn:aws:{service}:{region}:{ACCOUNT}:{resource}"


def _log_group(name: str, region: str = EMULATOR_REGION) -> str:
    # A log group's ARN as CloudWatch Logs authorizes it, with the ":*" its own ARNs end with.
    return _arn("logs", f"log-group:{name}:*", region)


def _log_stream(group: str, stream: str, region: str = EMULATOR_REGION) -> str:
    return _arn("logs", f"log-group:{group}:log-stream:{stream}", region)


def to_calls(request: Mapping[str, Any]) -> list[Call]:
    """The IAM calls one recorded request makes (a multi-object delete makes one per object).

    Raises:
        ValueError: a request this mapping does not know: add it, never skip it.
    """
    service = _service(request)
    if service == "s3":
        return _s3_calls(request)
    body = request["body"] or ""
    target = request["headers"].get("X-Amz-Target")
    if target:  # JSON protocols: SageMaker, CloudWatch Logs, KMS, ECR
        operation = target.split(".", 1)[1]
        return [_json_call(service, operation, json.loads(body or "{}"))]
    form = urllib.parse.parse_qs(body or request["query"])
    if "Action" in form:  # query protocols: IAM, STS, CloudFormation
        return [_query_call(service, form["Action"][0], {k: v[0] for k, v in form.items()})]
    raise ValueError(f"unknown request to {service}: {request['method']} {request['path']}?{request['query']}")


def _json_call(service: str, operation: str, body: Mapping[str, Any]) -> Call:
    action = f"{service}:{operation}"
    if service == "sagemaker":
        if "ResourceArn" in body:
            return Call(action, body["ResourceArn"])
        parameter = re.sub(r"^(Create|Describe|Delete|Stop|Update|Invoke)", "", operation) + "Name"
        if parameter in SAGEMAKER_NAMES and parameter in body:
            return Call(action, _arn("sagemaker", f"{SAGEMAKER_NAMES[parameter]}/{body[parameter].lower()}"),
                        _sagemaker_context(operation, body))
        if operation.startswith("List"):
            return Call(action, "*")
    if service == "logs":
        group = body["logGroupName"]
        if operation in ("CreateLogStream", "PutLogEvents", "GetLogEvents"):
            return Call(action, _log_stream(group, body["logStreamName"]))
        return Call(action, _log_group(group))
    if service == "kms":
        return Call(action, body["KeyId"])
    raise ValueError(f"unknown JSON request: {action}")


def _query_call(service: str, action: str, form: Mapping[str, str]) -> Call:
    if service == "cloudformation":
        return Call(f"cloudformation:{action}", _arn("cloudformation", f"stack/{form.get('StackName', '*')}/*"))
    if service == "iam" and "RoleName" in form:
        return Call(f"iam:{action}", f"arn:aws:iam::{ACCOUNT}:role/{form['RoleName']}")
    if service == "iam" and "PolicySourceArn" in form:
        return Call(f"iam:{action}", form["PolicySourceArn"])
    if service == "sts":
        return Call(f"sts:{action}", "*")
    raise ValueError(f"unknown query request: {service}:{action}")


def _s3_calls(request: Mapping[str, Any]) -> list[Call]:
    method, headers = request["method"], request["headers"]
    query = urllib.parse.parse_qs(request["query"], keep_blank_values=True)
    host = headers.get("Host", "")
    path = urllib.parse.unquote(request["path"])
    if re.match(r"^[a-z0-9.-]+\.localhost(:\d+)?$", host):  # virtual-hosted style
        bucket, key = host.split(".localhost")[0], path.lstrip("/")
    else:
        bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return [Call("s3:ListAllMyBuckets", "*", TLS)]
    bucket_arn = f"arn:aws:s3:::{bucket}"
    if not key:
        if method == "POST" and "delete" in query:
            deletes = ET.fromstring(request["body"] or "")
            calls = []
            for item in deletes.iter():
                if item.tag.endswith("Object"):
                    name = next(c.text for c in item if c.tag.endswith("Key"))
                    versioned = any(c.tag.endswith("VersionId") for c in item)
                    calls.append(Call("s3:DeleteObjectVersion" if versioned else "s3:DeleteObject",
                                      f"{bucket_arn}/{name}", TLS))
            return calls
        for parameter, action in S3_BUCKET_QUERIES.items():
            if parameter in query and method == "GET":
                return [Call(action, bucket_arn, TLS)]
        if method in ("GET", "HEAD"):  # ListObjects(V2); HeadBucket needs s3:ListBucket
            return [Call("s3:ListBucket", bucket_arn, {**TLS, "s3:prefix": query.get("prefix", [""])[0]})]
        if method == "PUT":
            return [Call("s3:CreateBucket", bucket_arn, TLS)]
        raise ValueError(f"unknown S3 bucket request: {method} {path}?{request['query']}")
    object_arn = f"{bucket_arn}/{key}"
    if method in ("GET", "HEAD"):
        return [Call("s3:GetObjectVersion" if "versionId" in query else "s3:GetObject", object_arn, TLS)]
    if method == "DELETE":
        if "uploadId" in query:
            return [Call("s3:AbortMultipartUpload", object_arn, TLS)]
        return [Call("s3:DeleteObjectVersion" if "versionId" in query else "s3:DeleteObject", object_arn, TLS)]
    if method in ("PUT", "POST"):  # PutObject, UploadPart, Create/CompleteMultipartUpload, CopyObject's target
        context: dict[str, str | list[str]] = dict(TLS)
        for header, condition in (("X-Amz-Server-Side-Encryption", "s3:x-amz-server-side-encryption"),
                                  ("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id",
                                   "s3:x-amz-server-side-encryption-aws-kms-key-id")):
            if header in headers:
                context[condition] = headers[header]
        calls = [Call("s3:PutObject", object_arn, context)]
        if "X-Amz-Copy-Source" in headers:
            source = urllib.parse.unquote(headers["X-Amz-Copy-Source"]).lstrip("/").split("?")[0]
            calls.append(Call("s3:GetObject", f"arn:aws:s3:::{source}", TLS))
        return calls
    raise ValueError(f"unknown S3 object request: {method} {path}?{request['query']}")


def _sagemaker_context(operation: str, body: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """The SageMaker condition keys of a Create* request (the service authorization reference's list)."""
    context: dict[str, str | list[str]] = {}
    if "EnableNetworkIsolation" in body:
        context["sagemaker:NetworkIsolation"] = str(bool(body["EnableNetworkIsolation"])).lower()
    if "EnableInterContainerTrafficEncryption" in body:
        context["sagemaker:InterContainerTrafficEncryption"] = str(
            bool(body["EnableInterContainerTrafficEncryption"])).lower()
    vpc = body.get("VpcConfig")
    if vpc:
        context["sagemaker:VpcSubnets"] = list(vpc["Subnets"])
        context["sagemaker:VpcSecurityGroupIds"] = list(vpc["SecurityGroupIds"])
    resources = body.get("ResourceConfig") or body.get("TransformResources") or {}
    types = [resources["InstanceType"]] if "InstanceType" in resources else [
        v["InstanceType"] for v in body.get("ProductionVariants", []) if "InstanceType" in v]
    if types:
        context["sagemaker:InstanceTypes"] = types
    volume = resources.get("VolumeKmsKeyId") or (body.get("KmsKeyId") if operation == "CreateEndpointConfig" else None)
    if volume:
        context["sagemaker:VolumeKmsKeyArn"] = volume
    output = (body.get("OutputDataConfig") or body.get("TransformOutput") or {}).get("KmsKeyId")
    if output:
        context["sagemaker:OutputKmsKeyArn"] = output
    if "MaxRuntimeInSeconds" in body.get("StoppingCondition", {}):
        context["sagemaker:MaxRuntimeInSeconds"] = str(body["StoppingCondition"]["MaxRuntimeInSeconds"])
    models = [body["ModelName"]] if operation == "CreateTransformJob" else [
        v["ModelName"] for v in body.get("ProductionVariants", [])]
    if models:
        context["sagemaker:ModelArn"] = [_arn("sagemaker", f"model/{m.lower()}") for m in models]
    tags = body.get("Tags", [])
    for tag in tags:
        context[f"aws:RequestTag/{tag['Key']}"] = tag["Value"]
    if tags:
        context["aws:TagKeys"] = [tag["Key"] for tag in tags]
    return context


# ---------------------------------------------------------------------------------------------------------------
# Emulator names -> the template's names


@dataclass(frozen=True)
class Stack:
    """A synthesized template, seen as the journey's calls need it."""

    doc: dict[str, Any]
    names: dict[str, str]  # an emulator name -> the template's (longest first)
    roles: dict[str, str]  # a role's ARN -> its logical id
    bucket: str  # the data bucket's ARN
    key: str  # the stack key's ARN
    resource_policies: dict[str, dict[str, Any]]  # bucket and key ARNs -> their policies
    subnets: list[str]  # the VPC variant's private subnets and security groups (empty without a VPC)
    security_groups: list[str]
    image: str  # the stack's training image URI

    def swap(self, text: str) -> str:
        """`text` with every emulator name replaced by the template's."""
        for old, new in self.names.items():
            text = text.replace(old, new)
        return text

    def translate(self, call: Call) -> Call:
        context = {k: [self.swap(v) for v in value] if isinstance(value, list) else self.swap(value)
                   for k, value in call.context.items()}
        return Call(call.action, self.swap(call.resource), context)

    def role_arn(self, role: str) -> str:
        [arn] = [a for a, logical_id in self.roles.items() if logical_id.startswith(role)]
        return arn


def stack_view(doc: dict[str, Any], physical: Mapping[str, str], emulator_image: str) -> Stack:
    """The template `doc` with the emulator's names (`physical`: logical id -> physical id) mapped onto it."""
    resources = doc["Resources"]
    names: dict[str, str] = {}
    for logical_id, physical_id in physical.items():
        if resources.get(logical_id, {}).get("Type") in ("AWS::S3::Bucket", "AWS::IAM::Role", "AWS::KMS::Key"):
            names[physical_id] = resolve(doc, {"Ref": logical_id})
    names[emulator_image] = resolve(doc, doc["Outputs"]["TrainingImageUri"]["Value"])
    names[f":{EMULATOR_REGION}:"] = f":{REGION}:"
    names = dict(sorted(names.items(), key=lambda item: -len(item[0])))
    roles = {resolve(doc, {"Fn::GetAtt": [k, "Arn"]}): k for k, v in resources.items()
             if v["Type"] == "AWS::IAM::Role" and k.split("Role")[0] in ("Training", "Model", "Notebook")}
    [bucket_id] = [k for k, v in resources.items()
                   if v["Type"] == "AWS::S3::Bucket" and "LoggingConfiguration" in v["Properties"]]
    bucket = resolve(doc, {"Fn::GetAtt": [bucket_id, "Arn"]})
    key, subnets, groups = stack_key_and_network(doc)
    policies = resource_policies(doc)
    assert {bucket, key} <= set(policies), "the data bucket's policy or the key's policy is missing"
    return Stack(doc, names, roles, bucket, key, policies, subnets, groups, names[emulator_image])


# ---------------------------------------------------------------------------------------------------------------
# The journey's calls


def journey_calls(requests: list[dict[str, Any]], stack: Stack) -> Iterator[JourneyCall]:
    """Every call of the journey that a role of `stack` makes on AWS, and the must-deny calls (see the module
    docstring). Calls in NOT_A_ROLE_CALL (origin "exempt") and TOLERATED are yielded with any verdict expected and
    their reason."""
    seen: set[tuple[str, str, str, str]] = set()

    def once(item: JourneyCall) -> Iterator[JourneyCall]:
        identity = (item.role, item.call.action, item.call.resource, json.dumps(item.call.context, sort_keys=True))
        if identity not in seen:
            seen.add(identity)
            yield item

    created: dict[str, dict[str, Any]] = {}  # Create* request bodies by kind (TrainingJob, Model, ...)
    for request in requests:
        role = request["headers"].get(STAND_IN_HEADER) or "NotebookRole"
        origin = "stand-in" if role != "NotebookRole" else "recorded"
        for raw in to_calls(request):
            call = stack.translate(raw)
            if (role, call.action) in NOT_A_ROLE_CALL:
                yield from once(JourneyCall(role, call, "exempt", "any", NOT_A_ROLE_CALL[(role, call.action)]))
                continue
            if call.action.startswith("sagemaker:Create"):
                call = _in_vpc(call, stack)
            if (role, call.action) in TOLERATED:
                yield from once(JourneyCall(role, call, origin, "any", TOLERATED[(role, call.action)]))
            else:
                yield from once(JourneyCall(role, call, origin, ALLOWED))
            multipart = "uploads" in request["query"] or "uploadId" in request["query"]
            for implied in _implied(role, call, stack, multipart=multipart):
                yield from once(implied)
            if call.action.startswith("sagemaker:Create") and request["body"]:
                body = json.loads(stack.swap(request["body"]))
                created[call.action.split(":Create", 1)[1]] = body
                for implied in _on_create(call, body, created, stack):
                    yield from once(implied)
    for denied in must_deny(requests, created, stack):
        yield from once(denied)


def _in_vpc(call: Call, stack: Stack) -> Call:
    """CreateTrainingJob and CreateModel as the launcher sends them to a stack with a VPC: its subnets and groups."""
    if not stack.subnets or call.action not in ("sagemaker:CreateTrainingJob", "sagemaker:CreateModel"):
        return call
    return Call(call.action, call.resource, {**call.context, "sagemaker:VpcSubnets": stack.subnets,
                                             "sagemaker:VpcSecurityGroupIds": stack.security_groups})


def _kms(action: str, key: str, stack: Stack, **extra: str) -> Call:
    return Call(action, key, {"kms:ViaService": f"s3.{REGION}.amazonaws.com", "kms:CallerAccount": ACCOUNT,
                              "kms:EncryptionContext:aws:s3:arn": stack.bucket, **extra})


def _implied(role: str, call: Call, stack: Stack, *, multipart: bool) -> Iterator[JourneyCall]:
    """S3 on the data bucket uses its key (SSE-KMS, the bucket's default and the launcher's header): KMS through S3
    for the same principal (a multipart upload decrypts its parts' data keys too)."""
    if not call.resource.startswith(f"{stack.bucket}/"):
        return
    key = str(call.context.get("s3:x-amz-server-side-encryption-aws-kms-key-id", stack.key))
    if call.action == "s3:PutObject":
        yield JourneyCall(role, _kms("kms:GenerateDataKey", key, stack), "implied", ALLOWED)
        if multipart:
            yield JourneyCall(role, _kms("kms:Decrypt", key, stack), "implied", ALLOWED)
    elif call.action == "s3:GetObject":
        yield JourneyCall(role, _kms("kms:Decrypt", key, stack), "implied", ALLOWED)


def _role_of(arn: str, stack: Stack) -> str:
    """The stack's role (TrainingRole, ModelRole, NotebookRole) whose ARN the notebook passed."""
    if arn not in stack.roles:
        raise AssertionError(f"the notebook passed {arn}, which is none of the stack's roles {sorted(stack.roles)}")
    return stack.roles[arn].split("Role")[0] + "Role"


def _pull(role: str, image: str) -> Iterator[JourneyCall]:
    registry, _, rest = image.partition("/")
    account, region = registry.split(".")[0], registry.split(".")[3]
    repository = f"arn:aws:ecr:{region}:{account}:repository/{rest.split(':')[0].split('@')[0]}"
    yield JourneyCall(role, Call("ecr:GetAuthorizationToken", "*"), "implied", ALLOWED)
    for action in ECR_PULL:
        yield JourneyCall(role, Call(action, repository), "implied", ALLOWED)


def _on_create(call: Call, body: Mapping[str, Any], created: Mapping[str, Mapping[str, Any]],
               stack: Stack) -> Iterator[JourneyCall]:
    """What a Create* call implies: the notebook passes the role and tags the resource; SageMaker, as the passed role,
    pulls the image, has the volume key granted, publishes metrics, creates log groups and streams, and in a VPC
    manages network interfaces (what the stand-ins do themselves was recorded)."""
    notebook = "NotebookRole"
    tags = {k: v for k, v in call.context.items() if k.startswith("aws:") and "Tag" in k}
    if tags:
        yield JourneyCall(notebook, Call("sagemaker:AddTags", call.resource, tags), "implied", ALLOWED)
    kind = call.action.split(":Create", 1)[1]
    passed = body.get("RoleArn") or body.get("ExecutionRoleArn")
    if passed:
        yield JourneyCall(notebook, Call("iam:PassRole", passed, {"iam:PassedToService": SAGEMAKER}), "implied",
                          ALLOWED)
    model = created.get("Model", {})
    role = _role_of(passed, stack) if passed else _role_of(model["ExecutionRoleArn"], stack)
    name = body[f"{kind}Name"]
    volume = call.context.get("sagemaker:VolumeKmsKeyArn")
    if isinstance(volume, str):
        yield JourneyCall(role, Call("kms:CreateGrant", volume, {"kms:GrantIsForAWSResource": "true"}), "implied",
                          ALLOWED)
    if kind == "TrainingJob":
        yield from _pull(role, body["AlgorithmSpecification"]["TrainingImage"])
    if kind == "Model":
        yield from _pull(role, body["PrimaryContainer"]["Image"])
    groups = {"TrainingJob": ("/aws/sagemaker/TrainingJobs", f"{name}/algo-1-1796597314"),
              "TransformJob": ("/aws/sagemaker/TransformJobs", f"{name}/i-0123456789abcdef0-1796597314"),
              "Endpoint": (f"/aws/sagemaker/Endpoints/{name}", "AllTraffic/i-0123456789abcdef0")}
    if kind in groups:
        group, stream = groups[kind]
        yield JourneyCall(role, Call("logs:CreateLogGroup", _log_group(group, REGION)), "implied", ALLOWED)
        for action in ("logs:CreateLogStream", "logs:PutLogEvents"):
            yield JourneyCall(role, Call(action, _log_stream(group, stream, REGION)), "implied", ALLOWED)
        yield JourneyCall(role, Call("cloudwatch:PutMetricData", "*"), "implied", ALLOWED)
    if kind == "Endpoint":  # the notebook's endpoint cell: launcher.endpoints.invoke_endpoint, local without AWS
        yield JourneyCall(notebook, Call("sagemaker:InvokeEndpoint", call.resource), "implied", ALLOWED)
    if stack.subnets and kind in ("TrainingJob", "Model"):
        for action in NETWORK_INTERFACES:
            yield JourneyCall(role, Call(action, "*"), "implied", ALLOWED)
    if kind == "TrainingJob" and body.get("CheckpointConfig"):
        uri = body["CheckpointConfig"]["S3Uri"]
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        yield JourneyCall(role, Call("s3:ListBucket", f"arn:aws:s3:::{bucket}", {**TLS, "s3:prefix": prefix}),
                          "implied", ALLOWED)
        for action in ("s3:PutObject", "s3:GetObject"):
            yield JourneyCall(role, Call(action, f"arn:aws:s3:::{bucket}/{prefix.rstrip('/')}/checkpoint.pt", TLS),
                              "implied", ALLOWED)
    if kind == "TrainingJob":  # the SDK's HeadBucket where ListAllMyBuckets is denied (TOLERATED)
        yield JourneyCall(notebook, Call("s3:ListBucket", stack.bucket, {**TLS, "s3:prefix": ""}), "implied", ALLOWED)


# ---------------------------------------------------------------------------------------------------------------
# Must-deny


def must_deny(requests: list[dict[str, Any]], created: Mapping[str, Mapping[str, Any]],
              stack: Stack) -> Iterator[JourneyCall]:
    """Calls next to the journey's own that must stay denied, built from its recorded names."""
    job = created["TrainingJob"]
    job_arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/{job['TrainingJobName'].lower()}"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    bucket = stack.bucket.removeprefix("arn:aws:s3:::")

    def obj(uri: str) -> str:
        return "arn:aws:s3:::" + uri.removeprefix("s3://")

    dataset = obj(channels["train"]) + "labels.csv"
    model_data = obj(created["Model"]["PrimaryContainer"]["ModelDataUrl"])
    pseudonym_key = obj(channels["pseudonym_key"])
    inference = obj(created["TransformJob"]["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]) + "a.dcm"
    other_bucket = "arn:aws:s3:::otherstack-storagedatabucket0a1b2c3d"
    other_key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0b1f6a52-3f5e-4a5c-9a8e-4f2c2b7c1d11"

    def deny(role: str, action: str, resource: str, why: str, **context: str | list[str]) -> JourneyCall:
        return JourneyCall(role, Call(action, resource, context), "must-deny", "denied", why)

    for role in ("TrainingRole", "ModelRole", "NotebookRole"):
        for resource in (dataset, model_data):
            yield deny(role, "s3:DeleteObjectVersion", resource, "no role removes a version", **TLS)
        yield deny(role, "s3:GetObject", f"{other_bucket}/{dataset.split(bucket + '/', 1)[1]}",
                   "another stack's bucket", **TLS)
        yield deny(role, "s3:ListBucket", other_bucket, "another stack's bucket", **TLS, **{"s3:prefix": ""})
        yield deny(role, "kms:Decrypt", other_key, "another key", **{"kms:ViaService": f"s3.{REGION}.amazonaws.com"})
        yield deny(role, "s3:PutBucketPolicy", stack.bucket, "no role changes the bucket's policy", **TLS)
        yield deny(role, "kms:ScheduleKeyDeletion", stack.key, "no role deletes the key")
    training = stack.role_arn("TrainingRole")
    yield deny("NotebookRole", "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/SomeAdminRole", "an unrelated role",
               **{"iam:PassedToService": SAGEMAKER})
    yield deny("NotebookRole", "iam:PassRole", stack.role_arn("NotebookRole"), "its own role",
               **{"iam:PassedToService": SAGEMAKER})
    yield deny("NotebookRole", "iam:PassRole", training, "the training role to another service",
               **{"iam:PassedToService": "ec2.amazonaws.com"})
    recorded = {c.action: c for c in (stack.translate(x) for r in requests if not r["headers"].get(STAND_IN_HEADER)
                                      for x in to_calls(r)) if c.action.startswith("sagemaker:Create")}
    for action in ("sagemaker:CreateTrainingJob", "sagemaker:CreateModel"):
        call = _in_vpc(recorded[action], stack)
        open_ = {**call.context, "sagemaker:NetworkIsolation": "false"}
        yield deny("NotebookRole", action, call.resource, "without network isolation", **open_)
        left_out = {k: v for k, v in call.context.items() if k != "sagemaker:NetworkIsolation"}
        yield deny("NotebookRole", action, call.resource, "network isolation left out of the request", **left_out)
        if stack.subnets:
            outside = {k: v for k, v in call.context.items() if not k.startswith("sagemaker:Vpc")}
            yield deny("NotebookRole", action, call.resource, "outside the stack's VPC", **outside)
    create_job = _in_vpc(recorded["sagemaker:CreateTrainingJob"], stack)
    for condition in ("sagemaker:VolumeKmsKeyArn", "sagemaker:OutputKmsKeyArn"):
        other = {**create_job.context, condition: other_key}
        yield deny("NotebookRole", create_job.action, create_job.resource, f"{condition} another key", **other)
        unset = {k: v for k, v in create_job.context.items() if k != condition}
        yield deny("NotebookRole", create_job.action, create_job.resource, f"{condition} left out", **unset)
    yield deny("NotebookRole", "sagemaker:CreateTrainingJob", job_arn.replace(f":{REGION}:", ":us-west-2:"),
               "another region", **create_job.context)
    yield deny("ModelRole", "s3:GetObject", pseudonym_key, "the pseudonym key: the model role never reads it", **TLS)
    yield deny("TrainingRole", "s3:PutObject", pseudonym_key, "the pseudonym key: jobs never rewrite it", **TLS)
    yield deny("ModelRole", "s3:GetObject", dataset, "no dataset for the model role", **TLS)
    yield deny("ModelRole", "s3:ListBucket", stack.bucket, "the model role lists only its prefixes",
               **TLS, **{"s3:prefix": dataset.split(bucket + "/", 1)[1].rsplit("/", 1)[0] + "/"})
    yield deny("ModelRole", "s3:PutObject", model_data, "the model role never changes a model", **TLS)
    yield deny("TrainingRole", "s3:GetObject", inference, "no inference input for the training role", **TLS)
    yield deny("TrainingRole", "s3:PutObject", dataset, "jobs never change a dataset", **TLS)
    yield deny("TrainingRole", "sagemaker:CreateTrainingJob", job_arn, "a job starts no job", **create_job.context)
    yield deny(f"arn:aws:iam::{ACCOUNT}:role/UnrelatedRole", "kms:Decrypt", stack.key,
               "another principal of the account, even with kms:Decrypt in its own policy: the key policy names "
               "its users", **{"kms:ViaService": f"s3.{REGION}.amazonaws.com"})


UNRELATED_POLICY = {"Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}]}


def requests_for(calls: list[JourneyCall], stack: Stack) -> list[Request]:
    """Each call as a request to the evaluator: its principal's policies (an outside principal gets
    UNRELATED_POLICY) and the resource's own policy (the bucket's, the key's)."""
    policies: dict[str, list[dict[str, Any]]] = {}
    out = []
    for item in calls:
        if item.role.startswith("arn:"):
            principal, identity = item.role, [UNRELATED_POLICY]
        else:
            principal = stack.role_arn(item.role)
            identity = policies.setdefault(item.role, role_policies(stack.doc, item.role))
        policy = resource_policy(stack.resource_policies, item.call.resource)
        out.append(Request(principal, identity, item.call, policy))
    return out


def table(rows: list[tuple[str, JourneyCall, str]]) -> str:
    """The calls and verdicts, one line each; S3 objects of one folder with the same verdict on one line."""
    grouped: dict[tuple[str, ...], int] = {}
    for variant, item, verdict in rows:
        resource = item.call.resource
        if resource.startswith("arn:aws:s3:::") and "/" in resource and item.origin != "must-deny":
            bucket, _, key = resource.partition("/")
            parts = key.split("/")
            resource = f"{bucket}/{'/'.join(parts[:min(3, len(parts) - 1)])}/*"  # a channel or output folder
        context = " ".join(f"{k}={v}" for k, v in sorted(item.call.context.items()) if k != "aws:SecureTransport"
                           and not k.startswith(("kms:EncryptionContext", "kms:CallerAccount", "aws:RequestTag")))
        identity = (variant, item.origin, item.role, verdict, item.call.action, resource, context, item.why)
        grouped[identity] = grouped.get(identity, 0) + 1
    lines = [f"{'variant':8} {'origin':9} {'role':13} {'verdict':17} action resource [conditions] (calls)"]
    for (variant, origin, role, verdict, action, resource, context, why), count in grouped.items():
        role = role if not role.startswith("arn:") else role.rsplit("/", 1)[1]
        line = f"{variant:8} {origin:9} {role:13} {verdict:17} {action} {resource}"
        line += f" [{context}]" if context else ""
        line += f" ({count})" if count > 1 else ""
        line += f"  -- {why}" if why else ""
        lines.append(line)
    return "\n".join(lines)
