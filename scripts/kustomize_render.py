#!/usr/bin/env python3
"""Offline renderer for the kustomize subset that k8s/ uses (no kubectl needed).

Supported kustomization.yaml fields: resources (files, or directories holding a
kustomization.yaml), namespace, replicas, patches (strategic-merge patches given by `path` or an
inline `patch`, matched by kind and name, or by a `target` with kind/name), images (newName,
newTag, digest for the containers of pod templates). Anything else is an
error, so a new kustomize feature in k8s/ cannot be silently ignored here.

Strategic merge follows kustomize: maps merge recursively; lists of maps that carry a `name`
(containers, env, ports, volumes, volumeMounts, ...) merge item by item by name, with the patch's
items first and the remaining original items after them; other lists and scalars are replaced;
`null` deletes a key.

Usage: kustomize_render.py DIR  (prints the rendered multi-document YAML)
"""
import copy
import os
import sys

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "replicas", "patches", "images"}
# Kinds that live outside namespaces (the namespace transformer leaves them alone).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass"}
REPLICA_KINDS = {"Deployment", "StatefulSet", "ReplicaSet"}


class RenderError(Exception):
    pass


def _load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _merge_list(original, patch):
    if not all(isinstance(x, dict) and "name" in x for x in original + patch):
        return copy.deepcopy(patch)
    by_name = {x["name"]: x for x in original}
    out, used = [], set()
    for item in patch:
        name = item["name"]
        if item.get("$patch") == "delete":
            used.add(name)
            continue
        out.append(strategic_merge(by_name[name], item) if name in by_name else copy.deepcopy(item))
        used.add(name)
    out.extend(copy.deepcopy(x) for x in original if x["name"] not in used)
    return out


def strategic_merge(original, patch):
    """Returns original with patch applied (neither argument is modified)."""
    if not isinstance(original, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(original)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key in out and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = strategic_merge(out[key], value)
        elif key in out and isinstance(out[key], list) and isinstance(value, list):
            out[key] = _merge_list(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _find(resources, kind, name):
    hits = [r for r in resources
            if (kind is None or r.get("kind") == kind) and r["metadata"].get("name") == name]
    if len(hits) != 1:
        raise RenderError(f"patch target {kind}/{name}: {len(hits)} matches")
    return hits[0]


def _set_image(container, img):
    name, _, tag = container["image"].partition("@")[0].rpartition(":")
    if not name or "/" in tag:  # no tag: "registry:5000/x" or "x"
        name, tag = container["image"].partition("@")[0], ""
    if name != img["name"]:
        return
    name = img.get("newName", name)
    if "digest" in img:
        container["image"] = f"{name}@{img['digest']}"
    else:
        tag = img.get("newTag", tag)
        container["image"] = f"{name}:{tag}" if tag else name


def render(directory):
    """Returns the list of resources (dicts) that `kustomize build DIRECTORY` produces."""
    kfile = os.path.join(directory, "kustomization.yaml")
    if not os.path.exists(kfile):
        raise RenderError(f"{directory}: no kustomization.yaml")
    k = _load_docs(kfile)[0]
    unknown = set(k) - SUPPORTED
    if unknown:
        raise RenderError(f"{kfile}: unsupported fields {sorted(unknown)}")
    resources = []
    for entry in k.get("resources", []):
        path = os.path.normpath(os.path.join(directory, entry))
        resources.extend(render(path) if os.path.isdir(path) else _load_docs(path))
    for p in k.get("patches", []):
        docs = _load_docs(os.path.join(directory, p["path"])) if "path" in p else \
            [d for d in yaml.safe_load_all(p["patch"]) if d is not None]
        target = p.get("target", {})
        for doc in docs:
            kind = target.get("kind", doc.get("kind"))
            name = target.get("name", doc.get("metadata", {}).get("name"))
            i = resources.index(_find(resources, kind, name))
            merged = strategic_merge(resources[i], doc)
            merged["apiVersion"], merged["kind"] = resources[i]["apiVersion"], resources[i]["kind"]
            resources[i] = merged
    for r in k.get("replicas", []):
        hits = [x for x in resources
                if x["kind"] in REPLICA_KINDS and x["metadata"]["name"] == r["name"]]
        if not hits:
            raise RenderError(f"{kfile}: replicas for unknown workload {r['name']}")
        for x in hits:
            x.setdefault("spec", {})["replicas"] = r["count"]
    for img in k.get("images", []):
        for x in resources:
            pod = x.get("spec", {}).get("template", {}).get("spec", {})
            for ctr in pod.get("initContainers", []) + pod.get("containers", []):
                _set_image(ctr, img)
    if "namespace" in k:
        for x in resources:
            if x["kind"] not in CLUSTER_SCOPED:
                x["metadata"]["namespace"] = k["namespace"]
    return resources


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        docs = render(argv[1])
    except (RenderError, OSError, KeyError, yaml.YAMLError) as e:
        print(f"kustomize_render: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
