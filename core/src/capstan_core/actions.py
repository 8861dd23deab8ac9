"""The one table of action names: every REST route and every gRPC method -> the action it performs.

Policies (``authz``) speak of these names. The gateway checks every /api/v1 request against this
table in one place (its ``authorize`` dependency) and shows each route's action in the OpenAPI
document (``x-capstan-action``); a route or an RPC missing here fails a test that names it.

Adding a route is one line: ``_rest("POST", "/api/v1/things", "thing:CreateThing", WRITE, "thing")``.

Scopes:
- ``tenant``: an account acts on its own tenant's objects, as its policies allow;
- ``operator``: only the operator's tenant (the install's first main account and its sub-accounts, as
  their policies allow): nodes, join tokens, the event log's quarantine;
- ``self``: any authenticated account, about itself (who am I, my own password);
- ``public``: no credentials (logging in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Access = Literal["read", "write"]
Scope = Literal["tenant", "operator", "self", "public"]
READ: Access = "read"
WRITE: Access = "write"


@dataclass(frozen=True)
class Action:
    name: str  # "<service>:<Verb><Object>", e.g. "trainer:CreateTrainingTask"
    access: Access
    resource: str  # the object type it touches: train, rsg, node, jointoken, model, account, policy, ...
    id_param: str = ""  # the path parameter naming the object, when the route acts on one
    scope: Scope = "tenant"

    @property
    def service(self) -> str:
        return self.name.split(":", 1)[0]


REST: dict[tuple[str, str], Action] = {}


def _rest(method: str, path: str, name: str, access: Access, resource: str, *, scope: Scope = "tenant") -> None:
    id_param = "id" if "{id}" in path else ""
    key = (method, "/api/v1" + path)
    if key in REST:
        raise ValueError(f"{method} {path} has two actions")
    REST[key] = Action(name, access, resource, id_param, scope)


# --- scheduler: resource groups, nodes, join tokens
_rest("POST", "/resource-groups", "scheduler:CreateResourceGroup", WRITE, "rsg")
_rest("GET", "/resource-groups", "scheduler:ListResourceGroups", READ, "rsg")
_rest("GET", "/resource-groups/{id}", "scheduler:GetResourceGroup", READ, "rsg")
_rest("PATCH", "/resource-groups/{id}", "scheduler:UpdateResourceGroup", WRITE, "rsg")
_rest("DELETE", "/resource-groups/{id}", "scheduler:DeleteResourceGroup", WRITE, "rsg")
_rest("GET", "/resource-groups/{id}/queue", "scheduler:GetQueue", READ, "rsg")
_rest("PUT", "/resource-groups/{id}/shares", "scheduler:ShareResourceGroup", WRITE, "rsg", scope="operator")
_rest("GET", "/nodes", "scheduler:ListNodes", READ, "node", scope="operator")
_rest("GET", "/nodes/health-checks", "scheduler:ListHealthChecks", READ, "node", scope="operator")
_rest("POST", "/nodes/release", "scheduler:ReleaseNodes", WRITE, "node", scope="operator")
_rest("POST", "/nodes/{id}/release", "scheduler:ReleaseNode", WRITE, "node", scope="operator")
_rest("DELETE", "/nodes/{id}", "scheduler:DeleteNode", WRITE, "node", scope="operator")
_rest("POST", "/join-tokens", "scheduler:CreateJoinToken", WRITE, "jointoken", scope="operator")
_rest("GET", "/join-tokens", "scheduler:ListJoinTokens", READ, "jointoken", scope="operator")
_rest("DELETE", "/join-tokens/{id}", "scheduler:RevokeJoinToken", WRITE, "jointoken", scope="operator")

# --- trainer: training tasks
_rest("POST", "/training-tasks", "trainer:CreateTrainingTask", WRITE, "train")
_rest("POST", "/training-tasks/batch", "trainer:CreateTrainingTasks", WRITE, "train")
_rest("GET", "/training-tasks", "trainer:ListTrainingTasks", READ, "train")
_rest("POST", "/training-tasks/price", "trainer:EstimatePrice", READ, "train")
_rest("GET", "/training-tasks/{id}", "trainer:GetTrainingTask", READ, "train")
_rest("PATCH", "/training-tasks/{id}", "trainer:UpdateTrainingTask", WRITE, "train")
_rest("DELETE", "/training-tasks/{id}", "trainer:DeleteTrainingTask", WRITE, "train")
_rest("POST", "/training-tasks/{id}/start", "trainer:StartTrainingTaskAgain", WRITE, "train")
_rest("GET", "/training-tasks/{id}/copy", "trainer:CopyTrainingTask", READ, "train")
_rest("GET", "/training-tasks/{id}/outputs", "trainer:ListOutputs", READ, "train")
_rest("GET", "/training-tasks/{id}/outputs/{path}", "trainer:DownloadOutput", READ, "train")
_rest("POST", "/training-tasks/{id}/stop", "trainer:StopTrainingTask", WRITE, "train")
_rest("GET", "/training-tasks/{id}/logs", "trainer:SearchLogs", READ, "train")
_rest("GET", "/training-tasks/{id}/events", "trainer:ListTaskEvents", READ, "train")
_rest("GET", "/training-tasks/{id}/metrics", "trainer:GetMetrics", READ, "train")
_rest("GET", "/training-tasks/{id}/checkpoints", "trainer:ListCheckpoints", READ, "train")
_rest("GET", "/training-tasks/{id}/evaluation", "trainer:GetEvaluation", READ, "train")
_rest("POST", "/training-tasks/{id}/tensorboard", "trainer:StartTensorBoard", WRITE, "train")
_rest("GET", "/training-tasks/{id}/tensorboard/{path}", "trainer:ViewTensorBoard", READ, "train")
_rest("GET", "/images", "trainer:ListImages", READ, "image")

# --- registry: models
_rest("POST", "/models", "registry:CreateModel", WRITE, "model")
_rest("GET", "/models", "registry:ListModels", READ, "model")
_rest("GET", "/models/{id}", "registry:GetModel", READ, "model")
_rest("DELETE", "/models/{id}", "registry:DeleteModel", WRITE, "model")
_rest("POST", "/models/{id}/versions", "registry:PublishVersion", WRITE, "model")
_rest("GET", "/models/{id}/versions", "registry:ListVersions", READ, "model")
_rest("GET", "/models/{id}/versions/{version}", "registry:GetVersion", READ, "model")
_rest("DELETE", "/models/{id}/versions/{version}", "registry:DeleteVersion", WRITE, "model")
_rest("GET", "/models/{id}/versions/{version}/files/{path}", "registry:DownloadFile", READ, "model")

# --- gateway: the event log's quarantine, accounts, keys, policies, sessions, audit
_rest("GET", "/admin/quarantine", "admin:ListQuarantine", READ, "admin", scope="operator")
_rest("POST", "/login", "gateway:Login", WRITE, "session", scope="public")
_rest("GET", "/whoami", "gateway:WhoAmI", READ, "account", scope="self")
_rest("POST", "/accounts", "gateway:CreateAccount", WRITE, "account")
_rest("GET", "/accounts", "gateway:ListAccounts", READ, "account")
_rest("GET", "/accounts/{id}", "gateway:GetAccount", READ, "account")
_rest("PATCH", "/accounts/{id}", "gateway:UpdateAccount", WRITE, "account")
_rest("DELETE", "/accounts/{id}", "gateway:DeleteAccount", WRITE, "account")
_rest("PUT", "/accounts/{id}/password", "gateway:SetPassword", WRITE, "account")
_rest("PUT", "/accounts/{id}/policies", "gateway:AttachPolicies", WRITE, "account")
_rest("POST", "/accounts/{id}/keys", "gateway:CreateKey", WRITE, "account")
_rest("GET", "/accounts/{id}/keys", "gateway:ListKeys", READ, "account")
_rest("PATCH", "/keys/{id}", "gateway:UpdateKey", WRITE, "key")
_rest("DELETE", "/keys/{id}", "gateway:DeleteKey", WRITE, "key")
_rest("POST", "/policies", "gateway:CreatePolicy", WRITE, "policy")
_rest("GET", "/policies", "gateway:ListPolicies", READ, "policy")
_rest("GET", "/policies/{id}", "gateway:GetPolicy", READ, "policy")
_rest("DELETE", "/policies/{id}", "gateway:DeletePolicy", WRITE, "policy")
_rest("GET", "/audit", "gateway:QueryAudit", READ, "audit")
_rest("GET", "/audit/events", "gateway:QueryEventLog", READ, "audit")
_rest("GET", "/access", "gateway:ListObjectAccess", READ, "account")

# --- inference: online services (#9)
_rest("POST", "/services", "inference:CreateService", WRITE, "service")
_rest("GET", "/services", "inference:ListServices", READ, "service")
_rest("GET", "/services/{id}", "inference:GetService", READ, "service")
_rest("PATCH", "/services/{id}", "inference:UpdateService", WRITE, "service")
_rest("DELETE", "/services/{id}", "inference:DeleteService", WRITE, "service")
_rest("POST", "/services/{id}/stop", "inference:StopService", WRITE, "service")
_rest("POST", "/services/{id}/start", "inference:StartService", WRITE, "service")
_rest("POST", "/services/{id}/versions", "inference:AddVersion", WRITE, "service")
_rest("PATCH", "/services/{id}/versions/{version_id}", "inference:UpdateVersion", WRITE, "service")
_rest("DELETE", "/services/{id}/versions/{version_id}", "inference:DeleteVersion", WRITE, "service")
_rest("POST", "/services/{id}/scale", "inference:ScaleVersion", WRITE, "service")
_rest("PUT", "/services/{id}/autoscaling", "inference:SetAutoscaling", WRITE, "service")
_rest("PUT", "/services/{id}/weights", "inference:SetWeights", WRITE, "service")
_rest("POST", "/services/{id}/instances/{instance_id}/isolate", "inference:IsolateReplica", WRITE, "service")
_rest("POST", "/services/{id}/instances/{instance_id}/unisolate", "inference:UnisolateReplica", WRITE, "service")
_rest("POST", "/services/{id}/instances/{instance_id}/rebuild", "inference:RebuildReplica", WRITE, "service")
_rest("GET", "/services/{id}/keys", "inference:ListServiceKeys", READ, "service")
_rest("POST", "/services/{id}/keys", "inference:CreateKey", WRITE, "service")
_rest("PATCH", "/services/{id}/keys/{key_id}", "inference:UpdateKey", WRITE, "service")
_rest("DELETE", "/services/{id}/keys/{key_id}", "inference:DeleteKey", WRITE, "service")
_rest("GET", "/services/{id}/records", "inference:ListServiceRecords", READ, "service")
_rest("GET", "/services/{id}/events", "inference:ListServiceEvents", READ, "service")
_rest("GET", "/services/{id}/logs", "inference:GetServiceLogs", READ, "service")
_rest("GET", "/services/{id}/metrics", "inference:GetServiceMetrics", READ, "service")  # served by the gateway

ACTION_NAMES: frozenset[str] = frozenset(a.name for a in REST.values())
READ_ACTIONS: frozenset[str] = frozenset(a.name for a in REST.values() if a.access == READ)


def rest_action(method: str, path_template: str) -> Action | None:
    return REST.get((method.upper(), _normal(path_template)))


def _normal(template: str) -> str:
    """``{path:path}`` and ``{version:int}`` are ``{path}``, ``{version}`` in this table."""
    out, i = [], 0
    while i < len(template):
        j = template.find("{", i)
        if j < 0:
            out.append(template[i:])
            break
        k = template.index("}", j)
        out.append(template[i:j] + "{" + template[j + 1 : k].split(":", 1)[0] + "}")
        i = k + 1
    return "".join(out)


# --- gRPC: every method of every service -> the action it performs. The services trust the gateway's
# check (the gateway acts for users; see identity), and check a user's tenant on every object they hand
# out; calls from the platform itself (agents, other services) are governed by each service's Access table.
GRPC_INTERNAL = "platform:Internal"  # agent <-> service and service <-> service plumbing, never a user's


def grpc_action(method: str) -> str:
    """``/capstan.v1.Trainer/CreateTrainingTask`` -> ``trainer:CreateTrainingTask`` (the REST route that
    calls it carries the same name)."""
    service, _, name = method.lstrip("/").partition("/")
    return f"{service.rsplit('.', 1)[-1].lower()}:{name}"
