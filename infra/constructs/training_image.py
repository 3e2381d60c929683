"""The training image: training/ built on the SageMaker PyTorch container by `cdk deploy`, or an existing image."""

from __future__ import annotations

import re
from pathlib import Path

from aws_cdk import Stack
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.config import DIGEST
from training.job.code_identity import code_commit

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINING_DIR = REPO_ROOT / "training"
# AWS Deep Learning Containers for SageMaker PyTorch training, on ECR Public so that `cdk deploy` needs no registry
# login (DockerImageAsset cannot log in to a private base registry, aws-cdk#17268). PyTorch 2.13 = the tests' torch.
BASE_IMAGES = {
    "cpu": "public.ecr.aws/deep-learning-containers/pytorch:2.13-cpu-amzn2023-sagemaker",
    "gpu": "public.ecr.aws/deep-learning-containers/pytorch:2.13-cu133-amzn2023-sagemaker",
}
_PRIVATE_ECR = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/(?P<repo>[a-z0-9._/-]+)[:@]"
)


def base_image(variant: str, digest: str = "") -> str:
    """The base container the image is built on: the variant's tag, or that tag's image pinned by its digest.

    Args:
        variant: "cpu" or "gpu" (BASE_IMAGES).
        digest: "" for the tag as the registry serves it on the day of the build; "sha256:<64 hex digits>" for that
            exact image (`name:tag@digest`: Docker pulls by the digest, and the tag stays in the image's
            TRAINING_IMAGE_BASE as a note of what the digest is of).

    Raises:
        ValueError: an unknown variant or a malformed digest; the message says what is allowed.
    """
    if variant not in BASE_IMAGES:
        raise ValueError(f"training image variant {variant!r} is not one of {sorted(BASE_IMAGES)}")
    if digest and not DIGEST.match(digest):
        raise ValueError(f"base image digest {digest!r} is not sha256: and 64 lowercase hex digits")
    return f"{BASE_IMAGES[variant]}@{digest}" if digest else BASE_IMAGES[variant]


def training_code_commit(repo_root: Path = REPO_ROOT) -> str:
    """What the image records as its code (CODE_COMMIT, training/Dockerfile): training/job/code_identity.py's one
    definition, the last commit that changed training/ ("+dirty" with uncommitted changes); "" without git.

    Args:
        repo_root: the checkout.
    """
    return code_commit(repo_root / "training") or ""


class TrainingImage(Construct):
    """The image SageMaker runs the training job in.

    Attributes:
        image_uri: the image's URI, for the notebook and training jobs.
        asset: the DockerImageAsset when the image is built by `cdk deploy`, else None.
    """

    def __init__(self, scope: Construct, construct_id: str, *, image_uri: str, variant: str,
                 base_digest: str = "", code_commit: str | None = None) -> None:
        """Build the image from training/, or refer to an existing one.

        Args:
            scope: parent construct.
            construct_id: construct id.
            image_uri: an existing image to use as it is; "" builds training/.
            variant: "cpu" or "gpu": the base container when building.
            base_digest: "" builds on the variant's tag; "sha256:..." on that digest of it (base_image).
            code_commit: what the image records as its code's commit; None asks this checkout's git
                (training_code_commit).
        """
        super().__init__(scope, construct_id)
        self.asset: ecr_assets.DockerImageAsset | None = None
        self._repository: ecr.IRepository | None = None
        if image_uri:
            self.image_uri = image_uri
            match = _PRIVATE_ECR.match(image_uri)
            if match:
                stack = Stack.of(self)
                self._repository = ecr.Repository.from_repository_attributes(
                    self, "Repository", repository_name=match["repo"],
                    repository_arn=f"arn:{stack.partition}:ecr:{match['region']}:{match['account']}"
                                   f":repository/{match['repo']}",
                )
            return
        self.asset = ecr_assets.DockerImageAsset(
            self, "Asset",
            directory=str(TRAINING_DIR),
            platform=ecr_assets.Platform.LINUX_AMD64,  # SageMaker training instances are x86-64
            build_args={
                "BASE_IMAGE": base_image(variant, base_digest),
                "CODE_COMMIT": training_code_commit() if code_commit is None else code_commit,
            },
        )
        self._repository = self.asset.repository
        self.image_uri = self.asset.image_uri

    def grant_pull(self, grantee: iam.IGrantable) -> None:
        """Let `grantee` pull the image (nothing to grant for a public registry)."""
        if self._repository is not None:
            self._repository.grant_pull(grantee)
