"""Foresight's scale-out workload on Kubernetes: several GPU pods behind one load balancer, sharing a Valkey tier.

One typed spec (`spec.WorkloadSpec`) and one pure renderer (`manifests.render`) produce the manifests; two
front ends use them: a Pulumi component (`component.Workload`, the only module that imports
pulumi_kubernetes) and a CLI (`foresight kubernetes render`) that writes the same manifests as YAML for
kubectl and GitOps users. docs/kubernetes.md explains what is rendered and why.
"""
