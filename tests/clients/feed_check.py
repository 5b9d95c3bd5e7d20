"""Reads an Atom feed with feedparser and prints what a feed reader sees, as JSON:
{"bozo": bool, "bozo_exception": str, "version": str, "title": str, "entries": [...]}.
Usage: python3 feed_check.py URL"""
import json
import sys
import urllib.request

import feedparser

with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    content_type = r.headers.get("content-type", "")
    body = r.read()
d = feedparser.parse(body, response_headers={"content-type": content_type})
print(json.dumps({
    "bozo": bool(d.bozo),
    "bozo_exception": str(d.get("bozo_exception", "")),
    "version": d.version,
    "content_type": content_type,
    "title": d.feed.get("title", ""),
    "id": d.feed.get("id", ""),
    "updated": d.feed.get("updated", ""),
    "entries": [
        {
            "id": e.get("id", ""),
            "title": e.get("title", ""),
            "link": e.get("link", ""),
            "published": e.get("published", ""),
            "updated": e.get("updated", ""),
            "summary": e.get("summary", ""),
            "tags": [t.get("term") for t in e.get("tags", [])],
        }
        for e in d.entries
    ],
}))
