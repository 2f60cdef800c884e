"""The JSON API of ``npconv serve``, through real HTTP requests to a real server process."""

import http.client
import io
import json
import os
import select
import shutil
import socket
import threading
import zlib

import numpy as np
import pytest
from PIL import Image
from .webclient import decode_activation, on_paper, start_server, stop_server

from dependencies import require

from npconv.data.images import preprocess
from npconv.inference import Classifier

require("starlette")
require("uvicorn")


def test_runs_lists_everything_served(server, served):
    data = server.json("/api/runs")
    ids = [r["id"] for r in data["runs"]]
    assert ids[0] == "cnn-run" and "solo-model.npz" in ids, ids
    assert data["default"] == "cnn-run"
    assert {c["id"]: c["kind"] for c in data["collections"]} == {"sweep": "sweep", "study": "study"}
    in_sweep = [r for r in data["runs"] if r["collection"] == "sweep"]
    assert len(in_sweep) == 2 and all(r["status"] == "completed" and r["has_model"] for r in in_sweep)
    assert sorted(r["settings"]["lr"] for r in in_sweep) == [0.05, 0.1]
    # The run folder linked into the study from outside is not served as part of it.
    assert [r for r in data["runs"] if r["collection"] == "study" and r["name"] == "zz-linked-run"] == []


def test_predict_answers_as_npconv_predict(server, served, mnist, tmp_path):
    classifier = Classifier(os.path.join(served.run, "model.npz"))
    for i in range(5):
        image = on_paper(mnist.test_images[i])
        status, headers, body = server.predict(image)
        assert status == 200, body
        answer = json.loads(body)
        (tmp_path / f"{i}.png").write_bytes(image)
        (expected,) = classifier.classify([tmp_path / f"{i}.png"])
        np.testing.assert_allclose(answer["probabilities"], list(expected.probabilities.values()), rtol=1e-5,
                                   atol=1e-6)
        assert answer["prediction"] == expected.index and answer["label"] == expected.label == str(expected.index)
        assert answer["not_sure"] == (max(answer["probabilities"]) < 0.5)
        np.testing.assert_array_equal(np.array(answer["input"], dtype=np.uint8), preprocess(image))
        assert "activations" not in answer
        assert headers["content-type"] == "application/json"


def test_activations_are_every_layers_output(server, mnist):
    status, _, body = server.predict(on_paper(mnist.test_images[0]), "?activations=1&run=cnn-run")
    assert status == 200, body
    answer = json.loads(body)
    detail = server.json("/api/runs/cnn-run")
    shapes = [layer["output_shape"] for layer in detail["architecture"]]
    assert [a["shape"] for a in answer["activations"]] == shapes
    assert [a["type"] for a in answer["activations"]][:3] == ["Conv2d", "ReLU", "MaxPool2d"]
    assert [a["kind"] for a in answer["activations"]] == ["maps"] * 6 + ["vector"] * 4
    values = [decode_activation(a) for a in answer["activations"]]
    for a, v in zip(answer["activations"], values):
        assert v.min() == pytest.approx(a["min"]) and v.max() == pytest.approx(a["max"])
    assert (values[1] >= 0).all() and np.array_equal(values[1], np.maximum(values[0], 0)), "ReLU after conv"
    np.testing.assert_array_equal(values[6], values[5].reshape(-1))  # Flatten
    logits = values[-1].astype(np.float64)
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(softmax, answer["probabilities"], rtol=1e-5, atol=1e-6)
    assert answer["prediction"] == int(np.argmax(logits))


def test_the_model_is_chosen_by_the_run_parameter(server, mnist):
    image = on_paper(mnist.test_images[3])
    answers = {run: json.loads(server.predict(image, f"?run={run}")[2]) for run in ("cnn-run", "solo-model.npz")}
    assert answers["cnn-run"]["run"] == "cnn-run" and answers["solo-model.npz"]["run"] == "solo-model.npz"
    assert answers["cnn-run"]["probabilities"] == answers["solo-model.npz"]["probabilities"], "the same weights"
    sweep_run = next(r["id"] for r in server.json("/api/runs")["runs"] if r["collection"] == "sweep")
    mlp = json.loads(server.predict(image, f"?run={sweep_run}&activations=1")[2])
    assert mlp["run"] == sweep_run and [a["type"] for a in mlp["activations"]] == ["Flatten", "Linear", "ReLU",
                                                                                   "Linear"]
    status, _, body = server.predict(image, "?run=nope")
    assert status == 404 and "nope" in json.loads(body)["error"]


def test_run_detail_has_what_the_model_view_shows(server, served):
    d = server.json("/api/runs/cnn-run")
    assert d["status"] == "completed" and d["summary"]["epochs"] == 2 and len(d["history"]) == 2
    assert d["config"]["train_subset"] == 5000 and d["classes"] == [str(k) for k in range(10)]
    layers = {row["layer"] for row in d["health"]}
    assert layers == set(range(10)) and {row["epoch"] for row in d["health"]} == {1, 2}
    assert [layer["parameters"] for layer in d["architecture"]] == [80, 0, 0, 1168, 0, 0, 0, 100480, 0, 1290]
    weights = np.array(d["filters"]["weights"])
    assert d["filters"]["layer"] == 0 and weights.shape == (8, 1, 3, 3)
    model = Classifier(os.path.join(served.run, "model.npz")).network
    np.testing.assert_allclose(weights, model.state_dict()["0.weight"], rtol=1e-6)
    assert d["curves"] is True
    status, headers, png = server.get("/api/runs/cnn-run/curves.png")
    assert status == 200 and headers["content-type"] == "image/png" and png.startswith(b"\x89PNG")
    solo = server.json("/api/runs/solo-model.npz")
    assert solo["kind"] == "model" and "history" not in solo and len(solo["architecture"]) == 10


def test_confusion_matrix_and_cells(server, mnist):
    c = server.json("/api/runs/cnn-run/confusion")
    matrix = np.array(c["matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 10000 and c["count"] == 10000
    assert np.array_equal(matrix.sum(axis=1), np.bincount(mnist.test_labels, minlength=10))
    assert c["accuracy"] == pytest.approx(np.trace(matrix) / 10000)
    summary = server.json("/api/runs/cnn-run")["summary"]
    assert c["accuracy"] == pytest.approx(summary["test_acc"], abs=1e-4), "the run's own test accuracy"
    t, p = np.unravel_index(np.argmax(matrix - np.diag(np.diag(matrix))), matrix.shape)
    cell = server.json(f"/api/runs/cnn-run/confusion/{t}/{p}?limit=200")
    assert cell["count"] == matrix[t, p] and len(cell["images"]) == min(200, matrix[t, p])
    confidence = [image["probabilities"][p] for image in cell["images"]]
    assert confidence == sorted(confidence, reverse=True), "the most confidently wrong first"
    for image in cell["images"]:
        assert mnist.test_labels[image["index"]] == t and int(np.argmax(image["probabilities"])) == p
        assert np.array_equal(np.array(image["image"]), mnist.test_images[image["index"]])
    right = server.json(f"/api/runs/cnn-run/confusion/{t}/{t}?limit=5&offset=2")
    sure = [image["probabilities"][t] for image in right["images"]]
    assert right["count"] == matrix[t, t] and len(sure) == 5 and sure == sorted(sure), "the closest calls first"


def test_collections_and_the_report(server):
    sweep = server.json("/api/collections/sweep")
    assert sweep["kind"] == "sweep" and sweep["varying"] == ["lr"] and len(sweep["runs"]) == 2
    study = server.json("/api/collections/study")
    assert study["report"] is True
    html = server.json("/api/collections/study/report")["html"]
    assert "<script>" not in html and "&lt;script&gt;" in html, "raw HTML is shown as text"
    assert "javascript:" not in html.replace("[bad link](javascript:alert(1))", "")
    assert 'src="/api/collections/study/figures/curves.png"' in html
    assert "/etc/hostname" not in html and "example.com" not in html, "no image from outside the folder"
    assert "from outside" in html and "remote" in html, "their alt texts stand in for them"
    assert html.count("<img") == 1
    assert 'href="#/model/' in html, "a link to a run of the study opens its page"
    status, headers, png = server.get("/api/collections/study/figures/curves.png")
    assert status == 200 and png.startswith(b"\x89PNG")


def test_the_page_and_its_files(server):
    status, headers, html = server.get("/")
    assert status == 200 and b'<main id="view"' in html and "text/html" in headers["content-type"]
    assert "script-src 'self'" in headers["content-security-policy"]
    for name in ("app.js", "api.js", "draw.js", "views.js", "charts.js", "app.css", "favicon.svg"):
        status, _, body = server.get(f"/static/{name}")
        assert status == 200 and body, name
    assert b"https://" not in html and b"http://" not in html, "nothing from the network"


TRAVERSALS = [
    "/api/runs/..%2F..%2Fsecret.txt", "/api/runs/%2Fetc%2Fpasswd", "/api/runs/..", "/api/runs/cnn-run%2F..",
    "/api/runs/zz-linked-run", "/api/runs/cnn-run/..%2F..%2Fsecret.txt", "/api/runs/cnn-run/config.json",
    "/api/runs/..%2Fsecret.txt/curves.png", "/api/collections/..", "/api/collections/study%2F..",
    "/api/collections/study/figures/leak.png", "/api/collections/study/figures/..%2F..%2Fsecret.txt",
    "/api/collections/study/figures/%2E%2E%2F%2E%2E%2Fsecret.txt", "/api/collections/study/figures/%2Fetc%2Fpasswd",
    "/api/collections/study/figures/..%5C..%5Csecret.txt", "/api/collections/study/figures/.hidden.png",
    "/static/..%2Fapp.py", "/static/%2E%2E%2Fapp.py", "/static/../app.py", "/../../secret.txt",
    "/api/collections/sweep/report", "/api/runs/cnn-run/confusion/10/0", "/api/runs/cnn-run/confusion/-1/0",
    "/api/runs/cnn-run/confusion/..%2F/0",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_paths_outside_the_served_folders_are_not_found(server, path):
    status, headers, body = server.get(path)
    assert status == 404, f"{path}: {status} {body[:200]!r}"
    assert "error" in json.loads(body) and b"the secret" not in body


def test_predict_with_a_run_name_that_walks_out(server, mnist):
    for run in ("..%2Fcnn-run", "%2Ftmp", "../study"):
        status, _, body = server.predict(on_paper(mnist.test_images[0]), f"?run={run}")
        assert status == 404, (run, body)


def bomb_png():
    """A PNG whose header claims 100000 x 100000 pixels (the data is one pixel)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    header = bytearray(buf.getvalue())
    header[16:24] = (100_000).to_bytes(4, "big") * 2
    header[29:33] = zlib.crc32(bytes(header[12:29])).to_bytes(4, "big")
    return bytes(header)


def test_bad_requests_get_4xx_json_never_a_traceback(server, mnist):
    image = on_paper(mnist.test_images[0])
    cases = [
        (server.predict(b"not an image at all"), 400, "not a readable image (not a format Pillow knows)"),
        (server.predict(b""), 400, "empty"),
        (server.predict(image[: len(image) // 2]), 400, "not a readable image"),
        (server.predict(bomb_png()), 400, "too large"),
        (server.predict(image, content_type="text/plain"), 415, "image/png"),
        (server.request("POST", "/api/predict", body=image), 415, "Content-Type"),
        (server.predict(image, "?activations=maybe"), 400, "activations"),
        (server.predict(image, "?run="), 404, "not found"),
        (server.get("/api/predict"), 405, ""),
        (server.request("DELETE", "/api/runs/cnn-run"), 405, ""),
        (server.get("/api/runs/cnn-run/confusion/1/2?limit=0"), 400, "limit"),
        (server.get("/api/runs/cnn-run/confusion/1/2?limit=abc"), 400, "limit"),
        (server.get("/api/runs/cnn-run/confusion/1/2?offset=-3"), 400, "offset"),
        (server.get("/no/such/page"), 404, "not found"),
    ]
    for (status, headers, body), expected, words in cases:
        assert status == expected, f"{status} {body[:300]!r}, expected {expected}"
        error = json.loads(body)["error"]
        assert words in error and "Traceback" not in error and " at 0x" not in error, error
    status, _, body = server.predict(on_paper(np.full((28, 28), 0, np.uint8)))  # a blank page: nothing drawn
    assert status == 400 and "no ink" in json.loads(body)["error"], body


def raw_exchange(server, head, body_chunks=()):
    """Send an HTTP request on a raw socket, a chunk at a time, stopping as soon as the server answers;
    returns the status and the JSON body of the answer."""
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered (and stopped reading)
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # it answered and closed while this chunk was on its way: the answer is already here
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            # It closed with some of the body unread, and the kernel's reset can overtake its answer.
            if not answer:
                return "reset", None
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_request_bodies_are_capped(server):
    # A Content-Length over the cap: refused from the headers alone, before any of the body is read.
    head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {5 * 1024 * 1024 + 1}\r\nConnection: close\r\n\r\n").encode()
    status, answer = raw_exchange(server, head)
    assert status == 413 and "larger than" in answer["error"]
    # No Content-Length (chunked): the cap holds as the body streams in.
    head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: image/png\r\n"
            f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    chunk = b"%x\r\n" % (256 * 1024) + bytes(256 * 1024) + b"\r\n"
    status, answer = raw_exchange(server, head, [chunk] * 40 + [b"0\r\n\r\n"])
    assert status == "reset" or (status == 413 and "larger than" in answer["error"]), status
    assert server.get("/api/runs")[0] == 200, "the server goes on"
    # A malformed Content-Length is refused by the HTTP parser itself: a 400, never a 500.
    head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: abc\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(head)
        assert sock.recv(65536).split()[1] == b"400"


def test_foreign_host_names_are_refused(server):
    status, _, body = server.get("/api/runs", headers={"Host": "evil.example:80"})
    assert status == 403 and "host" in json.loads(body)["error"]
    for host in ("localhost", f"127.0.0.1:{server.port}", f"localhost:{server.port}"):
        assert server.get("/api/runs", headers={"Host": host})[0] == 200, host


def test_no_request_writes_to_disk(server, served, mnist):
    def snapshot():
        files = {}
        for folder, dirs, names in os.walk(served.root):
            for name in dirs + names:
                path = os.path.join(folder, name)
                st = os.lstat(path)
                files[path] = (st.st_size, st.st_mtime_ns)
        return files

    before = snapshot()
    server.predict(on_paper(mnist.test_images[0]), "?activations=1")
    for path in ("/api/runs", "/api/runs/cnn-run", "/api/runs/cnn-run/confusion", "/api/runs/cnn-run/confusion/2/7",
                 "/api/collections/study", "/api/collections/study/report", "/api/runs/solo-model.npz/confusion"):
        assert server.get(path)[0] == 200, path
    assert snapshot() == before


def test_eight_clients_at_once_all_get_the_right_answer(server, mnist):
    images = [on_paper(mnist.test_images[i]) for i in range(8)]
    expected = [json.loads(server.predict(img)[2])["probabilities"] for img in images]
    failures = []

    def client(k):
        for _ in range(6):
            status, _, body = server.predict(images[k], "?activations=1")
            if status != 200 or json.loads(body)["probabilities"] != expected[k]:
                failures.append((k, status, body[:200]))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_small_answers_on_a_kept_alive_connection_are_sent_without_nagle(server):
    """With Nagle's algorithm on, a small answer's body waits for the client's delayed ACK (benchmarks/budgets.py
    times it); asyncio turns it off only on a socket whose protocol says TCP, which listen() asks for."""
    import asyncio

    from npconv.cli.serve import listen

    async def nodelay_of_an_accepted_connection():
        accepted = asyncio.get_running_loop().create_future()

        def handle(reader, writer):
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = listen("127.0.0.1", 0)
        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            nodelay = await asyncio.wait_for(accepted, 30)
            writer.close()
        return nodelay

    assert asyncio.run(nodelay_of_an_accepted_connection()) != 0, "Nagle's algorithm is on for served connections"
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    for _ in range(3):
        conn.request("GET", "/api/runs/nope")
        response = conn.getresponse()
        assert response.status == 404 and json.loads(response.read())["error"]
    conn.close()


def test_a_run_that_cannot_be_read_is_listed_with_its_error(served, mnist, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(served.run, runs / "good", ignore=shutil.ignore_patterns(".lock"))
    shutil.copytree(served.run, runs / "bad", ignore=shutil.ignore_patterns(".lock"))
    (runs / "bad" / "model.npz").write_bytes(b"damaged")
    (runs / "bad" / "summary.json").write_text("{not json")
    proc, client = start_server([str(runs)])
    try:
        listed = {r["id"]: r for r in client.json("/api/runs")["runs"]}
        assert listed["good"]["status"] == "completed" and "error" not in listed["good"]
        assert "summary.json" in listed["bad"]["error"] and listed["bad"]["has_model"] is False
        for path in ("/api/runs/bad", "/api/runs/bad/confusion"):
            status, _, body = client.get(path)
            assert status == 422 and "bad" in json.loads(body)["error"], (path, body)
        status, _, body = client.predict(on_paper(mnist.test_images[0]), "?run=bad")
        assert status == 422 and "model.npz" in json.loads(body)["error"], body
    finally:
        stop_server(proc)
