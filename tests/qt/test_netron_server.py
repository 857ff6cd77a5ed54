"""The Netron tab's model server answers only the studio: loopback Host header and the secret path.
Real server on 127.0.0.1, real HTTP requests; no Qt needed."""

import http.client
import re
import urllib.parse

import onnx
import pytest
from onnx import TensorProto, helper

from studio.qt.views.netron_server import ModelServer


def tiny_onnx(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    onnx.save_model(helper.make_model(graph), str(path))
    return path.read_bytes()


def get(port, path, host=None):
    """GET with exactly this Host header (default: the right one; False: none at all)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # skip_host: the Host header is exactly the one given, as a rebinding page's browser would send
        conn.putrequest("GET", path, skip_host=True)
        if host is not False:
            conn.putheader("Host", f"127.0.0.1:{port}" if host is None else host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    data = tiny_onnx(folder / "tiny.onnx")
    (tmp_path / "secret.txt").write_text("not for netron")
    server = ModelServer(folder / "tiny.onnx")
    yield server, data
    server.stop()


def test_the_studio_gets_the_page_and_the_model(served):
    server, data = served
    url = urllib.parse.urlsplit(server.url)
    assert url.hostname == "127.0.0.1" and len(url.path) > 40  # /<32-byte token>/
    port, token_path = url.port, url.path
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        status, page = get(port, token_path, host)
        assert status == 200 and b"<title>Netron</title>" in page
        # netron's page loads the model from this meta path, relative to the page's folder
        (model_path,) = re.findall(rb'<meta name="file" content="([^"]+)">', page)
        assert model_path == b"/data/tiny.onnx"
        status, body = get(port, token_path + "data/tiny.onnx", host)
        assert status == 200 and body == data
    status, script = get(port, token_path + "browser.js")
    assert status == 200 and b"class" in script


def test_another_host_header_is_refused(served):
    server, _ = served
    url = urllib.parse.urlsplit(server.url)
    port = url.port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", "127.0.0.1", "", False):
        assert get(port, url.path, host)[0] == 403, host
        status, body = get(port, url.path + "data/tiny.onnx", host)
        assert status == 403 and b"ONNX" not in body and b"Relu" not in body, host


def test_without_the_token_nothing_is_served(served):
    server, data = served
    url = urllib.parse.urlsplit(server.url)
    port, token = url.port, url.path.strip("/")
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    for path in ("/", "/index.html", "/data/tiny.onnx", f"/{wrong}/", f"/{wrong}/data/tiny.onnx",
                 f"/{token}", f"/{token[:-1]}/data/tiny.onnx", f"/x/{token}/data/tiny.onnx",
                 f"/{token}/data/..%2F..%2Fsecret.txt", f"/{token}/data/../../secret.txt"):
        status, body = get(port, path)
        assert status == 404, path
        assert data not in body and b"not for netron" not in body


def test_stop_closes_the_port(tmp_path):
    tiny_onnx(tmp_path / "m.onnx")
    server = ModelServer(tmp_path / "m.onnx")
    port = urllib.parse.urlsplit(server.url).port
    assert get(port, urllib.parse.urlsplit(server.url).path)[0] == 200
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        get(port, "/")
