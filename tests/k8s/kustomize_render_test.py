#!/usr/bin/env python3
"""Unit tests of scripts/kustomize_render.py: strategic merge rules and the k8s/ overlays."""
import os
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import kustomize_render as kr  # noqa: E402


class StrategicMergeTest(unittest.TestCase):
    def test_maps_merge_and_null_deletes(self):
        out = kr.strategic_merge({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 4, "d": None}})
        self.assertEqual(out, {"a": 1, "b": {"c": 4}})

    def test_named_lists_merge_by_name_patch_items_first(self):
        original = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
        out = kr.strategic_merge({"env": original}, {"env": [{"name": "B", "value": "3"},
                                                             {"name": "C", "value": "4"}]})
        self.assertEqual(out["env"], [{"name": "B", "value": "3"}, {"name": "C", "value": "4"},
                                      {"name": "A", "value": "1"}])

    def test_delete_directive_and_plain_lists_replace(self):
        out = kr.strategic_merge({"l": [1, 2], "e": [{"name": "A"}, {"name": "B"}]},
                                 {"l": [3], "e": [{"name": "A", "$patch": "delete"}]})
        self.assertEqual(out, {"l": [3], "e": [{"name": "B"}]})

    def test_inputs_are_not_modified(self):
        original, patch = {"a": {"b": [{"name": "x", "v": 1}]}}, {"a": {"b": [{"name": "x", "v": 2}]}}
        kr.strategic_merge(original, patch)
        self.assertEqual(original["a"]["b"][0]["v"], 1)


class RenderTest(unittest.TestCase):
    def test_overlays_set_stages(self):
        for n in (2, 4, 8):
            res = kr.render(os.path.join(ROOT, "k8s", "overlays", f"stages-{n}"))
            by = {(r["kind"], r["metadata"]["name"]): r for r in res}
            self.assertEqual(by[("StatefulSet", "xkv-worker")]["spec"]["replicas"], n)
            self.assertEqual(by[("ConfigMap", "xkv-config")]["data"]["XKV_STAGES"], str(n))
            env = by[("Deployment", "xkv-coordinator")]["spec"]["template"]["spec"][
                "containers"][0]["env"]
            workers = [e["value"] for e in env if e["name"] == "XKV_WORKERS"][0].split(",")
            self.assertEqual(len(workers), n)
            self.assertTrue(workers[-1].startswith(f"xkv-worker-{n - 1}.xkv-worker."))
            self.assertTrue(all(r["metadata"].get("namespace") == "xkv"
                                for r in res if r["kind"] != "Namespace"))

    def test_images_like_kubectl(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "kustomization.yaml"), "w") as f:
                f.write(f"resources: [{os.path.join(ROOT, 'k8s', 'overlays', 'stages-2')}]\n"
                        "images:\n  - {name: xkv, newName: reg.example/xkv, newTag: v1}\n")
            images = {c["image"] for r in kr.render(d) if r["kind"] in ("Deployment", "StatefulSet")
                      for c in r["spec"]["template"]["spec"]["containers"]
                      + r["spec"]["template"]["spec"].get("initContainers", [])}
            self.assertEqual(images, {"reg.example/xkv:v1"})

    def test_unsupported_field_is_an_error(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "kustomization.yaml"), "w") as f:
                f.write("resources: []\nnamePrefix: x-\n")
            with self.assertRaises(kr.RenderError):
                kr.render(d)

    def test_patch_without_target_is_an_error(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "kustomization.yaml"), "w") as f:
                f.write("resources: []\npatches:\n  - patch: |\n      kind: ConfigMap\n"
                        "      metadata: {name: nope}\n")
            with self.assertRaises(kr.RenderError):
                kr.render(d)


if __name__ == "__main__":
    unittest.main(verbosity=2)
