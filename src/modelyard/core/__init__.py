"""Platform core: metadata store, encrypted artifact store, identity, RBAC, audit chain, residency."""

from modelyard.core._artifacts import (
    ArtifactInfo,
    ArtifactStore,
    delete_artifact,
    get_artifact,
    get_artifacts,
    list_artifacts,
    open_artifact,
    put_artifact,
    put_artifacts,
)
from modelyard.core._audit import VerifyResult, list_records, verify_chain
from modelyard.core._db import MetadataStore
from modelyard.core._gc import GcReport, collect_garbage
from modelyard.core._home import doctor, init_home
from modelyard.core._identity import (
    add_user,
    create_project,
    create_token,
    list_projects,
    list_tokens,
    list_users,
    parse_duration,
    remove_user,
    revoke_token,
    set_disabled,
    set_role,
)
from modelyard.core._keys import rotate_master_key
from modelyard.core._platform import Context, Platform
from modelyard.core._rbac import PERMISSIONS, Role

__all__ = [
    "PERMISSIONS",
    "ArtifactInfo",
    "ArtifactStore",
    "Context",
    "GcReport",
    "MetadataStore",
    "Platform",
    "Role",
    "VerifyResult",
    "add_user",
    "collect_garbage",
    "create_project",
    "create_token",
    "delete_artifact",
    "doctor",
    "get_artifact",
    "get_artifacts",
    "init_home",
    "list_artifacts",
    "list_projects",
    "list_records",
    "list_tokens",
    "list_users",
    "open_artifact",
    "parse_duration",
    "put_artifact",
    "put_artifacts",
    "remove_user",
    "revoke_token",
    "rotate_master_key",
    "set_disabled",
    "set_role",
    "verify_chain",
]
