"""The stack configuration: one pydantic model tree, and the only reader of `pulumi.Config`.

- `schema`: the sections, their field types and validators, StackConfig and StackSecrets;
- `rules`: the cross-field rules, each returning the problems it finds;
- `certificates`: the checks of a provided certificate and key;
- `loading`: reading the engine's config, parsing every section, `validate()` and `load()`;
- `problems`: Problem and ConfigError, what validation reports.

The rest of the program imports from here.
"""

from components import catalogue
from components.config.certificates import check_provided_certificate
from components.config.loading import load, validate
from components.config.problems import ConfigError, Problem
from components.config.rules import IAP_TCP_FORWARDING_RANGE
from components.config.schema import (
    HOST_IMAGE,
    PROJECT,
    SECRET_KEYS,
    AccessConfig,
    ElasticConfig,
    FleetConfig,
    HostConfig,
    MirrorConfig,
    ModelConfig,
    NetworkConfig,
    StackConfig,
    StackSecrets,
    TlsConfig,
)

__all__ = [
    "HOST_IMAGE",
    "IAP_TCP_FORWARDING_RANGE",
    "PROJECT",
    "SECRET_KEYS",
    "AccessConfig",
    "ConfigError",
    "ElasticConfig",
    "FleetConfig",
    "HostConfig",
    "MirrorConfig",
    "ModelConfig",
    "NetworkConfig",
    "Problem",
    "StackConfig",
    "StackSecrets",
    "TlsConfig",
    "catalogue",
    "check_provided_certificate",
    "load",
    "validate",
]
