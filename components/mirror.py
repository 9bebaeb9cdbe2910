"""Where a host without internet gets its software and weights: Artifact Registry and Cloud Storage.

Three independent switches (config `mirror.dockerRemote`, `mirror.aptRemote`, `model.source`):

- Docker: a remote repository caching Docker Hub. Images are pulled as
  `{region}-docker.pkg.dev/{project}/{repository}/{Docker Hub path}`, official single-name images
  under `library/` (their canonical Docker Hub path). The host logs Docker in with
  scripts/registry_login.sh (token from the metadata server) before pulling.
- apt: remote repositories caching the Ubuntu archive, one per suite of the release the default
  host image runs (24.04, noble). Docker's and NVIDIA's own apt repositories cannot be mirrored:
  Artifact Registry's apt remote repositories take only the DEBIAN, UBUNTU and DEBIAN_SNAPSHOT
  bases in pulumi-gcp 10.2.0 (no custom apt upstream), so the NVIDIA container toolkit must come
  with a prepared `host.image` on a host without internet.
- Weights: with `model.source: gcs`, the host's service account may read the `model.gcsUri`
  prefix of its bucket, and list only under it.

The service account gets `roles/artifactregistry.reader` on these repositories only, and
`roles/storage.objectViewer` on the bucket under an IAM condition naming the prefix.

Contract with the startup script (the apt seam), `Mirror.apt_mirror` (its host and sources):
the text is a deb822 sources file. The startup script, before any apt-get when it is set,
1. moves the image's own sources aside (/etc/apt/sources.list.d/ubuntu.sources and any
   /etc/apt/sources.list entries), so apt never tries the internet;
2. writes the text to /etc/apt/sources.list.d/vllm-gcp-mirror.sources;
3. writes /etc/apt/auth.conf.d/vllm-gcp-mirror.conf (root, mode 0600) with the single line
   `machine {apt_host} login oauth2accesstoken password <token>`, the token being the
   `access_token` of http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token
   (header `Metadata-Flavor: Google`), refreshed before each apt phase (tokens last about an hour);
4. retries `apt-get update` for up to 10 minutes on 401/403/404: the repositories and grants are
   created alongside the VM, and IAM changes take minutes to propagate.
The archive's InRelease files pass through a remote repository unchanged, so Ubuntu's own keyring
still verifies them (Signed-By below); apt's plain https method with basic auth needs no extra
package (apt-transport-artifact-registry is only needed for `ar+https://`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
from pulumi_gcp import artifactregistry as ar

from components.config import MirrorConfig, ModelConfig
from components.host_bundle import AptMirror

READER_ROLE = "roles/artifactregistry.reader"
OBJECT_VIEWER_ROLE = "roles/storage.objectViewer"

DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
# The release of catalogue.DEFAULT_HOST_IMAGE (Ubuntu 24.04) and the components and keyring its
# stock /etc/apt/sources.list.d/ubuntu.sources uses.
UBUNTU_SUITES = ("noble", "noble-updates", "noble-security")
UBUNTU_COMPONENTS = "main restricted universe multiverse"
UBUNTU_KEYRING = "/usr/share/keyrings/ubuntu-archive-keyring.gpg"

_REPOSITORY_ID_MAX = (
    63  # Artifact Registry: lowercase letters, digits, hyphens; starts with a letter
)


def _slug(value: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", value.lower())).strip("-")


def docker_hub_path(reference: str) -> str | None:
    """The repository path and tag of a Docker Hub image (`library/` for official images).

    None when the reference names another registry (its first component has a dot or a port,
    or is localhost), which a Docker Hub remote repository cannot serve.
    """
    first, _, rest = reference.partition("/")
    if rest and first in DOCKER_HUB_HOSTS:
        reference = rest
    elif rest and ("." in first or ":" in first or first == "localhost"):
        return None
    return reference if "/" in reference else f"library/{reference}"


def repository_id(name: str, stack: str, purpose: str) -> str:
    """`{name}-{stack}-{purpose}`, the stack part shortened to fit 63 characters."""
    head, tail = _slug(name), _slug(purpose)
    room = _REPOSITORY_ID_MAX - len(head) - len(tail) - 2
    short_stack = _slug(stack)[:room].strip("-")
    return "-".join(part for part in (head, short_stack, tail) if part)


def apt_sources(apt_host: str, project: str, repository_ids: Mapping[str, str]) -> str:
    """deb822 sources: the Ubuntu archive through the remote repositories (module doc), one
    stanza per suite of `repository_ids` (suite to repository id)."""
    stanzas = [
        "\n".join(
            (
                "Types: deb",
                f"URIs: https://{apt_host}/remote/{project}/{repository}",
                f"Suites: {suite}",
                f"Components: {UBUNTU_COMPONENTS}",
                f"Signed-By: {UBUNTU_KEYRING}",
            )
        )
        for suite, repository in repository_ids.items()
    ]
    return "\n\n".join(stanzas) + "\n"


def gcs_location(uri: str) -> tuple[str, str]:
    """Bucket and prefix (no leading or trailing slash; empty for the whole bucket) of gs://..."""
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    return bucket, prefix.strip("/")


def _cel_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def prefix_read_condition(bucket: str, prefix: str) -> str:
    """IAM condition: read objects under the prefix, and list only with a prefix inside it.

    Object reads are checked on the object (`resource.name`); listing is checked on the bucket,
    where the request's prefix is `storage.googleapis.com/objectListPrefix`. The exact prefix
    without its slash is allowed too, for clients that list `gs://bucket/prefix` before descending.
    """
    list_prefix = 'api.getAttribute("storage.googleapis.com/objectListPrefix", "")'
    return " || ".join(
        (
            f"resource.name.startsWith({_cel_string(f'projects/_/buckets/{bucket}/objects/{prefix}/')})",
            f"{list_prefix} == {_cel_string(prefix)}",
            f"{list_prefix}.startsWith({_cel_string(f'{prefix}/')})",
        )
    )


@dataclass(frozen=True)
class MirrorArgs:
    mirror: MirrorConfig  # docker_remote, apt_remote
    model: ModelConfig  # image, source, gcs_uri
    project: str
    region: str
    service_account_email: pulumi.Input[str]  # the host's dedicated service account


class Mirror(pulumi.ComponentResource):
    """Artifact Registry remote repositories and the host's narrow read grants (see module doc).

    Built after the host's identity (its grants name the account) and before the host, which
    takes its registry host, its image references and its apt sources.
    """

    vllm_image: pulumi.Output[str]
    registry_host: str | None  # REGION-docker.pkg.dev with the Docker mirror
    apt_mirror: pulumi.Output[AptMirror] | None  # with the apt mirror, once its grants exist
    grants: list[pulumi.Resource]  # every read grant: what a pull or a weights load waits on

    def __init__(
        self, name: str, args: MirrorArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:mirror:Mirror", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        stack = pulumi.get_stack()
        self._project = args.project
        self._docker_repository_id = repository_id(name, stack, "dockerhub")
        self.registry_host = f"{args.region}-docker.pkg.dev" if args.mirror.docker_remote else None
        member = pulumi.Output.from_input(args.service_account_email).apply(
            lambda email: f"serviceAccount:{email}"
        )
        self.grants = []

        self.vllm_image = pulumi.Output.from_input(args.model.image)
        if args.mirror.docker_remote:
            docker_grant = self._remote_repository(
                f"{name}-dockerhub",
                self._docker_repository_id,
                "DOCKER",
                "Docker Hub, cached for the vLLM host",
                ar.RepositoryRemoteRepositoryConfigArgs(
                    description="Docker Hub",
                    docker_repository=ar.RepositoryRemoteRepositoryConfigDockerRepositoryArgs(
                        public_repository="DOCKER_HUB"
                    ),
                ),
                args,
                member,
                child,
            )
            # Resolves once the grant exists, so nothing pulls through the mirror before it may.
            self.vllm_image = docker_grant.id.apply(lambda _: self.image(args.model.image))

        self.apt_mirror = None
        if args.mirror.apt_remote:
            apt_host = f"{args.region}-apt.pkg.dev"
            repository_ids = {
                suite: repository_id(name, stack, f"ubuntu-{suite}") for suite in UBUNTU_SUITES
            }
            apt_grants = [
                self._remote_repository(
                    f"{name}-apt-{suite}",
                    repository_ids[suite],
                    "APT",
                    f"Ubuntu archive {suite}, cached for the vLLM host",
                    ar.RepositoryRemoteRepositoryConfigArgs(
                        description=f"archive.ubuntu.com {suite}",
                        apt_repository=ar.RepositoryRemoteRepositoryConfigAptRepositoryArgs(
                            public_repository=ar.RepositoryRemoteRepositoryConfigAptRepositoryPublicRepositoryArgs(
                                repository_base="UBUNTU",
                                repository_path=f"ubuntu/dists/{suite}",
                            )
                        ),
                    ),
                    args,
                    member,
                    child,
                )
                for suite in UBUNTU_SUITES
            ]
            mirror = AptMirror(apt_host, apt_sources(apt_host, args.project, repository_ids))
            # Resolves once the grants exist: the host's apt needs them from its first boot.
            self.apt_mirror = pulumi.Output.all(*(g.id for g in apt_grants)).apply(lambda _: mirror)

        if args.model.source == "gcs" and args.model.gcs_uri is not None:
            self.grants.append(self._weights_grant(name, args.model.gcs_uri, member, child))

        self.register_outputs({"vllmImage": self.vllm_image, "registryHost": self.registry_host})

    def image(self, reference: str) -> str:
        """A Docker Hub reference rewritten to the Docker mirror; anything else unchanged."""
        path = docker_hub_path(reference)
        if self.registry_host is None or path is None:
            return reference
        return f"{self.registry_host}/{self._project}/{self._docker_repository_id}/{path}"

    def _remote_repository(  # noqa: PLR0913, PLR0917 (one per property of the repository)
        self,
        resource_name: str,
        repository_id: str,
        repository_format: str,
        description: str,
        remote: ar.RepositoryRemoteRepositoryConfigArgs,
        args: MirrorArgs,
        member: pulumi.Output[str],
        child: pulumi.ResourceOptions,
    ) -> ar.RepositoryIamMember:
        repository = ar.Repository(
            resource_name,
            project=args.project,
            location=args.region,
            repository_id=repository_id,
            format=repository_format,
            mode="REMOTE_REPOSITORY",
            description=description,
            remote_repository_config=remote,
            # Every remote_repository_config field forces a new repository, and its id is fixed:
            # the old one must go before the new one can take the id.
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(delete_before_replace=True)
            ),
        )
        grant = ar.RepositoryIamMember(
            f"{resource_name}-reader",
            project=args.project,
            location=args.region,
            repository=repository.name,
            role=READER_ROLE,
            member=member,
            opts=child,
        )
        self.grants.append(grant)
        return grant

    def _weights_grant(
        self, name: str, gcs_uri: str, member: pulumi.Output[str], child: pulumi.ResourceOptions
    ) -> gcp.storage.BucketIAMMember:
        bucket, prefix = gcs_location(gcs_uri)
        condition = None
        if prefix:
            # Conditions on a bucket need uniform bucket-level access (README, air-gapped section).
            condition = gcp.storage.BucketIAMMemberConditionArgs(
                title="vllm-gcp weights prefix",
                description=f"Read and list {gcs_uri} only",
                expression=prefix_read_condition(bucket, prefix),
            )
        return gcp.storage.BucketIAMMember(
            f"{name}-weights-reader",
            bucket=bucket,
            role=OBJECT_VIEWER_ROLE,
            member=member,
            condition=condition,
            opts=child,
        )
