"""Every Python snippet marked `# prism-example` in the README runs against a live server."""
from __future__ import annotations

import json
import re
from pathlib import Path



README = Path(__file__).resolve().parents[2] / "README.md"


def snippets() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if b.startswith("# prism-example")]


def test_readme_has_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_api_example_runs(prism_server):
    found = snippets()
    assert found, "the README lost its API example"
    for code in found:
        code = code.replace('BASE = "http://127.0.0.1:8000"', f'BASE = "{prism_server.url}"')
        exec(compile(code, "README.md", "exec"), {})


def curl_json_examples() -> list[tuple[str, dict]]:
    """`curl -s localhost:8000/PATH -d 'JSON'` examples in the README, as (path, body)."""
    text = README.read_text()
    out = []
    for m in re.finditer(r"curl -s localhost:8000(\S+) -d '(.*?)'", text, flags=re.S):
        out.append((m.group(1), json.loads(m.group(2))))
    return out


def test_readme_curl_examples_run(prism_server, products, photos):
    examples = curl_json_examples()
    assert len(examples) >= 2
    for path, body in examples:
        r = prism_server.client.post(path, json=body)
        assert r.status_code == 200, (path, r.text)
        assert r.json()["hits"], path
