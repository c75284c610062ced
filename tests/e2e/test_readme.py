"""Every Python snippet marked `# prism-example` in the README runs against a live server."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

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
    assert any("grpc://" in code for code in found), "the README lost its gRPC example"
    for code in found:
        exec(compile(aimed(code, prism_server.url, prism_server.grpc_target), "README.md", "exec"), {})


def aimed(code: str, url: str, grpc_target: str) -> str:
    """A README snippet pointed at the test's server; one that would still reach the default ports (8000, 9000),
    where another prism may be serving on this machine, is refused instead of run."""
    code = code.replace('BASE = "http://127.0.0.1:8000"', f'BASE = "{url}"')
    code = code.replace('"grpc://127.0.0.1:9000"', f'"grpc://{grpc_target}"')
    left = [ln for ln in code.splitlines() if re.search(r"(127\.0\.0\.1|localhost|0\.0\.0\.0):(8000|9000)\b",
                                                        ln.split("#", 1)[0])]
    assert not left, f"a README snippet still aims at a default port: {left}"
    return code


def test_every_readme_snippet_is_aimed_at_the_test_server():
    """Found by the issue 27 review: the snippets were pointed at the server by an exact text replace; a README that
    spelt its address differently would have sent them to whatever answers on port 8000 here."""
    for code in snippets():
        aimed(code, "http://h:1", "h:2")  # refuses a snippet that would still reach a default port
    with pytest.raises(AssertionError, match="default port"):
        aimed('BASE = "http://localhost:8000"\n', "http://h:1", "h:2")
    with pytest.raises(AssertionError, match="default port"):
        aimed('PrismClient("grpc://localhost:9000")\n', "http://h:1", "h:2")


def curl_json_examples() -> list[tuple[str, str, dict]]:
    """`curl -s localhost:8000/PATH [-H 'HEADER'] -d 'JSON'` examples in the README, as (path, header, body)."""
    text = README.read_text()
    out = []
    for m in re.finditer(r"curl -s localhost:8000(\S+) (?:-H '([^']*)'\s*(?:\\\n\s*)?)?-d '(.*?)'", text, flags=re.S):
        out.append((m.group(1), m.group(2) or "", json.loads(m.group(3))))
    return out


def test_readme_curl_examples_run(prism_server, products, photos):
    examples = curl_json_examples()
    assert len(examples) >= 2
    for path, header, body in examples:
        # JSON bodies must say so (a 415 otherwise): curl -d alone sends application/x-www-form-urlencoded
        assert header.lower() == "content-type: application/json", (path, header)
        r = prism_server.client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code == 200, (path, r.text)
        assert r.json()["hits"], path


def bash_blocks(after_heading: str) -> list[str]:
    """The plain ``` blocks under a README heading, up to the next heading."""
    text = README.read_text()
    section = text.split(f"## {after_heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.*?)```", section, flags=re.S)
