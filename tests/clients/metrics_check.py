"""Scrapes a Prometheus endpoint and parses it with the official Python client's text
parser (the format Prometheus itself reads); prints the families as JSON:
{"content_type": str, "families": {name: {"type": str, "samples": [[name, labels, value]]}}}.
Usage: python3 metrics_check.py URL"""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    content_type = r.headers.get("content-type", "")
    text = r.read().decode("utf-8")
families = {}
for f in text_string_to_metric_families(text):
    families[f.name] = {
        "type": f.type,
        "samples": [[s.name, s.labels, s.value] for s in f.samples],
    }
print(json.dumps({"content_type": content_type, "families": families}))
