"""Run the real Pulumi program (`stacks/`, as `pulumi up` runs it) under `pulumi.runtime.set_mocks`.

`run_program(config)` sets the stack config, executes `stacks/__main__.py`, waits for every registration, and
returns a `MockRun`: each registered resource (type, name, inputs as the engine saw them, parent) and each
stack output (value and whether it is secret). Invokes are answered by `fake_cloud_invoke`, a small fake AWS.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import runpy
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc, settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await
from pulumi_policy.deserialize import SPECIAL_SECRET_SIG, SPECIAL_SIG_KEY

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "stacks"
PROJECT = "foresight"
STACK = "aws-test"
ACCOUNT = "123456789012"
REGION = "us-east-1"
AMI = "ami-0abcdef1234567890"
BYO_VPC_CIDR = "10.20.0.0/16"
GCP_PROJECT = "acme-cache"
GCP_PROJECT_NUMBER = "987654321098"
GCP_REGION = "us-central1"
GCP_ZONES = [f"{GCP_REGION}-{suffix}" for suffix in "fcba"]
GCP_ZONES_WITHOUT_GPU = {f"{GCP_REGION}-b"}
GCP_IMAGE = ("https://www.googleapis.com/compute/v1/projects/ubuntu-os-accelerator-images/global/images/"
             "ubuntu-accelerator-2204-amd64-with-nvidia-580-v20261101")
GCP_EXTERNAL_ADDRESS = "198.51.100.7"
GCP_INTERNAL_ADDRESS = "10.42.0.9"
BYO_SUBNET_CIDR = "10.30.0.0/20"
AZURE_SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"
AZURE_TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
AZURE_LOCATION = "westeurope"
AZURE_NODE_PRINCIPAL = "9f8e7d6c-5b4a-3928-1706-f5e4d3c2b1a0"
AZURE_NODE_CLIENT = "12121212-3434-5656-7878-909090909090"
AZURE_DES_PRINCIPAL = "d15d15d1-5d15-d15d-15d1-5d15d15d15d1"
AZURE_INTERNAL_ADDRESS = "10.42.0.4"

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
AUTOSCALING_GROUP = "aws:autoscaling/group:Group"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS_RULE = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
LOAD_BALANCER = "aws:lb/loadBalancer:LoadBalancer"
KMS_KEY = "aws:kms/key:Key"
PKI_ROOT_CERT = "vault:pkiSecret/secretBackendRootCert:SecretBackendRootCert"
PKI_ROLE = "vault:generic/endpoint:Endpoint"  # the endpoint role, written as the PKI API's JSON (stacks/tls.py)
PKI_DEFAULT_ISSUER = "vault:pkiSecret/secretBackendConfigIssuers:SecretBackendConfigIssuers"

# The acceptance baseline: only the required config.
REQUIRED_CONFIG = {
    "foresight:cloud": "aws",
    "aws:region": REGION,
    "foresight:allowedCidrs": '["203.0.113.0/24"]',
    "foresight:vaultAddress": "https://vault.example.test:8200",
}

# The Google Cloud baseline: only the required config, and the provider's project.
GCP_REQUIRED_CONFIG = {
    "foresight:cloud": "gcp",
    "gcp:region": GCP_REGION,
    "gcp:project": GCP_PROJECT,
    "foresight:allowedCidrs": '["203.0.113.0/24"]',
    "foresight:vaultAddress": "https://vault.example.test:8200",
}

# The Azure baseline: only the required config.
AZURE_REQUIRED_CONFIG = {
    "foresight:cloud": "azure",
    "azure-native:location": AZURE_LOCATION,
    "foresight:allowedCidrs": '["203.0.113.0/24"]',
    "foresight:vaultAddress": "https://vault.example.test:8200",
}



def fake_pem(kind: str, name: str) -> str:
    return f"-----BEGIN {kind}-----\nMOCK{name.replace('-', '')}\n-----END {kind}-----\n"


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SPECIAL_SIG_KEY) == SPECIAL_SECRET_SIG


def plain(value: Any) -> Any:
    """The value with secret wrappers removed, recursively."""
    if is_secret(value):
        return plain(value["value"])
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


@dataclass
class Registered:
    type: str
    name: str
    urn: str
    parent: str
    provider: str
    inputs: dict[str, Any]
    struct: Any  # the inputs as the engine sends them to a policy pack (a protobuf Struct)
    dependencies: list[str] = field(default_factory=list)  # the URNs it explicitly waits for (depends_on)
    custom_timeouts: dict[str, str] = field(default_factory=dict)  # create/update/delete, when the program sets them
    retain_on_delete: bool = False  # removed from the program, it leaves the state but stays in the cloud

    @property
    def props(self) -> dict[str, Any]:
        return dict(plain(self.inputs))


@dataclass
class StackOutput:
    value: Any
    secret: bool


@dataclass
class MockRun:
    resources: list[Registered]
    outputs: dict[str, StackOutput]
    invokes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Registered]:
        return [resource for resource in self.resources if resource.type == type_]

    def one(self, type_: str) -> Registered:
        found = self.of_type(type_)
        assert len(found) == 1, f"expected one {type_}, found {[r.name for r in found]}"
        return found[0]

    def named(self, name: str) -> Registered:
        return next(resource for resource in self.resources if resource.name == name)

    def __iter__(self) -> Iterator[Registered]:
        return iter(self.resources)


def _resource_id(type_: str, name: str) -> str:
    if type_.startswith("azure-native:"):
        provider, kind = type_.split(":")[1:]
        group = f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/foresight-rg"
        return f"{group}/providers/Microsoft.{provider}/{kind}/{name}"
    if type_ == "gcp:kms/cryptoKey:CryptoKey":
        return f"projects/{GCP_PROJECT}/locations/{GCP_REGION}/keyRings/foresight-keyring-1a2b3c4/cryptoKeys/{name}"
    return f"{name}-id"


def _gcp_outputs(type_: str, name: str, state: dict[str, Any]) -> dict[str, Any]:
    link = f"https://www.googleapis.com/compute/v1/projects/{GCP_PROJECT}"
    if type_ == "gcp:serviceaccount/account:Account":
        state["email"] = f"{state['accountId']}@{GCP_PROJECT}.iam.gserviceaccount.com"
    elif type_ == "gcp:compute/address:Address":
        state["address"] = GCP_EXTERNAL_ADDRESS if state.get("addressType") == "EXTERNAL" else GCP_INTERNAL_ADDRESS
    elif type_ == "gcp:compute/network:Network":
        state["selfLink"] = f"{link}/global/networks/{name}-1a2b3c4"
    elif type_ == "gcp:compute/subnetwork:Subnetwork":
        state["selfLink"] = f"{link}/regions/{GCP_REGION}/subnetworks/{name}-1a2b3c4"
    elif type_ == "gcp:compute/instanceTemplate:InstanceTemplate":
        state["selfLinkUnique"] = f"{link}/global/instanceTemplates/{name}-1a2b3c4?uniqueId=42"
    elif type_ == "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager":
        state["name"] = f"{name}-1a2b3c4"
        state["instanceGroup"] = f"{link}/regions/{GCP_REGION}/instanceGroups/{state['name']}"
    return _gcp_scale_out_outputs(type_, name, state)


def _azure_outputs(type_: str, name: str, state: dict[str, Any]) -> dict[str, Any]:
    kind = type_.rsplit(":", 1)[1]
    state.setdefault("name", f"{name}1a2b3c4")
    if kind == "UserAssignedIdentity":
        state.update(principalId=AZURE_NODE_PRINCIPAL, clientId=AZURE_NODE_CLIENT, tenantId=AZURE_TENANT)
    elif kind == "Vault":
        state["name"] = state["vaultName"]
    elif kind == "Key":
        state["keyUri"] = f"https://{state['vaultName']}.vault.azure.net/keys/{name}"
        state["keyUriWithVersion"] = f"{state['keyUri']}/0123456789abcdef0123456789abcdef"
    elif kind == "DiskEncryptionSet":
        state["identity"] = {"type": "SystemAssigned", "principalId": AZURE_DES_PRINCIPAL, "tenantId": AZURE_TENANT}
    elif kind == "PublicIPAddress":
        state["ipAddress"] = "198.51.100.9"
        label = (state.get("dnsSettings") or {}).get("domainNameLabel")
        if label:
            state["dnsSettings"] = {**state["dnsSettings"], "fqdn": f"{label}.{AZURE_LOCATION}.cloudapp.azure.com"}
    elif kind == "LoadBalancer":
        state["frontendIPConfigurations"] = [
            {**frontend, "privateIPAddress": None if frontend.get("publicIPAddress") else AZURE_INTERNAL_ADDRESS}
            for frontend in state["frontendIPConfigurations"]
        ]
    elif kind == "VirtualMachineScaleSet":  # identities go in as a list of ids and come back as a map
        ids = state["identity"]["userAssignedIdentities"]
        state["identity"] = {**state["identity"], "userAssignedIdentities": {key: {} for key in ids}}
    return _azure_scale_out_outputs(kind, name, state)


def _outputs_for(type_: str, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = dict(inputs)
    if type_.startswith("gcp:"):
        return _gcp_outputs(type_, name, state)
    if type_.startswith("azure-native:"):
        return _azure_outputs(type_, name, state)
    if type_ == "kubernetes:core/v1:Service" and pulumi.runtime.get_config("foresight:cloud") == "gcp":
        return _gke_service_outputs(state)
    if type_ == "kubernetes:core/v1:Service" and pulumi.runtime.get_config("foresight:cloud") == "azure":
        return _aks_service_outputs(state)
    service = type_.split(":")[1].split("/")[0]
    state.setdefault("arn", f"arn:aws:{service}:{REGION}:{ACCOUNT}:{name}")
    if type_ == "aws:iam/role:Role":
        state["name"] = f"{name}-a1b2c3d"
        state["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{state['name']}"
    elif type_ == "aws:iam/instanceProfile:InstanceProfile":
        state["arn"] = f"arn:aws:iam::{ACCOUNT}:instance-profile/{name}-a1b2c3d"
    elif type_ == "aws:kms/key:Key":
        state["keyId"] = "1234abcd-12ab-34cd-56ef-1234567890ab"
        state["arn"] = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{state['keyId']}"
    elif type_ == "aws:lb/loadBalancer:LoadBalancer":
        state["dnsName"] = f"{name}-0123456789abcdef.elb.{REGION}.amazonaws.com"
    elif type_ == "aws:ec2/launchTemplate:LaunchTemplate":
        state["latestVersion"] = 1
    elif type_ == "aws:autoscaling/group:Group":
        state["name"] = f"{name}-a1b2c3d"
    elif type_ == "aws:ec2/keyPair:KeyPair":
        state["keyName"] = f"{name}-a1b2c3d"
    elif type_ == PKI_ROOT_CERT:  # what Vault answers root/generate/internal: the certificate, never a key
        state["certificate"] = state["issuingCa"] = fake_pem("CERTIFICATE", name)
        state["issuerId"] = f"issuer-{name}"
        state["serialNumber"] = "3a:5f:00:01"
    _aws_scale_out_outputs(type_, name, state)
    return state


def fake_cloud_invoke(token: str, args: Mapping[str, Any]) -> dict[str, Any]:
    if token == "aws:index/getPartition:getPartition":
        return {"id": "aws", "partition": "aws", "dnsSuffix": "amazonaws.com", "reverseDnsPrefix": "com.amazonaws"}
    if token == "aws:index/getCallerIdentity:getCallerIdentity":
        return {"id": ACCOUNT, "accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/deployer", "userId": "AIDA"}
    if token == "aws:ssm/getParameter:getParameter":
        return {"id": args["name"], "name": args["name"], "type": "String", "value": AMI, "insecureValue": AMI}
    if token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
        zones = [f"{REGION}{suffix}" for suffix in "cba"]
        return {"id": REGION, "instanceTypes": ["g6.xlarge"] * 3, "locations": zones, "locationTypes": ["az"] * 3}
    if token == "aws:ec2/getVpc:getVpc":
        return {"id": args["id"], "cidrBlock": BYO_VPC_CIDR}
    if token == "aws:iam/getSessionContext:getSessionContext":
        return _fake_aws_session_context(args)
    if token.startswith("gcp:"):
        return _fake_gcp_invoke(token, args)
    if token == "azure-native:authorization:getClientConfig":
        return {
            "clientId": "deployer",
            "objectId": "deployer-object",
            "subscriptionId": AZURE_SUBSCRIPTION,
            "tenantId": AZURE_TENANT,
        }
    if token == "azure-native:network:getSubnet":
        return {"id": f"{args['virtualNetworkName']}/{args['subnetName']}", "addressPrefix": BYO_SUBNET_CIDR}
    if token == "azure-native:containerservice:listManagedClusterUserCredentials":
        return _fake_aks_user_credentials(args)
    raise AssertionError(f"the fake cloud has no answer for invoke {token}")


OTHER_SUBSCRIPTION = "99999999-8888-7777-6666-555555555555"


def in_subscription(subscription_id: str) -> Callable[[str, Mapping[str, Any]], dict[str, Any]]:
    """The fake cloud, with the Azure deployer signed in to another subscription."""

    def invoke(token: str, args: Mapping[str, Any]) -> dict[str, Any]:
        answer = fake_cloud_invoke(token, args)
        if token == "azure-native:authorization:getClientConfig":
            answer = {**answer, "subscriptionId": subscription_id}
        return answer

    return invoke


def _fake_gcp_invoke(token: str, args: Mapping[str, Any]) -> dict[str, Any]:
    if token == "gcp:organizations/getProject:getProject":
        return {"id": f"projects/{GCP_PROJECT}", "projectId": GCP_PROJECT, "number": GCP_PROJECT_NUMBER}
    if token == "gcp:compute/getZones:getZones":
        return {"id": args["region"], "names": [zone for zone in GCP_ZONES if zone.startswith(args["region"])]}
    if token == "gcp:compute/getMachineTypes:getMachineTypes":
        wanted = args["filter"].removeprefix("name = ")
        offered = args["zone"] not in GCP_ZONES_WITHOUT_GPU and wanted.startswith(("g2-", "a2-", "a3-"))
        machine = {"name": wanted, "guestCpus": 4, "accelerators": _gcp_accelerators(wanted)}
        return {"id": args["zone"], "machineTypes": [machine] if offered else []}
    if token == "gcp:compute/getImage:getImage":
        return {"id": GCP_IMAGE, "selfLink": GCP_IMAGE, "family": args["family"]}
    if token == "gcp:compute/getSubnetwork:getSubnetwork":
        name = args.get("name") or args["selfLink"].rsplit("/", 1)[1]
        link = f"https://www.googleapis.com/compute/v1/projects/{GCP_PROJECT}/regions/{GCP_REGION}/subnetworks/{name}"
        return {"id": link, "selfLink": link, "ipCidrRange": BYO_SUBNET_CIDR, "name": name}
    raise AssertionError(f"the fake cloud has no answer for invoke {token}")


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self, invoke: Callable[[str, Mapping[str, Any]], dict[str, Any]]) -> None:
        self.invoke = invoke
        self.invokes: list[tuple[str, dict[str, Any]]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        return _resource_id(args.typ, args.name), _outputs_for(args.typ, args.name, args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        self.invokes.append((args.token, dict(args.args)))
        return self.invoke(args.token, args.args), []


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, also keeping each registration's inputs, parent and dependencies in order."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registered: list[Registered] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
            timeouts = request.customTimeouts
            self.registered.append(
                Registered(
                    request.type, request.name, response.urn, request.parent, request.provider, inputs, request.object,
                    list(request.dependencies),
                    {kind: value for kind in ("create", "update", "delete") if (value := getattr(timeouts, kind))},
                    request.retainOnDelete,
                )
            )
        return response


def _execute_program() -> None:
    runpy.run_path(str(PROGRAM), run_name="__main__")


def run_program(
    config: Mapping[str, str],
    secret_keys: tuple[str, ...] = (),
    invoke: Callable[[str, Mapping[str, Any]], dict[str, Any]] = fake_cloud_invoke,
    stack: str = STACK,
) -> MockRun:
    """Execute stacks/__main__.py as the stack `stack` with `config`; raise what the program raises."""
    # Pulumi's runtime asks for the thread's current loop; an async test run earlier may have closed it.
    asyncio.set_event_loop(asyncio.new_event_loop())
    settings.ROOT.set(None)
    pulumi.runtime.set_all_config(dict(config), list(secret_keys))
    mocks = RecordingMocks(invoke)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    # A run that failed inside an apply leaves its tasks behind; the next run would wait for them forever (what
    # pulumi.runtime.test clears too).
    settings.SETTINGS.rpc_manager.clear()
    settings.SETTINGS.outputs.clear()
    root = settings.get_root_resource()
    saved_path = list(sys.path)
    try:
        _sync_await(run_pulumi_func(_execute_program))
    finally:
        sys.path[:] = saved_path
    assert root is not None
    outputs: dict[str, StackOutput] = {}
    for name, value in root.outputs.items():  # type: ignore[attr-defined]
        output = pulumi.Output.from_input(value)
        outputs[name] = StackOutput(_sync_await(output.future()), bool(_sync_await(output.is_secret())))
    return MockRun(resources=monitor.registered, outputs=outputs, invokes=mocks.invokes)


def user_data(run: MockRun) -> str:
    """The launch template's cloud-init document, decoded (base64, then gzip)."""
    return gzip.decompress(base64.b64decode(run.one(LAUNCH_TEMPLATE).props["userData"])).decode()


# --- Azure scale-out (AKS, Azure Cache for Redis): stacks/azure/scale_out.py ----------------------------------
AZURE_POD_PRINCIPAL = "70d5a1b2-c3d4-4e5f-8a9b-0c1d2e3f4a5b"
AZURE_POD_CLIENT = "c11e0000-aaaa-4bbb-8ccc-dddddddddddd"
AZURE_CLUSTER_PRINCIPAL = "c1a5e7e2-1111-4222-8333-444455556666"
AZURE_OIDC_ISSUER = f"https://{AZURE_LOCATION}.oic.prod-aks.azure.com/{AZURE_TENANT}/0f1e2d3c-4b5a-6978-8a9b-acbdcedf0123/"
# What AKS returns for an Entra ID cluster's user credentials in the exec format: the API server and its CA, and
# a kubelogin invocation; no client certificate, key or token.
AZURE_USER_KUBECONFIG = f"""apiVersion: v1
kind: Config
clusters:
- name: foresight-aks
  cluster:
    certificate-authority-data: TU9DS0NB
    server: https://foresight-aks-1a2b3c4d.hcp.{AZURE_LOCATION}.azmk8s.io:443
contexts:
- name: foresight-aks
  context: {{cluster: foresight-aks, user: clusterUser_foresight-rg_foresight-aks}}
current-context: foresight-aks
users:
- name: clusterUser_foresight-rg_foresight-aks
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: kubelogin
      args: [get-token, --environment, AzurePublicCloud, --server-id, 6dae42f8-4368-4678-94ff-3960e28e3630,
             --client-id, 80faf920-1908-4b52-b5ef-a8e7bedfc67a, --tenant-id, {AZURE_TENANT}, --login, devicecode]
      provideClusterInfo: false
"""


def _azure_scale_out_outputs(kind: str, name: str, state: dict[str, Any]) -> dict[str, Any]:
    if kind == "UserAssignedIdentity" and name.endswith("-pods"):
        state.update(principalId=AZURE_POD_PRINCIPAL, clientId=AZURE_POD_CLIENT)
    elif kind == "UserAssignedIdentity" and name.endswith("-control-plane"):
        state.update(principalId=AZURE_CLUSTER_PRINCIPAL, clientId="c0c0c0c0-1111-4222-8333-444455556666")
    elif kind == "ManagedCluster":
        state["oidcIssuerProfile"] = {**state.get("oidcIssuerProfile", {}), "issuerURL": AZURE_OIDC_ISSUER}
        ids = state["identity"]["userAssignedIdentities"]  # a list of ids in, a map back, as on a scale set
        state["identity"] = {**state["identity"], "userAssignedIdentities": {key: {} for key in ids}}
    elif kind == "Redis":
        state.update(hostName=f"{state['name']}.redis.cache.windows.net", sslPort=6380, port=6379)
    return state


AZURE_LB_ADDRESS = "198.51.100.20"
AZURE_INTERNAL_LB_ADDRESS = "10.42.0.40"


def _aks_service_outputs(state: dict[str, Any]) -> dict[str, Any]:
    """AKS gives a LoadBalancer Service a public address, or one in the subnet with the internal annotation."""
    if state.get("spec", {}).get("type") == "LoadBalancer":
        annotations = state.get("metadata", {}).get("annotations") or {}
        internal = annotations.get("service.beta.kubernetes.io/azure-load-balancer-internal") == "true"
        address = AZURE_INTERNAL_LB_ADDRESS if internal else AZURE_LB_ADDRESS
        state["status"] = {"loadBalancer": {"ingress": [{"ip": address}]}}
    return state


def _fake_aks_user_credentials(args: Mapping[str, Any]) -> dict[str, Any]:
    assert args.get("format") == "exec", "an Entra ID cluster's credentials in the exec (kubelogin) format"
    value = base64.b64encode(AZURE_USER_KUBECONFIG.encode()).decode()
    return {"kubeconfigs": [{"name": "clusterUser", "value": value}]}


# --- Google Cloud scale-out (GKE, Memorystore for Valkey): stacks/gcp/scale_out.py ------------------------------
GCP_CLUSTER_ENDPOINT = "34.118.0.10"
GCP_CLUSTER_CA = base64.b64encode(b"MOCK GKE CLUSTER CA").decode()
GCP_LB_ADDRESS = "198.51.100.20"
GCP_TIER_ADDRESS = "10.42.0.20"
GCP_TIER_CA = "-----BEGIN CERTIFICATE-----\nMOCKMEMORYSTORECA\n-----END CERTIFICATE-----"
# What Compute Engine's machine types report as their GPUs (the g2 family carries L4s, one per 4 to 32 vCPUs).
GCP_MACHINE_ACCELERATORS = {"g2-": "nvidia-l4", "a2-highgpu": "nvidia-tesla-a100", "a3-highgpu": "nvidia-h100-80gb",
                            "a3-ultragpu": "nvidia-h200-141gb"}


def _gcp_accelerators(machine_type: str) -> list[dict[str, Any]]:
    return [
        {"guestAcceleratorType": gpu, "guestAcceleratorCount": 1}
        for prefix, gpu in GCP_MACHINE_ACCELERATORS.items()
        if machine_type.startswith(prefix)
    ]


def _gcp_scale_out_outputs(type_: str, name: str, state: dict[str, Any]) -> dict[str, Any]:
    if type_ == "gcp:serviceaccount/account:Account":
        state["name"] = f"projects/{GCP_PROJECT}/serviceAccounts/{state['email']}"
    elif type_ == "gcp:container/cluster:Cluster":
        state.update(name=f"{name}-1a2b3c4", endpoint=GCP_CLUSTER_ENDPOINT)
        state["masterAuth"] = {**state.get("masterAuth", {}), "clusterCaCertificate": GCP_CLUSTER_CA}
    elif type_ == "gcp:memorystore/instance:Instance":
        connections = [
            {"pscAutoConnection": {"connectionType": kind, "ipAddress": address, "port": 6379}}
            for kind, address in (
                ("CONNECTION_TYPE_PRIMARY", GCP_TIER_ADDRESS),
                ("CONNECTION_TYPE_READER", "10.42.0.21"),
            )
        ]
        state["endpoints"] = [{"connections": connections}]
        state["managedServerCas"] = [{"caCerts": [{"certificates": [GCP_TIER_CA]}]}]
    return state


def _gke_service_outputs(state: dict[str, Any]) -> dict[str, Any]:
    """GKE gives a LoadBalancer Service an IP address (external, or internal with the Internal annotation)."""
    if state.get("spec", {}).get("type") == "LoadBalancer":
        internal = "Internal" in (state.get("metadata", {}).get("annotations") or {}).values()
        state["status"] = {"loadBalancer": {"ingress": [{"ip": "10.42.0.30" if internal else GCP_LB_ADDRESS}]}}
    return state


# --- AWS scale-out (EKS, ElastiCache): stacks/aws/scale_out.py --------------------------------------------------
EKS_OIDC_ISSUER = f"https://oidc.eks.{REGION}.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF"
EKS_ENDPOINT = "https://0123456789ABCDEF0123456789ABCDEF.gr7.us-east-1.eks.amazonaws.com"
EKS_CLUSTER_SECURITY_GROUP = "sg-0c1u5te7000000000"
EKS_LB_HOSTNAME = f"a0123456789abcdef0123456789abcde-0123456789abcdef.elb.{REGION}.amazonaws.com"
ELASTICACHE_PRIMARY = "master.foresight-aws-test.abc123.use1.cache.amazonaws.com"
AWS_NLB_ANNOTATION = "service.beta.kubernetes.io/aws-load-balancer-type"


def _aws_scale_out_outputs(type_: str, name: str, state: dict[str, Any]) -> None:
    if type_ == "aws:eks/cluster:Cluster":
        state["identities"] = [{"oidcs": [{"issuer": EKS_OIDC_ISSUER}]}]
        state["endpoint"] = EKS_ENDPOINT
        state["certificateAuthority"] = {"data": base64.b64encode(b"MOCK EKS CA").decode()}
        state["vpcConfig"] = {**state["vpcConfig"], "clusterSecurityGroupId": EKS_CLUSTER_SECURITY_GROUP}
        state["arn"] = f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/{state['name']}"
    elif type_ == "aws:iam/openIdConnectProvider:OpenIdConnectProvider":
        state["arn"] = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{state['url'].removeprefix('https://')}"
    elif type_ == "aws:elasticache/replicationGroup:ReplicationGroup":
        state["primaryEndpointAddress"] = ELASTICACHE_PRIMARY
        state["arn"] = f"arn:aws:elasticache:{REGION}:{ACCOUNT}:replicationgroup:{state['replicationGroupId']}"
    elif type_ == "aws:elasticache/user:User":
        state["arn"] = f"arn:aws:elasticache:{REGION}:{ACCOUNT}:user:{state['userId']}"
    elif type_ in ("aws:elasticache/subnetGroup:SubnetGroup", "aws:elasticache/parameterGroup:ParameterGroup"):
        state.setdefault("name", f"{name}-a1b2c3d")
    elif type_ == "kubernetes:core/v1:Service" and AWS_NLB_ANNOTATION in (state["metadata"].get("annotations") or {}):
        state["status"] = {"loadBalancer": {"ingress": [{"hostname": EKS_LB_HOSTNAME}]}}


def _fake_aws_session_context(args: Mapping[str, Any]) -> dict[str, Any]:
    """IAM's reading of a caller ARN: an assumed-role session's issuer is the role (path included)."""
    arn = args["arn"]
    issuer = arn
    if ":assumed-role/" in arn:
        head, _, session = arn.partition(":assumed-role/")
        issuer = f"arn:aws:iam::{head.rsplit(':', 1)[1]}:role/{session.split('/')[0]}"
    return {"id": arn, "arn": arn, "issuerArn": issuer, "issuerId": "AROA", "issuerName": issuer.rsplit("/", 1)[-1]}


def pki_role(run: MockRun) -> dict[str, Any]:
    """The endpoint role's settings as the stack writes them to `<pki mount>/roles/<role>` (snake_case API names)."""
    settings: dict[str, Any] = json.loads(run.one(PKI_ROLE).props["dataJson"])
    return settings
